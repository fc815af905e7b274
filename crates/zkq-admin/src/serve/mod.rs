//! `zkq-admin serve`: a web dashboard over the [`Admin`](zkq::Admin) API.
//!
//! Pages are rendered on the server (HTML from [`pages`], charts as inline SVG from
//! [`chart`]); one small script refreshes the page's `<main>` every few seconds without a full
//! reload. Everything is compiled into the binary: no CDN, no external fetch, no Node build.
//!
//! Steering (pause, resume, dead retry and purge, job cancel) is a POST form, refused unless
//! the server was started with `--allow-actions`, and checked against cross-site requests by a
//! token in every form ([`guard`]).

mod actions;
mod chart;
mod connection;
mod guard;
mod pages;
mod throughput;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tracing::info;
use zkq::ZkConfig;

use self::connection::Connection;
use self::guard::Guard;
use self::throughput::Throughput;

/// `zkq-admin serve`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. The default answers this machine only; see the README before
    /// exposing the dashboard further
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "ZKQ_DASHBOARD_LISTEN",
        value_name = "HOST:PORT"
    )]
    pub listen: SocketAddr,
    /// Let the dashboard steer: pause, resume, retry and purge dead letters, cancel jobs.
    /// Without it the dashboard only shows
    #[arg(long, env = "ZKQ_DASHBOARD_ALLOW_ACTIONS")]
    pub allow_actions: bool,
    /// A host name the dashboard answers to (repeatable), for a reverse proxy in front of it.
    /// Requests are answered for IP addresses and `localhost` only by default, which keeps
    /// other web sites' pages out (DNS rebinding)
    #[arg(long = "host", value_name = "NAME")]
    pub hosts: Vec<String>,
    /// How often open pages refresh
    #[arg(long, default_value = "3s", value_parser = zkq::cli::parse_duration, value_name = "DURATION")]
    pub refresh: Duration,
}

/// What every request handler shares.
#[derive(Debug)]
struct Dashboard {
    connection: Connection,
    guard: Guard,
    throughput: Throughput,
    allow_actions: bool,
    refresh: Duration,
    root: String,
}

type Shared = Arc<Dashboard>;

/// Serves the dashboard for the zkq under `root` until `stop` completes.
///
/// # Errors
/// The address cannot be bound; ZooKeeper cannot be reached at start.
pub async fn serve(
    zk: ZkConfig,
    root: String,
    args: ServeArgs,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> zkq::Result<()> {
    let connection = Connection::open(zk, root.clone()).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| zkq::Error::InvalidConfig(format!("cannot listen on {}: {e}", args.listen)))?;
    let address = listener
        .local_addr()
        .map_err(|e| zkq::Error::InvalidConfig(format!("cannot listen on {}: {e}", args.listen)))?;
    let dashboard = Arc::new(Dashboard {
        connection,
        guard: Guard::new(args.hosts.clone()),
        throughput: Throughput::default(),
        allow_actions: args.allow_actions,
        refresh: args.refresh,
        root,
    });
    let sampler = tokio::spawn(throughput::sample(dashboard.clone()));
    let mode = if args.allow_actions {
        "actions allowed"
    } else {
        "read-only"
    };
    info!(%address, mode, "dashboard listening");
    eprintln!("zkq dashboard on http://{address}/ ({mode})");
    let served = axum::serve(listener, router(dashboard.clone()))
        .with_graceful_shutdown(stop)
        .await;
    sampler.abort();
    let _ = sampler.await;
    if let Ok(dashboard) = Arc::try_unwrap(dashboard) {
        dashboard.connection.close().await;
    }
    served.map_err(|e| zkq::Error::InvalidConfig(format!("dashboard server failed: {e}")))
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn router(dashboard: Shared) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/queues/{queue}", get(pages::queue))
        .route("/jobs", get(pages::search))
        .route("/jobs/{id}", get(pages::job))
        .route("/workers", get(pages::workers))
        .route("/cron", get(pages::cron))
        .route("/locks", get(pages::locks))
        .route("/assets/dashboard.css", get(stylesheet))
        .route("/assets/dashboard.js", get(script))
        .route("/queues/{queue}/{action}", post(actions::queue))
        .route("/queues/{queue}/dead/{action}", post(actions::queue_dead))
        .route("/jobs/{id}/{action}", post(actions::job))
        .layer(axum::middleware::from_fn_with_state(
            dashboard.clone(),
            guard::check_host,
        ))
        .layer(axum::middleware::map_response(guard::security_headers))
        .with_state(dashboard)
}

async fn stylesheet() -> impl IntoResponse {
    asset("text/css; charset=utf-8", include_str!("assets/dashboard.css"))
}

async fn script() -> impl IntoResponse {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/dashboard.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
}

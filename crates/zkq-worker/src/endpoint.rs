//! The process's HTTP endpoint for operators (`--metrics-addr`): Prometheus metrics at
//! `/metrics`, liveness at `/healthz` (the process answers), readiness at `/readyz` (its
//! ZooKeeper session is connected and it is not fenced).
//!
//! The metrics are everything zkq records through the `metrics` facade, plus the queue depth
//! gauges while this process leads the scheduler ([`zkq::telemetry::depth_text`]).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::{info, warn};
use zkq::Health;

/// Histogram buckets, in seconds: job durations and start delays from milliseconds to minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Clone)]
struct Endpoint {
    metrics: PrometheusHandle,
    health: Health,
}

/// Installs the Prometheus recorder and serves the endpoint on `addr` in the background.
///
/// # Errors
/// A message naming the address when it cannot be listened on, or the recorder when another
/// is installed already.
pub async fn start(addr: SocketAddr, health: Health) -> Result<(), String> {
    let metrics = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    zkq::telemetry::describe();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoint { metrics, health });
    info!(%addr, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "the metrics endpoint stopped");
        }
    });
    Ok(())
}

async fn render(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let mut text = endpoint.metrics.render();
    if let Some(depth) = zkq::telemetry::depth_text() {
        text.push_str(&depth);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn ready(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    if endpoint.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if endpoint.health.is_connected() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: fenced (no reply from ZooKeeper for too long)\n",
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not connected to ZooKeeper\n",
        )
    }
}

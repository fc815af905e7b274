//! Queue depth for monitoring, published by the scheduler leader only: one process scans, not
//! every worker of the fleet. Every few seconds it counts each queue's jobs from child counts
//! (as `zkq-admin stats` does) and the live workers of each queue, and keeps the result as
//! Prometheus text ([`crate::telemetry::depth_text`]); the text is withdrawn when leadership
//! ends, so a process that does not lead exports no depth.

use std::fmt::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;
use zookeeper_client as zk;

use crate::admin::Admin;
use crate::error::Result;
use crate::registry;
use crate::store::layout::Layout;
use crate::telemetry;

/// How often the leader counts.
const EVERY: Duration = Duration::from_secs(5);

/// Withdraws the depth when dropped: however the service ends (stopped, aborted with its
/// session), a process that no longer leads exports none.
struct Withdraw;

impl Drop for Withdraw {
    fn drop(&mut self) {
        telemetry::set_depth(None);
    }
}

/// Counts every [`EVERY`] until `stop` is cancelled, when an exporter asked for the depth
/// ([`telemetry::describe`]); withdraws it at the end.
pub(crate) async fn serve(client: &zk::Client, layout: &Layout, stop: &CancellationToken) -> Result<()> {
    if !telemetry::depth_wanted() {
        stop.cancelled().await;
        return Ok(());
    }
    let _withdraw = Withdraw;
    let admin = Admin::with_client(client.clone(), layout.clone());
    loop {
        let scanned = tokio::select! {
            _ = stop.cancelled() => break,
            scanned = scan(&admin, client, layout) => scanned,
        };
        match scanned {
            Ok(text) => telemetry::set_depth(Some(text)),
            Err(e) if e.is_session_lost() => break,
            Err(e) => {
                // Rather none than stale figures.
                telemetry::set_depth(None);
                warn!(error = %e, "cannot count queue depth");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    Ok(())
}

/// The depth gauges of every queue, as Prometheus text.
async fn scan(admin: &Admin, client: &zk::Client, layout: &Layout) -> Result<String> {
    let queues = admin.depth().await?;
    let workers = registry::list(client, layout).await?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let counted: Vec<_> = queues.iter().collect();
    let each = |f: &dyn Fn(&crate::admin::QueueStats) -> u64| -> Vec<(String, u64)> {
        counted
            .iter()
            .map(|q| (format!("queue=\"{}\"", q.queue), f(q)))
            .collect()
    };
    let ready = counted
        .iter()
        .flat_map(|q| {
            q.ready
                .iter()
                .enumerate()
                .map(move |(p, n)| (format!("queue=\"{}\",priority=\"{p}\"", q.queue), *n))
        })
        .collect();
    gauge(
        telemetry::QUEUE_READY,
        "Ready jobs, not running, by priority.",
        ready,
    );
    gauge(
        telemetry::QUEUE_DELAYED,
        "Jobs waiting for their due time.",
        each(&|q| q.delayed),
    );
    gauge(
        telemetry::QUEUE_RUNNING,
        "Jobs running (claims held).",
        each(&|q| q.running),
    );
    gauge(telemetry::QUEUE_DEAD, "Dead letters.", each(&|q| q.dead));
    gauge(
        telemetry::QUEUE_PAUSED,
        "1 while the queue is paused.",
        each(&|q| u64::from(q.paused)),
    );
    let serving =
        |q: &crate::admin::QueueStats| workers.iter().filter(|w| w.queues.contains(&q.queue)).count() as u64;
    gauge(
        telemetry::WORKERS,
        "Live workers serving the queue.",
        each(&serving),
    );
    Ok(out)
}

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

/// Counts every [`EVERY`] until `stop` is cancelled, then withdraws the depth.
pub(crate) async fn serve(client: &zk::Client, layout: &Layout, stop: &CancellationToken) -> Result<()> {
    let admin = Admin::with_client(client.clone(), layout.clone());
    loop {
        match scan(&admin, client, layout).await {
            Ok(text) => telemetry::set_depth(Some(text)),
            Err(e) if e.is_session_lost() => break,
            Err(e) => warn!(error = %e, "cannot count queue depth"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
    telemetry::set_depth(None);
    Ok(())
}

/// The depth gauges of every queue, as Prometheus text.
async fn scan(admin: &Admin, client: &zk::Client, layout: &Layout) -> Result<String> {
    let stats = admin.stats(None).await?;
    let workers = registry::list(client, layout).await?;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let counted: Vec<_> = stats.queues.iter().filter(|q| q.problem.is_none()).collect();
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

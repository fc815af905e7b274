//! The leader's cron service: fires the due ticks of every periodic job ([`crate::periodic`])
//! in fenced `multi`s, as many ticks per `multi` as one request holds.
//!
//! Between passes it sleeps until the next tick of any schedule, or until the schedules
//! change: a persistent recursive watch on the schedules folder reports every schedule
//! created, edited or removed (the service's own fires too, which costs one more read per
//! tick). So a new schedule is seen at once, and an idle leader reads nothing between ticks.
//! The client does not set persistent watches again after a reconnect: a lost connection ends
//! the leader's term (see [`crate::scheduler`]), and if the term outlived a short one anyway,
//! the watch's own reconnect event makes the next pass set it again, before its read. A fire
//! that failed is tried again after [`RETRY`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{now_ms, Job};
use crate::periodic::{read_all, tick_batches, PeriodicJob};
use crate::producer::{Placement, Producer};
use crate::recipes::election::Leadership;
use crate::store::codec;
use crate::store::txn::Op;

use super::service::{self, Next, Passes};

/// Longest sleep between passes, a safety net under the watch.
const LOOK_AGAIN: Duration = Duration::from_secs(60);

/// After a pass that failed, how long until the next.
const RETRY: Duration = Duration::from_secs(1);

/// The leader's cron service: fires due ticks of every schedule until `stop` is cancelled.
///
/// # Errors
/// [`Error::Fenced`] when a newer leader holds the epoch; a lost session.
pub(crate) async fn serve(
    producer: &Producer,
    leadership: &Leadership,
    stop: &CancellationToken,
) -> Result<()> {
    let dir = producer.layout().schedules();
    let changed = Arc::new(Notify::new());
    let mut watch: Option<Watching> = None;
    let mut unreadable: Vec<String> = Vec::new();
    let mut passes = Passes::new(stop, "cannot read schedules", RETRY);
    while passes.ready().await {
        if watch.as_ref().is_none_or(|w| w.stale.load(Ordering::Relaxed)) {
            // Set before the read, so that it reports every change the read misses.
            drop(watch.take());
            watch = Some(watch_schedules(producer.client(), &dir, changed.clone()).await?);
        }
        let pass = async {
            let mut next = now_ms() + LOOK_AGAIN.as_millis() as u64;
            for (name, record, version) in read_all(producer.client(), &dir).await? {
                if stop.is_cancelled() {
                    break;
                }
                let record = match record {
                    Ok(r) => r,
                    Err(e) => {
                        if !unreadable.contains(&name) {
                            warn!(schedule = %name, error = %e, "unreadable schedule skipped");
                            unreadable.push(name);
                        }
                        continue;
                    }
                };
                match fire(producer, leadership, &name, &record, version).await {
                    Ok(()) => {}
                    Err(e) if service::ends_service(&e) => return Err(e),
                    Err(e) => {
                        warn!(schedule = %name, error = %e, "cannot fire periodic job; will retry");
                        next = next.min(now_ms() + RETRY.as_millis() as u64);
                    }
                }
                if let Ok(Some(at)) = record.next_tick(now_ms()) {
                    next = next.min(at);
                }
            }
            let pause = Duration::from_millis(next.saturating_sub(now_ms()).max(5));
            let changed = changed.clone();
            // A change during this pass left a permit: the next pass comes at once.
            Ok(Next::When(Box::pin(async move {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = changed.notified() => {}
                }
            })))
        };
        passes.ended(pass.await)?;
    }
    Ok(())
}

/// A watch on the schedules, forwarded to a `Notify`; stopped (and dropped) when dropped.
struct Watching {
    task: tokio::task::JoinHandle<()>,
    /// The connection was lost and found again: the server no longer has this watch.
    stale: Arc<AtomicBool>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches `dir` and its schedules (persistent, recursive; the folder need not exist yet) and
/// notifies `changed` of every change, and of a reconnect (after which the watch is stale),
/// until the session ends.
async fn watch_schedules(client: &zk::Client, dir: &str, changed: Arc<Notify>) -> Result<Watching> {
    let mut watcher = client
        .watch(dir, zk::AddWatchMode::PersistentRecursive)
        .await
        .map_err(|e| Error::zk("watch schedules", dir, e))?;
    let stale = Arc::new(AtomicBool::new(false));
    let flag = stale.clone();
    let task = tokio::spawn(async move {
        loop {
            let event = watcher.changed().await;
            if event.session_state.is_terminated() {
                return;
            }
            match event.event_type {
                zk::EventType::Session if event.session_state == zk::SessionState::SyncConnected => {
                    flag.store(true, Ordering::Relaxed);
                    changed.notify_one();
                    return;
                }
                zk::EventType::Session => {}
                _ => changed.notify_one(),
            }
        }
    });
    Ok(Watching { task, stale })
}

/// Fires the due ticks of one schedule: the jobs and the schedule's new last tick in fenced
/// `multi`s, as many ticks in each as one request holds ([`tick_batches`]). Each `multi`
/// advances the last tick to its own last one, with the schedule's version as the guard, so a
/// `multi` whose reply is lost is resolved by the next pass: if it committed, the schedule's
/// last tick and version moved on and its ticks are not due again; if not, they still are.
async fn fire(
    producer: &Producer,
    leadership: &Leadership,
    name: &str,
    record: &PeriodicJob,
    version: i32,
) -> Result<()> {
    let ticks = record.due_ticks(now_ms())?;
    let Some(&last) = ticks.last() else {
        return Ok(());
    };
    let config = producer.config(&record.queue).await?;
    let path = producer.layout().schedule(name);
    let mut advanced = record.clone();
    advanced.last_tick_ms = Some(last);
    let jobs: Result<Vec<(u64, Job)>> = ticks
        .iter()
        .map(|tick| {
            let (job, _) = record.job_for(name, *tick).into_job(
                config.priorities,
                config.max_attempts,
                config.max_payload_bytes as usize,
            )?;
            Ok((*tick, job))
        })
        .collect();
    let batches = jobs.and_then(|jobs| tick_batches(producer, record, jobs));
    let batches = match batches {
        Ok(batches) => batches,
        Err(e) => {
            // The queue refuses the job (its limits changed since the schedule was written), or
            // it can never fit a request with its schedule: skip the ticks rather than retry
            // them forever.
            warn!(schedule = name, error = %e, ticks = ticks.len(), "periodic job refused; ticks skipped");
            let skip = Op::SetData {
                path: path.clone(),
                data: codec::encode(&advanced)?,
                version: Some(version),
            };
            return settled(leadership.commit_fenced("skip ticks", vec![skip]).await, &path);
        }
    };
    // Each commit bumps the schedule's version by one.
    for (version, batch) in (version..).zip(batches) {
        let count = batch.len();
        advanced.last_tick_ms = batch.last().map(|(tick, _)| *tick);
        let extra = vec![
            leadership.epoch_check(),
            Op::SetData {
                path: path.clone(),
                data: codec::encode(&advanced)?,
                version: Some(version),
            },
        ];
        let placements = batch.into_iter().map(|(_, job)| Placement::Ready(job)).collect();
        let result = producer
            .commit(&record.queue, &config, placements, extra)
            .await
            .map_err(|e| leadership.fenced(e));
        if let Err(e) = result {
            return settled(Err(e), &path);
        }
        debug!(
            schedule = name,
            ticks = count,
            last = advanced.last_tick_ms,
            "periodic job fired"
        );
        metrics::counter!(crate::telemetry::CRON_FIRED, "schedule" => name.to_string())
            .increment(count as u64);
    }
    Ok(())
}

/// A fire's outcome: a schedule edited or removed meanwhile is not an error (the next pass
/// reads it again).
fn settled(result: Result<()>, path: &str) -> Result<()> {
    match result {
        Err(e) if e.lost_race().is_some_and(|(failed, _)| failed == path) => Ok(()),
        other => other,
    }
}

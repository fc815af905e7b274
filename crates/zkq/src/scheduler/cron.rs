//! The leader's cron service: fires the due ticks of every periodic job ([`crate::periodic`])
//! in fenced `multi`s, as many ticks per `multi` as one request holds.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::Result;
use crate::job::{now_ms, Job};
use crate::periodic::{read_all, tick_batches, PeriodicJob};
use crate::producer::{Placement, Producer};
use crate::recipes::election::Leadership;
use crate::store::codec;
use crate::store::txn::Op;

use super::service::{self, Next, Passes};

/// Longest sleep between passes: how soon a new or edited schedule is noticed.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

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
    let mut unreadable: Vec<String> = Vec::new();
    let mut passes = Passes::new(stop, "cannot read schedules", LOOK_AGAIN);
    while passes.ready().await {
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
                    Err(e) => warn!(schedule = %name, error = %e, "cannot fire periodic job; will retry"),
                }
                if let Ok(Some(at)) = record.next_tick(now_ms()) {
                    next = next.min(at);
                }
            }
            Ok(Next::After(Duration::from_millis(
                next.saturating_sub(now_ms()).max(5),
            )))
        };
        passes.ended(pass.await)?;
    }
    Ok(())
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

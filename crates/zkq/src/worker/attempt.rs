//! One attempt: the handler run under the job's timeout, stopped on shutdown, session loss or
//! self-fencing, then settled.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{info_span, warn, Instrument};

use crate::claim::Claimed;

use crate::handler::{Fence, JobContext, Outcome};
use crate::recipes::liveness::Liveness;
use crate::stops::Stoppable;
use crate::telemetry;

use super::session::Session;
use super::settle::{AttemptEnd, Settled};
use super::Worker;

impl Worker {
    /// Runs one claimed attempt to its end and settles it.
    pub(super) async fn run_attempt(
        &self,
        session: &Session,
        claimed: Claimed,
        abort: CancellationToken,
        stoppable: &Stoppable,
    ) -> AttemptEnd {
        let Session {
            client,
            lost: session_lost,
            ..
        } = session;
        // The fence and the watchdog follow the heartbeat: at its busy pace while this runs.
        let _busy = session.liveness.busy();
        let kind = claimed.job.kind.clone();
        let handler = self
            .handlers
            .get(&kind)
            .cloned()
            .or_else(|| self.fallback.clone());
        let Some(handler) = handler else {
            let error = format!("no handler for job kind {kind:?} on worker {}", self.config.id);
            return self.settle(session, &claimed, Outcome::dead(error)).await;
        };
        let timeout = claimed
            .job
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(self.config.job_timeout);
        let stop = CancellationToken::new();
        let ctx = JobContext {
            job: claimed.job.clone(),
            queue: claimed.queue().to_string(),
            worker_id: self.config.id.clone(),
            stop: stop.clone(),
            fence: Fence {
                token: claimed.token,
                checks: claimed.fence_checks(),
                liveness: session.liveness.clone(),
                stop: stop.clone(),
            },
        };
        if session_lost.is_cancelled() {
            return AttemptEnd::Lost;
        }
        if abort.is_cancelled() {
            // Shut down before it started (while it waited for its due time): back unstarted.
            return match super::settle::release(client, &claimed).await {
                Ok(Settled::Committed) => AttemptEnd::Released,
                _ => AttemptEnd::Lost,
            };
        }
        let mut liveness = session.liveness.clone();
        if liveness.is_fenced() {
            // Claimed while ZooKeeper was still answering, but it has not for too long since:
            // do not start what would have to be stopped at once.
            return self.release_when_heard(session, &claimed, &mut liveness).await;
        }
        if stoppable.token.is_cancelled() {
            // Cancelled between its claim and now: never started.
            return AttemptEnd::Cancelled;
        }
        let started = Instant::now();
        let mut attempt = AssertUnwindSafe(handler.run(ctx))
            .catch_unwind()
            .instrument(info_span!("run"));
        let mut interrupted = None;
        let result = tokio::select! {
            r = &mut attempt => Some(r),
            _ = tokio::time::sleep(timeout) => { interrupted = Some(Interrupt::Timeout); None }
            _ = abort.cancelled() => { interrupted = Some(Interrupt::Shutdown); None }
            _ = stoppable.token.cancelled() => { interrupted = Some(Interrupt::Cancelled); None }
            _ = session_lost.cancelled() => { interrupted = Some(Interrupt::SessionLost); None }
            _ = liveness.fenced() => { interrupted = Some(Interrupt::Fenced); None }
        };
        let outcome = match (result, interrupted) {
            (Some(Ok(outcome)), _) => outcome,
            (Some(Err(panic)), _) => Outcome::retry(format!("handler panicked: {}", panic_message(&panic))),
            (None, why) => {
                // Ask the attempt to stop, give it the stop grace, then drop it (which kills a
                // command's process group).
                stop.cancel();
                let _ = tokio::time::timeout(self.config.stop_grace, &mut attempt).await;
                drop(attempt);
                match why {
                    Some(Interrupt::Timeout) => Outcome::retry(format!("timed out after {timeout:?}")),
                    Some(Interrupt::Shutdown) => {
                        return match super::settle::release(client, &claimed).await {
                            Ok(Settled::Committed) => AttemptEnd::Released,
                            _ => AttemptEnd::Lost,
                        };
                    }
                    // Already dead-lettered by the canceller, claim and all: nothing to settle.
                    Some(Interrupt::Cancelled) => return AttemptEnd::Cancelled,
                    Some(Interrupt::Fenced) => {
                        warn!("no reply from ZooKeeper for too long: attempt stopped");
                        return self.release_when_heard(session, &claimed, &mut liveness).await;
                    }
                    _ => return AttemptEnd::Lost,
                }
            }
        };
        metrics::histogram!(
            telemetry::DURATION_SECONDS,
            "queue" => claimed.queue().to_string(),
            "kind" => self.kind_label(&claimed.job.kind)
        )
        .record(started.elapsed().as_secs_f64());
        self.settle(session, &claimed, outcome).await
    }

    /// An attempt stopped (or not started) because the worker was fenced: stopped, not failed,
    /// so it is put back uncounted once ZooKeeper answers again, if the session survived.
    pub(super) async fn release_when_heard(
        &self,
        session: &Session,
        claimed: &Claimed,
        liveness: &mut Liveness,
    ) -> AttemptEnd {
        tokio::select! {
            _ = liveness.cleared() => {}
            _ = session.lost.cancelled() => {}
        }
        if !session.lost.is_cancelled() {
            if let Ok(Settled::Committed) = super::settle::release(&session.client, claimed).await {
                return AttemptEnd::Released;
            }
        }
        AttemptEnd::Lost
    }
}

pub(super) enum Interrupt {
    Timeout,
    Shutdown,
    /// An operator cancelled the job ([`crate::stops`]).
    Cancelled,
    SessionLost,
    /// No reply from ZooKeeper for the worker's fence share of the session timeout.
    Fenced,
}

pub(super) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

//! What an attempt records for monitoring: started, running, and how it ended. Every claim the
//! worker takes on ends in exactly one of `zkq_jobs_finished_total{outcome}` or
//! `zkq_jobs_claim_lost_total`, and the running gauge comes down whatever way the attempt's task
//! ends (aborted at shutdown, a panic): the meter does both when dropped.

use crate::job::now_ms;
use crate::telemetry;

use super::settle::AttemptEnd;

/// One attempt, metered from the moment the worker takes it on.
pub(super) struct Meter {
    queue: String,
    kind: String,
    ended: bool,
}

impl Meter {
    /// Counts an attempt started and running, and its start delay (from ready, `ready_at_ms`).
    /// `kind` is the handler's kind (`*` for a catch-all handler, so that producers cannot
    /// make the label set grow without bound).
    pub(super) fn start(queue: &str, kind: &str, ready_at_ms: u64) -> Meter {
        let (queue, kind) = (queue.to_string(), kind.to_string());
        metrics::counter!(telemetry::STARTED, "queue" => queue.clone(), "kind" => kind.clone()).increment(1);
        metrics::gauge!(telemetry::RUNNING, "queue" => queue.clone()).increment(1.0);
        let delay = now_ms().saturating_sub(ready_at_ms) as f64 / 1000.0;
        metrics::histogram!(telemetry::START_DELAY_SECONDS, "queue" => queue.clone()).record(delay);
        Meter {
            queue,
            kind,
            ended: false,
        }
    }

    /// Counts how the attempt ended.
    pub(super) fn end(mut self, end: AttemptEnd) {
        self.ended = true;
        match end.outcome() {
            Some(outcome) => metrics::counter!(
                telemetry::FINISHED,
                "queue" => self.queue.clone(),
                "kind" => self.kind.clone(),
                "outcome" => outcome
            )
            .increment(1),
            None => claim_lost(&self.queue),
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::RUNNING, "queue" => self.queue.clone()).decrement(1.0);
        if !self.ended {
            // The attempt's task ended without an outcome: aborted, or a panic.
            claim_lost(&self.queue);
        }
    }
}

/// Counts a claim lost before its attempt could settle: the job runs again elsewhere.
pub(super) fn claim_lost(queue: &str) {
    metrics::counter!(telemetry::CLAIMS_LOST, "queue" => queue.to_string()).increment(1);
}

//! Claim batches: the found jobs claimed in `multi`s, each won claim run as an attempt in its
//! own task, and job znodes zkq cannot read moved to the dead letters.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, instrument, warn, Instrument};
use zookeeper_client as zk;

use crate::claim::{self, Candidate, Claimed};
use crate::job::now_ms;

use crate::store::txn::Op;
use crate::store::znode;
use crate::telemetry;

use super::fetch::Found;
use super::meter::{self, Meter};
use super::session::Session;
use super::settle::{AttemptEnd, Settled};
use super::Worker;

/// Claims won by one batch, and the slots taken for the whole batch.
pub(super) struct Claims {
    pub(super) won: Vec<Claimed>,
    /// Claims that failed with an error rather than a lost race.
    pub(super) failures: usize,
    pub(super) slots: OwnedSemaphorePermit,
}

impl Worker {
    /// Claims everything found, in batches, holding a slot per job; dead-letters garbage.
    #[instrument(name = "claim", skip_all, fields(candidates = found.len()))]
    pub(super) async fn claim_all(
        &self,
        client: zk::Client,
        found: Vec<Found>,
        slots: OwnedSemaphorePermit,
    ) -> Claims {
        let client = &client;
        let mut jobs = Vec::with_capacity(found.len());
        for f in found {
            match f {
                Found::Job {
                    candidate,
                    job,
                    version,
                } => jobs.push((candidate, job, version)),
                Found::Garbage {
                    candidate,
                    data,
                    version,
                    reason,
                } => {
                    self.dead_letter_garbage(client, candidate, data, version, &reason)
                        .await
                }
            }
        }
        let (won, errors) = claim::claim_many(client, &self.layout, &self.config.id, jobs).await;
        for e in &errors {
            warn!(error = %e, "claim failed");
        }
        for c in &won {
            metrics::counter!(telemetry::CLAIMS, "queue" => c.queue().to_string()).increment(1);
        }
        Claims {
            won,
            failures: errors.len(),
            slots,
        }
    }

    /// Claims a batch of found jobs and runs an attempt of each claim won, each in its own task
    /// with one of the batch's slots (the slots of lost races are free again at once). `turn`
    /// is the batch's place among the claims in flight, given back once the claims landed.
    pub(super) async fn run_batch(
        self: Arc<Self>,
        session: Session,
        found: Vec<Found>,
        slots: OwnedSemaphorePermit,
        turn: OwnedSemaphorePermit,
        stopping: CancellationToken,
    ) -> Vec<AttemptEnd> {
        let (found, mut holds) = self.take_keys(&session, found).await;
        let mut claims = self.claim_all(session.client.clone(), found, slots).await;
        if claims.won.is_empty() && claims.failures > 0 {
            // Not a lost race but errors: keep the turn a while rather than spin on them.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(turn);
        if session.lost.is_cancelled() {
            claims.won.iter().for_each(|c| meter::claim_lost(c.queue()));
            return claims.won.iter().map(|_| AttemptEnd::Lost).collect();
        }
        if stopping.is_cancelled() {
            // Claimed while shutting down: put them back unstarted.
            let mut settles = Vec::new();
            for claimed in &claims.won {
                let settle = match super::settle::release(&session.client, claimed).await {
                    Ok(Settled::Committed) => AttemptEnd::Released,
                    _ => AttemptEnd::Lost,
                };
                Meter::start(
                    claimed.queue(),
                    &self.kind_label(&claimed.job.kind),
                    claimed.job.ready_at_ms,
                )
                .end(settle);
                settles.push(settle);
            }
            return settles;
        }
        let mut attempts = JoinSet::new();
        for mut claimed in claims.won {
            let Some(slot) = claims.slots.split(1) else { break };
            let hold = holds.remove(&claimed.job.id);
            claimed.lock_node = hold.as_ref().map(|h| h.guard.node().to_string());
            let this = self.clone();
            let session = session.clone();
            let abort = session.abort.child_token();
            let stopping = stopping.clone();
            let span = info_span!("job", queue = claimed.queue(), id = %claimed.job.id, kind = %claimed.job.kind, attempt = claimed.job.attempt);
            attempts.spawn(
                async move {
                    let claim = claimed.claim_path.clone();
                    let stoppable = session.running.add(&claim);
                    if let Some(early) = claimed.job.early_by(now_ms()) {
                        // Promoted ahead of its due time: claimed, it starts at that time. A
                        // shutdown meanwhile puts it back unstarted, as it does a job claimed
                        // while shutting down; `run_attempt` sees to the other ends.
                        tokio::select! {
                            _ = tokio::time::sleep(early) => {}
                            _ = stopping.cancelled() => abort.cancel(),
                            _ = abort.cancelled() => {}
                            _ = session.lost.cancelled() => {}
                            _ = stoppable.token.cancelled() => {}
                        }
                    }
                    let log = this.config.log_attempts;
                    let started = std::time::Instant::now();
                    if log {
                        info!("attempt started");
                    }
                    let meter = Meter::start(
                        claimed.queue(),
                        &this.kind_label(&claimed.job.kind),
                        claimed.job.ready_at_ms,
                    );
                    let settle = this.run_attempt(&session, claimed, abort, &stoppable).await;
                    meter.end(settle);
                    // A cancel's notice is deleted once the attempt is over, whether it stopped
                    // the attempt or came as it ended: the canceller waits for that.
                    if let Some(notice) = session.running.remove(&claim) {
                        znode::delete_surely(&session.client, notice);
                    }
                    if log {
                        let ms = started.elapsed().as_millis() as u64;
                        info!(duration_ms = ms, outcome = settle.name(), "attempt ended");
                    }
                    // Only now, with the attempt stopped and settled, may the key's next job
                    // start.
                    drop(hold);
                    drop(slot);
                    settle
                }
                .instrument(span),
            );
        }
        // The slots of lost races are free again now, not when the batch's attempts end; so
        // are their locks.
        drop(claims.slots);
        drop(holds);
        let mut settles = Vec::with_capacity(attempts.len());
        while let Some(done) = attempts.join_next().await {
            settles.push(done.unwrap_or(AttemptEnd::Lost));
        }
        settles
    }

    /// Moves a job znode zkq cannot read to the dead letters, as found at `version`.
    pub(super) async fn dead_letter_garbage(
        &self,
        client: &zk::Client,
        candidate: Candidate,
        data: Vec<u8>,
        version: i32,
        reason: &str,
    ) {
        let path = candidate.path(&self.layout);
        warn!(%path, %reason, "undecodable job moved to dead letters");
        let dead = crate::job::Job::undecodable(data, reason);
        let Ok(op) = crate::producer::dead_letter_op(&self.layout, &candidate.queue, &dead) else {
            return;
        };
        let ops = vec![
            Op::Delete {
                path: path.clone(),
                version: Some(version),
            },
            op,
        ];
        if let Err(e) = super::settle::settle(client, self.layout.acl(), "dead-letter garbage", ops).await {
            warn!(%path, error = %e, "cannot dead-letter undecodable job");
        } else {
            metrics::counter!(telemetry::UNDECODABLE, "queue" => candidate.queue.clone()).increment(1);
        }
    }
}

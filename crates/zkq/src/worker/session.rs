//! One ZooKeeper session of a worker, from registration to its end: the scan and claim loop,
//! self-fencing, stopping attempts, and the summary of how they ended.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use crate::assignment;
use crate::error::Result;
use crate::producer::Producer;
use crate::queue;
use crate::recipes::election::Election;
use crate::recipes::liveness::{self, Liveness};
use crate::registry::{self, WorkerInfo};
use crate::scheduler;
use crate::stops;
use crate::store::batcher::Batcher;
use crate::store::session;
use crate::worker::fetch::{Fetcher, Kinds, Opener, Parking, Sessions};

use super::configs;
use super::keys::Keys;
use super::settle::AttemptEnd;
use super::{Worker, WorkerSummary, CLAIMS_IN_FLIGHT, STOP_MARGIN};

/// What an attempt needs from the session it runs in.
#[derive(Clone)]
pub(super) struct Session {
    pub(super) client: zk::Client,
    pub(super) producer: Arc<Producer>,
    /// Group commit of acks.
    pub(super) acks: Batcher,
    /// Cancelled to stop every running attempt (shutdown past its grace period, session lost).
    pub(super) abort: CancellationToken,
    /// Cancelled when the session ends.
    pub(super) lost: CancellationToken,
    /// The session's heartbeat: fenced when ZooKeeper has not answered for too long.
    pub(super) liveness: Liveness,
    /// Where jobs whose lock key is busy go to wait.
    pub(super) parking: Parking,
    /// Lock keys this session holds or is taking, so that a second job of one key waits
    /// without trying the lock.
    pub(super) keys: Keys,
    /// Running attempts, which a stop notice can cancel ([`crate::stops`]).
    pub(super) running: stops::Running,
}

/// Why a session's run ended.
pub(super) enum SessionEnd {
    Shutdown,
    Lost,
}

impl Worker {
    pub(super) async fn run_session(
        self: Arc<Self>,
        client: zk::Client,
        stop: &CancellationToken,
        summary: &mut WorkerSummary,
    ) -> Result<SessionEnd> {
        let mut configs = Vec::new();
        for q in &self.config.queues {
            configs.push((
                q.clone(),
                queue::ensure(&client, &self.layout, q, &self.config.default_queue_config).await?,
            ));
        }
        let info = WorkerInfo::this_process(
            &self.config.id,
            &self.config.queues,
            self.kinds(),
            self.config.concurrency as u32,
        );
        registry::register(&client, &self.layout, &info).await?;
        info!(worker = %self.config.id, queues = ?self.config.queues, concurrency = self.config.concurrency, "worker registered");

        let producer = Arc::new(Producer::with_client(client.clone(), self.layout.clone()));
        for (q, config) in &configs {
            // Retries need the config; the worker has just read it.
            producer.cache(q, config);
        }
        let session_lost = CancellationToken::new();
        let mut background = JoinSet::new();
        background.spawn(watch_session(client.clone(), session_lost.clone()));
        {
            let (health, client) = (self.health.clone(), client.clone());
            background.spawn(async move { health.follow(client).await });
        }
        let (acks, committing) = Batcher::new(client.clone(), self.layout.acl().clone());
        background.spawn(committing);
        let (liveness, heartbeat) = liveness::start(
            client.clone(),
            self.layout.worker(&self.config.id),
            self.config.fence_share,
            self.health.clone(),
        );
        background.spawn(heartbeat);
        let scheduler_stop = CancellationToken::new();
        if self.config.scheduler {
            let election = Election::new(client.clone(), self.layout.scheduler(), self.config.id.clone())
                .with_acl(self.layout.acl().clone());
            background.spawn(scheduler::stand(
                producer.clone(),
                election,
                self.config.scheduling.clone(),
                scheduler_stop.clone(),
            ));
        }

        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut running: JoinSet<Vec<AttemptEnd>> = JoinSet::new();
        let abort_running = CancellationToken::new();
        // Partitions this worker owns, as the scheduler assigns them.
        let (owned_tx, owned) = watch::channel(assignment::Owned::new());
        background.spawn(assignment::follow(
            client.clone(),
            self.layout.clone(),
            self.config.id.clone(),
            self.config.queues.clone(),
            self.config.scheduler,
            assignment::FIRST_RECORD_WAIT,
            owned_tx,
        ));
        // Queue settings followed live (a pause stops claiming from that queue).
        let (configs_tx, live_configs) = watch::channel(configs.iter().cloned().collect());
        for q in &self.config.queues {
            background.spawn(configs::follow(
                client.clone(),
                self.layout.clone(),
                q.clone(),
                configs_tx.clone(),
            ));
        }
        let attempts = stops::Running::default();
        background.spawn(stops::follow(
            client.clone(),
            self.layout.clone(),
            self.config.id.clone(),
            attempts.clone(),
        ));
        // Scans read on a session of their own while the worker is busy.
        let open_reader: Opener = {
            let this = self.clone();
            Arc::new(move || {
                let this = this.clone();
                async move { this.connect_reader().await }.boxed()
            })
        };
        let mut fetcher = Fetcher::new(
            Sessions::new(client.clone(), open_reader, self.config.read_session_idle),
            self.layout.clone(),
            configs,
            live_configs,
            owned,
            Kinds::new(&self.kinds()),
        );
        let session = Session {
            client: client.clone(),
            producer: producer.clone(),
            acks,
            abort: abort_running.clone(),
            lost: session_lost.clone(),
            liveness: liveness.clone(),
            parking: fetcher.parking(),
            keys: Keys::default(),
            running: attempts,
        };
        let mut liveness = liveness.clone();
        // Claim batches in flight: scans go on while earlier claims wait for their commit.
        let claim_turns = Arc::new(Semaphore::new(CLAIMS_IN_FLIGHT));
        let batch = (self.config.concurrency / 8).max(1);
        let end = loop {
            while let Some(done) = running.try_join_next() {
                tally(summary, done);
            }
            if stop.is_cancelled() {
                break SessionEnd::Shutdown;
            }
            if session_lost.is_cancelled() {
                break SessionEnd::Lost;
            }
            if liveness.is_fenced() {
                warn!(worker = %self.config.id, "no reply from ZooKeeper for too long: fenced, not claiming");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = session_lost.cancelled() => {}
                    _ = liveness.cleared() => info!("ZooKeeper answers again: fence lifted"),
                    Some(done) = running.join_next() => tally(summary, done),
                }
                continue;
            }
            let free = slots.available_permits();
            let turns = claim_turns.available_permits();
            let claiming = turns < CLAIMS_IN_FLIGHT;
            // With claims in flight, wait for a worthwhile batch of free slots: fewer, larger
            // requests.
            let turn = match claim_turns.clone().try_acquire_owned() {
                Ok(turn) if free > 0 && (!claiming || free >= batch) => turn,
                not_now => {
                    drop(not_now);
                    // Wait for a worthwhile batch of free slots, or a claim turn more than now:
                    // slots come back one attempt at a time and turns once a batch's claims
                    // landed, while a batch ends with its last attempt, and a long one would
                    // hold the others back.
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = session_lost.cancelled() => {}
                        Some(done) = running.join_next() => tally(summary, done),
                        _ = slots.acquire_many(batch as u32), if free < batch => {}
                        _ = claim_turns.acquire_many(turns as u32 + 1), if claiming => {}
                    }
                    continue;
                }
            };
            let found = tokio::select! {
                _ = stop.cancelled() => continue,
                _ = session_lost.cancelled() => continue,
                found = fetcher.scan(free) => found,
            };
            let found = match found {
                Ok(f) => f,
                Err(e) if e.is_session_lost() => break SessionEnd::Lost,
                Err(e) => {
                    warn!(error = %e, "scan failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if found.is_empty() {
                drop(turn);
                if fetcher.rescan() {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = session_lost.cancelled() => {}
                    _ = fetcher.wait(self.config.poll_interval) => {}
                    Some(done) = running.join_next() => tally(summary, done),
                }
                continue;
            }
            // Only this loop takes slots, so the `free` ones are still there.
            let Ok(permits) = slots.clone().try_acquire_many_owned(found.len() as u32) else {
                continue;
            };
            running.spawn(
                self.clone()
                    .run_batch(session.clone(), found, permits, turn, stop.clone()),
            );
        };

        scheduler_stop.cancel();
        // Stopped attempts end within their stop grace; settling or releasing them may wait for
        // the connection a little longer, but never past this.
        let stopping = self.config.stop_grace + STOP_MARGIN;
        match end {
            SessionEnd::Lost => {
                // Our claims are gone; other workers may be running these jobs already.
                abort_running.cancel();
                drain_within(&mut running, summary, stopping).await;
            }
            SessionEnd::Shutdown => {
                info!(running = running.len(), grace = ?self.config.shutdown_grace, "shutting down: finishing running attempts");
                let grace = self.config.shutdown_grace;
                if !join_within(&mut running, summary, grace).await {
                    warn!(
                        running = running.len(),
                        "grace period over: stopping and releasing the rest"
                    );
                    abort_running.cancel();
                    drain_within(&mut running, summary, stopping).await;
                }
                let deregister = client.delete(&self.layout.worker(&self.config.id), None);
                let _ = tokio::time::timeout(STOP_MARGIN, deregister).await;
            }
        }
        background.abort_all();
        while background.join_next().await.is_some() {}
        // The attempts' session handle shares the producer: let go of it first.
        drop(session);
        if let Ok(producer) = Arc::try_unwrap(producer) {
            let _ = tokio::time::timeout(STOP_MARGIN, producer.close()).await;
        }
        // Close the session now rather than leave it to expire: until then its registration
        // and candidacy would count as a live worker.
        futures::future::join(
            session::close(client, Duration::from_secs(2)),
            fetcher.close(Duration::from_secs(2)),
        )
        .await;
        Ok(end)
    }
}

/// Waits up to `within` for the running attempts to end, counting them. Returns whether all of
/// them ended.
pub(super) async fn join_within(
    running: &mut JoinSet<Vec<AttemptEnd>>,
    summary: &mut WorkerSummary,
    within: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        tokio::select! {
            next = running.join_next() => match next {
                Some(done) => tally(summary, done),
                None => return true,
            },
            _ = tokio::time::sleep_until(deadline) => return false,
        }
    }
}

/// Like [`join_within`], but attempts still running then are dropped (a command's process group
/// is killed), so that a worker always stops in bounded time, whatever its session is doing;
/// their claims go with the session.
pub(super) async fn drain_within(
    running: &mut JoinSet<Vec<AttemptEnd>>,
    summary: &mut WorkerSummary,
    within: Duration,
) {
    if !join_within(running, summary, within).await {
        error!(
            running = running.len(),
            ?within,
            "stopped attempts did not end in time: dropped"
        );
        running.abort_all();
        while let Some(done) = running.join_next().await {
            tally(summary, done);
        }
    }
}

pub(super) fn tally(
    summary: &mut WorkerSummary,
    done: std::result::Result<Vec<AttemptEnd>, tokio::task::JoinError>,
) {
    for settle in done.unwrap_or_else(|_| vec![AttemptEnd::Lost]) {
        match settle {
            AttemptEnd::Done => summary.done += 1,
            AttemptEnd::Retried => summary.retried += 1,
            AttemptEnd::Dead => summary.dead += 1,
            AttemptEnd::Released => summary.released += 1,
            AttemptEnd::Lost => summary.lost += 1,
            AttemptEnd::Cancelled => summary.cancelled += 1,
        }
    }
}

/// Cancels `lost` when the session ends for good.
pub(super) async fn watch_session(client: zk::Client, lost: CancellationToken) {
    let mut states = client.state_watcher();
    drop(client);
    let ended = crate::recipes::line::session_ended(&mut states).await;
    warn!(state = ?states.peek_state(), error = %ended, "ZooKeeper session ended");
    lost.cancel();
}

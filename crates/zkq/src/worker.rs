//! The worker: registers, finds ready jobs, claims them, runs handlers with bounded
//! concurrency, and settles each attempt (ack, retry through the delayed set, dead letter).
//!
//! # Session model
//! Everything a worker holds in ZooKeeper (registration, claims) lives in its session. The
//! worker runs one session at a time: when the session ends (expiry, close), its claims are
//! gone and other workers may already run those jobs, so it stops its running attempts at once
//! and starts over with a new session.
//!
//! Scans (listings, job data reads, watches) go through a second session, so that they never
//! queue behind the worker's own claim and ack commits. It holds nothing: a stale read there
//! costs at most a lost claim race, since every claim is a versioned `multi` on the worker's
//! session. Either session ending ends both.
//!
//! # Self-fencing
//! A heartbeat ([`crate::liveness`]) tells how long the session is surely alive. A worker that
//! has gone [`WorkerConfig::fence_share`] of its session timeout without a reply from ZooKeeper
//! (cut off, or its server gone) stops claiming and stops its running attempts, before the
//! server could expire the session and hand the jobs to another worker. When a reply comes
//! again the session survived: the stopped attempts' claims are released (not counted) and
//! work goes on. When the session is gone instead, the worker starts a new one. Commands run
//! under a watchdog fed by the same heartbeat, which stops them even when the worker is frozen.
//!
//! # Lock keys
//! A job with a lock key is claimed only while this worker's session holds the key's lock
//! ([`crate::lock`]), taken with a try-lock right before the claim. A busy key sends the job
//! back to the fetcher unclaimed, where it waits (holding no slot) until the key's holder node
//! goes; other jobs keep flowing. The lock is released only after the attempt has stopped and
//! settled, and every settle step checks the lock node, so attempts of one key never overlap,
//! retries included.
//!
//! # Shutdown
//! When the shutdown future resolves: stop claiming, let running attempts finish within the
//! grace period, then stop the rest and release their claims (the job is ready again and the
//! interrupted attempt is not counted), deregister and close the session.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, instrument, warn, Instrument};
use zookeeper_client as zk;

use crate::assignment;
use crate::batcher::Batcher;
use crate::claim::{self, Candidate, Claimed, Settled};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::fetch::{Fetcher, Found, Parking};
use crate::handler::{Fence, Handler, JobContext, Outcome};
use crate::job::{now_ms, JobId};
use crate::layout::Layout;
use crate::liveness::{self, Liveness};
use crate::lock::{Lock, LockGuard};
use crate::producer::{Placement, Producer};
use crate::promoter;
use crate::queue::{self, QueueConfig};
use crate::registry::{self, WorkerInfo};
use crate::scheduler::{self, SchedulerConfig};
use crate::telemetry;
use crate::txn::Op;
use crate::znode::{self, ZkConfig};

/// Claim batches in flight at once; more found jobs wait for the next scan.
const CLAIMS_IN_FLIGHT: usize = 4;

/// Beyond an attempt's stop grace, how long stopping may wait for ZooKeeper (settling or
/// releasing stopped attempts, deregistering, closing) before the worker moves on.
const STOP_MARGIN: Duration = Duration::from_secs(3);

/// How a worker runs. Every field has a default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker id, unique among live workers. Defaults to `<host>-<pid>-<random>`.
    pub id: String,
    /// Queues to take jobs from. Required.
    pub queues: Vec<String>,
    /// Attempts run at once. Defaults to 10.
    pub concurrency: usize,
    /// Run time limit of an attempt, unless the job sets its own. Defaults to 30 minutes.
    pub job_timeout: Duration,
    /// After an attempt is told to stop, how long it may take before it is dropped. Defaults
    /// to 5 s.
    pub stop_grace: Duration,
    /// On shutdown, how long running attempts may take to finish. Defaults to 30 s.
    pub shutdown_grace: Duration,
    /// Longest sleep between scans when no watch fires (a safety net). Defaults to 5 s.
    pub poll_interval: Duration,
    /// Whether this worker stands for election as the scheduler (which promotes due delayed
    /// jobs, assigns partitions, fires periodic jobs and trims dead letters). Defaults to true.
    pub scheduler: bool,
    /// How the scheduler paces itself, while this worker leads.
    pub scheduling: SchedulerConfig,
    /// Config for queues this worker creates because they did not exist yet.
    pub default_queue_config: QueueConfig,
    /// Share of the session timeout without a reply from ZooKeeper after which the worker
    /// stops claiming and stops its running attempts (self-fencing). Between 0.1 and 0.75, below
    /// the watchdog's [`liveness::KILL_SHARE`]. Defaults to 0.6.
    pub fence_share: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        WorkerConfig {
            id: format!("{}-{}-{}", registry::hostname(), std::process::id(), &random[..6]),
            queues: Vec::new(),
            concurrency: 10,
            job_timeout: Duration::from_secs(30 * 60),
            stop_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            scheduler: true,
            scheduling: SchedulerConfig::default(),
            default_queue_config: QueueConfig::default(),
            fence_share: 0.6,
        }
    }
}

/// What a worker did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    pub done: u64,
    pub retried: u64,
    pub dead: u64,
    /// Attempts interrupted by shutdown and put back.
    pub released: u64,
    /// Attempts whose claim was lost before they settled.
    pub lost: u64,
    /// Sessions that ended under the worker and were replaced.
    pub sessions_lost: u64,
}

/// A worker: handlers by job kind, plus its config.
pub struct Worker {
    zk: ZkConfig,
    layout: Layout,
    config: WorkerConfig,
    handlers: HashMap<String, Arc<dyn Handler>>,
    fallback: Option<Arc<dyn Handler>>,
    detached: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How one attempt ended, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    Done,
    Retried,
    Dead,
    Released,
    Lost,
}

/// What an attempt needs from the session it runs in.
#[derive(Clone)]
struct Session {
    client: zk::Client,
    producer: Arc<Producer>,
    /// Group commit of acks.
    acks: Batcher,
    /// Cancelled to stop every running attempt (shutdown past its grace period, session lost).
    abort: CancellationToken,
    /// Cancelled when the session ends.
    lost: CancellationToken,
    /// The session's heartbeat: fenced when ZooKeeper has not answered for too long.
    liveness: Liveness,
    /// Where jobs whose lock key is busy go to wait.
    parking: Parking,
    /// Lock keys this session holds or is taking, so that a second job of one key waits
    /// without trying the lock.
    keys: Keys,
}

type Keys = Arc<std::sync::Mutex<HashSet<String>>>;

/// A job's lock, held for its attempt; lets go of the key in [`Keys`] too when dropped.
struct KeyHold {
    guard: LockGuard,
    keys: Keys,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        lock_keys(&self.keys).remove(self.guard.key());
    }
}

fn lock_keys(keys: &Keys) -> std::sync::MutexGuard<'_, HashSet<String>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

/// Claims won by one batch, and the slots taken for the whole batch.
struct Claims {
    won: Vec<Claimed>,
    /// Claims that failed with an error rather than a lost race.
    failures: usize,
    slots: OwnedSemaphorePermit,
}

/// Why a session's run ended.
enum SessionEnd {
    Shutdown,
    Lost,
}

impl Worker {
    /// A worker on `zk` under `root` with `config`. Add handlers, then [`Worker::run`].
    pub fn new(zk: ZkConfig, root: &str, config: WorkerConfig) -> Result<Worker> {
        let layout = Layout::new(root)?;
        if config.queues.is_empty() {
            return Err(Error::InvalidConfig("a worker needs at least one queue".into()));
        }
        for q in &config.queues {
            crate::layout::validate_queue_name(q)?;
        }
        if config.concurrency == 0 {
            return Err(Error::InvalidConfig("concurrency must be at least 1".into()));
        }
        if !(0.1..=0.75).contains(&config.fence_share) {
            return Err(Error::InvalidConfig(format!(
                "fence share must be between 0.1 and 0.75 of the session timeout, got {}",
                config.fence_share
            )));
        }
        Ok(Worker {
            zk,
            layout,
            config,
            handlers: HashMap::new(),
            fallback: None,
            detached: false,
        })
    }

    /// Runs jobs of `kind` with `handler`.
    pub fn handle(mut self, kind: &str, handler: impl Handler) -> Result<Worker> {
        crate::layout::validate_kind(kind)?;
        self.handlers.insert(kind.to_string(), Arc::new(handler));
        Ok(self)
    }

    /// Runs jobs of every kind without a handler of its own.
    pub fn handle_any(mut self, handler: impl Handler) -> Worker {
        self.fallback = Some(Arc::new(handler));
        self
    }

    /// Leaves the session to expire instead of closing it when the worker stops, the way a
    /// crashed process does. For failure tests.
    #[cfg(feature = "testing")]
    pub fn detached(mut self) -> Worker {
        self.detached = true;
        self
    }

    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Runs until `shutdown` resolves, then shuts down gracefully.
    ///
    /// # Errors
    /// When no session can be established at start, or a queue cannot be read. Sessions lost
    /// later are replaced, not returned.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<WorkerSummary> {
        let stop = CancellationToken::new();
        let trigger = stop.clone();
        // A JoinSet aborts its tasks when dropped: nothing outlives a dropped worker.
        let mut on_shutdown = JoinSet::new();
        on_shutdown.spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let this = Arc::new(self);
        let mut summary = WorkerSummary::default();
        let mut first = true;
        let result = loop {
            let client = match this.connect().await {
                Ok(c) => c,
                Err(e) if first => break Err(e),
                Err(e) => {
                    warn!(error = %e, "cannot reconnect; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            match this.clone().run_session(client, &stop, &mut summary).await {
                Ok(SessionEnd::Shutdown) => break Ok(()),
                Ok(SessionEnd::Lost) => {
                    summary.sessions_lost += 1;
                    warn!(worker = %this.config.id, "session lost; running attempts stopped; starting a new session");
                }
                Err(e) if e.is_session_lost() => summary.sessions_lost += 1,
                // A bad config or a taken worker id shows in the first session: give up then.
                Err(e) if first => break Err(e),
                // Later, ZooKeeper trouble while setting up a new session is waited out.
                Err(e) => {
                    warn!(error = %e, "cannot set up a new session; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
            first = false;
            if stop.is_cancelled() {
                break Ok(());
            }
        };
        on_shutdown.abort_all();
        result.map(|()| summary)
    }

    async fn connect(&self) -> Result<zk::Client> {
        if self.detached {
            self.zk.connect_detached().await
        } else {
            self.zk.connect().await
        }
    }

    async fn run_session(
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
        let (acks, committing) = Batcher::new(client.clone());
        background.spawn(committing);
        let (liveness, heartbeat) = liveness::start(
            client.clone(),
            self.layout.worker(&self.config.id),
            self.config.fence_share,
        );
        background.spawn(heartbeat);
        let scheduler_stop = CancellationToken::new();
        if self.config.scheduler {
            let election = Election::new(client.clone(), self.layout.scheduler(), self.config.id.clone());
            background.spawn(scheduler::run(
                producer.clone(),
                election,
                self.config.scheduling.clone(),
                scheduler_stop.clone(),
            ));
        }

        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut running: JoinSet<Vec<Settle>> = JoinSet::new();
        let abort_running = CancellationToken::new();
        // Partitions this worker owns; every partition until the scheduler says otherwise.
        let (owned_tx, owned) = watch::channel(assignment::Owned::new());
        background.spawn(assignment::follow(
            client.clone(),
            self.layout.clone(),
            self.config.id.clone(),
            self.config.queues.clone(),
            owned_tx,
        ));
        // Scans read on a session of their own; it shares this session's fate.
        let reader = self.connect().await?;
        background.spawn(watch_session(reader.clone(), session_lost.clone()));
        let mut fetcher = Fetcher::new(reader.clone(), self.layout.clone(), configs, owned);
        let session = Session {
            client: client.clone(),
            producer: producer.clone(),
            acks,
            abort: abort_running.clone(),
            lost: session_lost.clone(),
            liveness: liveness.clone(),
            parking: fetcher.parking(),
            keys: Keys::default(),
        };
        let mut fence = liveness.clone();
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
            if fence.is_fenced() {
                warn!(worker = %self.config.id, "no reply from ZooKeeper for too long: fenced, not claiming");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = session_lost.cancelled() => {}
                    _ = fence.cleared() => info!("ZooKeeper answers again: fence lifted"),
                    Some(done) = running.join_next() => tally(summary, done),
                }
                continue;
            }
            let free = slots.available_permits();
            let claiming = claim_turns.available_permits() < CLAIMS_IN_FLIGHT;
            // With claims in flight, wait for a worthwhile batch of free slots: fewer, larger
            // requests.
            let turn = match claim_turns.clone().try_acquire_owned() {
                Ok(turn) if free > 0 && (!claiming || free >= batch) => turn,
                _ => {
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = session_lost.cancelled() => {}
                        Some(done) = running.join_next() => tally(summary, done),
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
        drop((fetcher, session));
        if let Ok(producer) = Arc::try_unwrap(producer) {
            let _ = tokio::time::timeout(STOP_MARGIN, producer.close()).await;
        }
        // Close the session now rather than leave it to expire: until then its registration
        // and candidacy would count as a live worker.
        futures::future::join(
            znode::close(client, Duration::from_secs(2)),
            znode::close(reader, Duration::from_secs(2)),
        )
        .await;
        Ok(end)
    }

    /// Claims everything found, in batches, holding a slot per job; dead-letters garbage.
    #[instrument(name = "claim", skip_all, fields(candidates = found.len()))]
    async fn claim_all(&self, client: zk::Client, found: Vec<Found>, slots: OwnedSemaphorePermit) -> Claims {
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
            let latency = now_ms().saturating_sub(c.job.ready_at_ms) as f64 / 1000.0;
            metrics::counter!(telemetry::CLAIMED, "queue" => c.queue().to_string()).increment(1);
            metrics::histogram!(telemetry::LATENCY_SECONDS, "queue" => c.queue().to_string()).record(latency);
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
    async fn run_batch(
        self: Arc<Self>,
        session: Session,
        found: Vec<Found>,
        slots: OwnedSemaphorePermit,
        turn: OwnedSemaphorePermit,
        stopping: CancellationToken,
    ) -> Vec<Settle> {
        let (found, mut holds) = self.take_keys(&session, found).await;
        let mut claims = self.claim_all(session.client.clone(), found, slots).await;
        if claims.won.is_empty() && claims.failures > 0 {
            // Not a lost race but errors: keep the turn a while rather than spin on them.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        drop(turn);
        if session.lost.is_cancelled() {
            return claims.won.iter().map(|_| Settle::Lost).collect();
        }
        if stopping.is_cancelled() {
            // Claimed while shutting down: put them back unstarted.
            let mut settles = Vec::new();
            for claimed in &claims.won {
                settles.push(match claim::release(&session.client, claimed).await {
                    Ok(Settled::Committed) => Settle::Released,
                    _ => Settle::Lost,
                });
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
            let span = info_span!("job", queue = claimed.queue(), id = %claimed.job.id, kind = %claimed.job.kind, attempt = claimed.job.attempt);
            attempts.spawn(
                async move {
                    let settle = this.run_attempt(&session, claimed, abort).await;
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
            settles.push(done.unwrap_or(Settle::Lost));
        }
        settles
    }

    /// Takes the lock of each found job that has a lock key, before its claim: a job is claimed
    /// only while its key is held, so jobs of one key never run at once, and each claim's
    /// fencing token is larger than every earlier holder's. Jobs whose key is busy (here or
    /// elsewhere) go back to the fetcher to wait, unclaimed. Returns the jobs to claim and the
    /// locks taken, by job.
    async fn take_keys(&self, session: &Session, found: Vec<Found>) -> (Vec<Found>, HashMap<JobId, KeyHold>) {
        let mut free = Vec::with_capacity(found.len());
        let mut trying = Vec::new();
        for f in found {
            let key = match &f {
                Found::Job { job, .. } => job.lock_key.clone(),
                Found::Garbage { .. } => None,
            };
            let Some(key) = key else {
                free.push(f);
                continue;
            };
            if !lock_keys(&session.keys).insert(key.clone()) {
                self.park(session, key, f);
                continue;
            }
            trying.push((key, f));
        }
        let tries = trying.iter().map(|(key, _)| async {
            Lock::new(session.client.clone(), &self.layout, key, &self.config.id)?
                .try_acquire()
                .await
        });
        let results = futures::future::join_all(tries).await;
        let mut holds = HashMap::new();
        for ((key, f), result) in trying.into_iter().zip(results) {
            match result {
                Ok(Some(guard)) => {
                    if let Found::Job { job, .. } = &f {
                        holds.insert(
                            job.id,
                            KeyHold {
                                guard,
                                keys: session.keys.clone(),
                            },
                        );
                    }
                    free.push(f);
                }
                other => {
                    if let Err(e) = other {
                        warn!(%key, error = %e, "cannot take a job's lock; it waits");
                    }
                    lock_keys(&session.keys).remove(&key);
                    self.park(session, key, f);
                }
            }
        }
        (free, holds)
    }

    fn park(&self, session: &Session, key: String, found: Found) {
        if let Found::Job { candidate, .. } = found {
            debug!(%key, "lock key busy: the job waits");
            session.parking.park(key, candidate);
        }
    }

    /// Moves a job znode zkq cannot read to the dead letters, as found at `version`.
    async fn dead_letter_garbage(
        &self,
        client: &zk::Client,
        candidate: Candidate,
        data: Vec<u8>,
        version: i32,
        reason: &str,
    ) {
        let path = candidate.path(&self.layout);
        warn!(%path, %reason, "undecodable job moved to dead letters");
        let dead = promoter::undecodable_job(data, reason);
        let Ok(op) = claim::dead_letter_op(&self.layout, &candidate.queue, &dead) else {
            return;
        };
        let ops = vec![
            Op::Delete {
                path: path.clone(),
                version: Some(version),
            },
            op,
        ];
        if let Err(e) = claim::settle(client, "dead-letter garbage", ops).await {
            warn!(%path, error = %e, "cannot dead-letter undecodable job");
        } else {
            metrics::counter!(telemetry::DEAD, "queue" => candidate.queue.clone()).increment(1);
        }
    }

    /// Runs one claimed attempt to its end and settles it.
    async fn run_attempt(&self, session: &Session, claimed: Claimed, abort: CancellationToken) -> Settle {
        let Session {
            client,
            lost: session_lost,
            ..
        } = session;
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
        let mut fence = session.liveness.clone();
        if fence.is_fenced() {
            // Claimed while ZooKeeper was still answering, but it has not for too long since:
            // do not start what would have to be stopped at once.
            return self.release_when_heard(session, &claimed, &mut fence).await;
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
            _ = session_lost.cancelled() => { interrupted = Some(Interrupt::SessionLost); None }
            _ = fence.fenced() => { interrupted = Some(Interrupt::Fenced); None }
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
                        return match claim::release(client, &claimed).await {
                            Ok(Settled::Committed) => Settle::Released,
                            _ => Settle::Lost,
                        };
                    }
                    Some(Interrupt::Fenced) => {
                        warn!("no reply from ZooKeeper for too long: attempt stopped");
                        return self.release_when_heard(session, &claimed, &mut fence).await;
                    }
                    _ => {
                        metrics::counter!(telemetry::LOST, "queue" => claimed.queue().to_string())
                            .increment(1);
                        return Settle::Lost;
                    }
                }
            }
        };
        metrics::histogram!(telemetry::RUN_SECONDS, "queue" => claimed.queue().to_string())
            .record(started.elapsed().as_secs_f64());
        self.settle(session, &claimed, outcome).await
    }

    /// An attempt stopped (or not started) because the worker was fenced: stopped, not failed,
    /// so it is put back uncounted once ZooKeeper answers again, if the session survived.
    async fn release_when_heard(&self, session: &Session, claimed: &Claimed, fence: &mut Liveness) -> Settle {
        tokio::select! {
            _ = fence.cleared() => {}
            _ = session.lost.cancelled() => {}
        }
        if !session.lost.is_cancelled() {
            if let Ok(Settled::Committed) = claim::release(&session.client, claimed).await {
                return Settle::Released;
            }
        }
        metrics::counter!(telemetry::LOST, "queue" => claimed.queue().to_string()).increment(1);
        Settle::Lost
    }

    /// Commits an attempt's outcome. When the connection drops with the commit in flight, the
    /// outcome is reconciled once the connection is back ([`claim::settled_meanwhile`]): if it
    /// committed, the attempt is settled; if not, it is sent again, until it lands or the session
    /// ends. A claim left standing would hold the job for the rest of the session.
    #[instrument(name = "settle", skip_all)]
    async fn settle(&self, session: &Session, claimed: &Claimed, outcome: Outcome) -> Settle {
        let intended = match &outcome {
            Outcome::Done => Settle::Done,
            Outcome::Retry { .. } if claimed.job.has_attempts_left() => Settle::Retried,
            _ => Settle::Dead,
        };
        loop {
            match self
                .settle_once(session, claimed, outcome.clone(), intended)
                .await
            {
                Err(e) if e.is_outcome_unknown() => {
                    match claim::settled_meanwhile(&session.client, claimed).await {
                        Ok(true) => {
                            info!("the attempt's outcome committed before the connection dropped");
                            return self.settled(claimed, intended);
                        }
                        Ok(false) => {
                            warn!("connection lost while settling, nothing committed; sending again")
                        }
                        Err(e) => return self.settle_failed(claimed, e),
                    }
                }
                Err(e) => return self.settle_failed(claimed, e),
                Ok(settle) => return settle,
            }
        }
    }

    async fn settle_once(
        &self,
        session: &Session,
        claimed: &Claimed,
        outcome: Outcome,
        intended: Settle,
    ) -> Result<Settle> {
        let Session {
            client,
            producer,
            acks,
            ..
        } = session;
        let queue = claimed.queue().to_string();
        let mut job = claimed.job.clone();
        let result = match (outcome, intended) {
            (Outcome::Done, _) => {
                let ops = claimed.remove_ops();
                match acks.commit(ops.clone()).await {
                    Ok(()) => Ok(Settled::Committed),
                    Err(e) if crate::txn::lost_race(&e.source) => Ok(Settled::lost(e.index, &e.source)),
                    Err(e) => Err(e.into_error("ack", &ops)),
                }
            }
            (Outcome::Retry { error, after }, Settle::Retried) => {
                job.record_error(&error);
                let config = producer.config(&queue).await?;
                let delay = after.unwrap_or_else(|| config.retry.delay(job.attempt));
                let due_ms = now_ms().saturating_add(crate::job::millis(delay.min(crate::job::MAX_DELAY)));
                info!(%error, ?delay, "attempt failed; will retry");
                let placement = Placement::Delayed { job, due_ms };
                let remove = claimed.remove_ops();
                match producer
                    .commit(&queue, &config, vec![placement], remove.clone())
                    .await
                {
                    Ok(()) => Ok(Settled::Committed),
                    // A race lost on the claim's own ops: the claim or the job is gone.
                    Err(e) => {
                        let lost = e.lost_race().and_then(|(path, source)| {
                            let index = remove.iter().position(|op| op.path() == path)?;
                            Some(Settled::lost(Some(index), source))
                        });
                        lost.ok_or(e)
                    }
                }
            }
            (Outcome::Retry { error, .. } | Outcome::Dead { error }, _) => {
                job.record_error(&error);
                let mut ops = claimed.remove_ops();
                ops.push(claim::dead_letter_op(&self.layout, &queue, &job)?);
                let result = claim::settle(client, "dead-letter", ops).await;
                if let Ok(Settled::Committed) = result {
                    warn!(%error, attempts = job.attempt, "job dead-lettered");
                }
                result
            }
        };
        match result? {
            Settled::Committed => Ok(self.settled(claimed, intended)),
            Settled::ClaimLost => {
                warn!("claim lost before the attempt settled (its session ended, or the job was claimed again): nothing written; the job runs again");
                metrics::counter!(telemetry::LOST, "queue" => queue).increment(1);
                Ok(Settle::Lost)
            }
            Settled::JobGone => {
                warn!("the job is gone (settled elsewhere after this claim was lost, or removed): nothing written");
                metrics::counter!(telemetry::LOST, "queue" => queue).increment(1);
                Ok(Settle::Lost)
            }
        }
    }

    /// Counts an attempt whose outcome committed.
    fn settled(&self, claimed: &Claimed, settle: Settle) -> Settle {
        let metric = match settle {
            Settle::Done => telemetry::DONE,
            Settle::Retried => telemetry::RETRIED,
            _ => telemetry::DEAD,
        };
        metrics::counter!(metric, "queue" => claimed.queue().to_string()).increment(1);
        debug!("attempt settled");
        settle
    }

    fn settle_failed(&self, claimed: &Claimed, e: Error) -> Settle {
        // The claim stays until the session ends; the job then runs again (at-least-once).
        error!(id = %claimed.job.id, error = %e, "cannot settle attempt");
        Settle::Lost
    }
}

enum Interrupt {
    Timeout,
    Shutdown,
    SessionLost,
    /// No reply from ZooKeeper for the worker's fence share of the session timeout.
    Fenced,
}

/// Waits up to `within` for the running attempts to end, counting them. Returns whether all of
/// them ended.
async fn join_within(
    running: &mut JoinSet<Vec<Settle>>,
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
async fn drain_within(running: &mut JoinSet<Vec<Settle>>, summary: &mut WorkerSummary, within: Duration) {
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

fn tally(summary: &mut WorkerSummary, done: std::result::Result<Vec<Settle>, tokio::task::JoinError>) {
    for settle in done.unwrap_or_else(|_| vec![Settle::Lost]) {
        match settle {
            Settle::Done => summary.done += 1,
            Settle::Retried => summary.retried += 1,
            Settle::Dead => summary.dead += 1,
            Settle::Released => summary.released += 1,
            Settle::Lost => summary.lost += 1,
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

/// Cancels `lost` when the session ends for good.
async fn watch_session(client: zk::Client, lost: CancellationToken) {
    let mut states = client.state_watcher();
    drop(client);
    let ended = crate::line::session_ended(&mut states).await;
    warn!(state = ?states.peek_state(), error = %ended, "ZooKeeper session ended");
    lost.cancel();
}

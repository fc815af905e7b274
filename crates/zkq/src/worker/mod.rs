//! The worker: registers, finds ready jobs, claims them, runs handlers with bounded
//! concurrency, and settles each attempt (ack, retry through the delayed set, dead letter).
//!
//! # Session model
//! Everything a worker holds in ZooKeeper (registration, claims) lives in its session. The
//! worker runs one session at a time: when the session ends (expiry, close), its claims are
//! gone and other workers may already run those jobs, so it stops its running attempts at once
//! and starts over with a new session.
//!
//! While the worker is busy, scans (listings, job data reads, watches) go through a second
//! session, so that they never queue behind the worker's own claim and ack commits; an idle
//! worker closes it and scans on its own ([`fetch`]'s read session). It holds nothing: a stale
//! read there costs at most a lost claim race, since every claim is a versioned `multi` on the
//! worker's session, and its end only sends the scans back to the worker's session.
//!
//! # Self-fencing
//! A heartbeat ([`crate::recipes::liveness`]) tells how long the session is surely alive. A worker that
//! has gone [`WorkerConfig::fence_share`] of its session timeout without a reply from ZooKeeper
//! (cut off, or its server gone) stops claiming and stops its running attempts, before the
//! server could expire the session and hand the jobs to another worker. When a reply comes
//! again the session survived: the stopped attempts' claims are released (not counted) and
//! work goes on. When the session is gone instead, the worker starts a new one. Commands run
//! under a watchdog fed by the same heartbeat, which stops them even when the worker is frozen.
//!
//! # Lock keys
//! A job with a lock key is claimed only while this worker's session holds the key's lock
//! ([`crate::recipes::lock`]), taken with a try-lock right before the claim. A busy key sends the job
//! back to the fetcher unclaimed, where it waits (holding no slot) until the key's holder node
//! goes; other jobs keep flowing. The lock is released only after the attempt has stopped and
//! settled, and every settle step checks the lock node, so attempts of one key never overlap,
//! retries included.
//!
//! # Shutdown
//! When the shutdown future resolves: stop claiming, let running attempts finish within the
//! grace period, then stop the rest and release their claims (the job is ready again and the
//! interrupted attempt is not counted), deregister and close the session.

mod attempt;
mod batch;
mod config;
mod configs;
pub(crate) mod fetch;
mod keys;
mod meter;
mod session;
mod settle;

pub use config::WorkerConfig;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::handler::Handler;
use crate::store::layout::Layout;
use crate::store::session::ZkConfig;
use crate::telemetry::Health;

use self::session::SessionEnd;

/// Claim batches in flight at once; more found jobs wait for the next scan.
const CLAIMS_IN_FLIGHT: usize = 4;

/// Beyond an attempt's stop grace, how long stopping may wait for ZooKeeper (settling or
/// releasing stopped attempts, deregistering, closing) before the worker moves on.
const STOP_MARGIN: Duration = Duration::from_secs(3);

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
    /// Attempts stopped because an operator cancelled their job (`zkq-admin job cancel`).
    pub cancelled: u64,
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
    health: Health,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Bytes of claim paths one worker's session may hold: half of `jute.maxbuffer`, leaving the
/// other half to its other ephemerals (registration, election, lock nodes of locked jobs).
const CLAIM_PATHS_BUDGET: usize = 512 * 1024;

/// The most jobs one worker on `queues` may run at once, so that its claims' paths stay within
/// [`CLAIM_PATHS_BUDGET`] in the transaction that ends its session.
fn max_concurrency(layout: &Layout, queues: &[String]) -> usize {
    // A claim is `<claims folder of the partition>/l<lane>.s-<10 digits>.<10 digits>`; the
    // transaction stores each path with a 4-byte length.
    let longest = queues
        .iter()
        .map(|q| layout.claims(q, u32::MAX).len() + "/l255.s-0000000000.0000000000".len() + 4)
        .max()
        .unwrap_or(1);
    CLAIM_PATHS_BUDGET / longest
}

impl Worker {
    /// A worker on `zk` under `root` with `config`. Add handlers, then [`Worker::run`].
    pub fn new(zk: ZkConfig, root: &str, config: WorkerConfig) -> Result<Worker> {
        let layout = Layout::for_config(root, &zk)?;
        if config.queues.is_empty() {
            return Err(Error::InvalidConfig("a worker needs at least one queue".into()));
        }
        for q in &config.queues {
            crate::store::layout::validate_queue_name(q)?;
        }
        if config.concurrency == 0 {
            return Err(Error::InvalidConfig("concurrency must be at least 1".into()));
        }
        let most = max_concurrency(&layout, &config.queues);
        if config.concurrency > most {
            return Err(Error::InvalidConfig(format!(
                "concurrency {} is too high for one session: when a session ends, ZooKeeper lists \
                 all its ephemeral znodes (a claim per running job) in one transaction, and one \
                 over jute.maxbuffer (1 MiB) stops every follower of an ensemble. With these \
                 names, at most {most}: run more worker processes instead",
                config.concurrency
            )));
        }
        if config.read_session_idle < Duration::from_secs(1) {
            return Err(Error::InvalidConfig(format!(
                "read session idle time must be at least 1 s (each close and reopen lists every \
                 lane again), got {:?}",
                config.read_session_idle
            )));
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
            health: Health::default(),
        })
    }

    /// The `kind` label of a job of `kind`'s metrics: its own, or `*` when the catch-all handler
    /// runs it (producers choose kinds; a label per kind they invent would grow without bound).
    pub(super) fn kind_label(&self, kind: &str) -> String {
        if self.handlers.contains_key(kind) {
            kind.to_string()
        } else {
            "*".to_string()
        }
    }

    /// The health of this worker's ZooKeeper session, for a readiness probe: ready while the
    /// session is connected and the worker is not fenced.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs jobs of `kind` with `handler`.
    pub fn handle(mut self, kind: &str, handler: impl Handler) -> Result<Worker> {
        crate::store::layout::validate_kind(kind)?;
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

    /// The kinds this worker handles, sorted, for its registration: `*` for a catch-all.
    fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.handlers.keys().cloned().collect();
        if self.fallback.is_some() {
            kinds.push("*".to_string());
        }
        kinds.sort();
        kinds
    }

    async fn connect(&self) -> Result<zk::Client> {
        if self.detached {
            self.zk.connect_detached().await
        } else {
            self.zk.connect().await
        }
    }

    /// A read session, for the fetcher while the worker is busy. The client pings a connection
    /// that sent nothing for 3/8 of its connection timeout and drops one that received nothing
    /// for all of it. Its default, 2/5 of the session timeout, finds a hung server within 2/5,
    /// before the fence (0.6): the worker's own session keeps it. The read session fences
    /// nothing, so it gets 3/5: a ping every 9/40 (2.25 s at 10 s, nearly the Java client's
    /// third), 2/5 left to reconnect before the session could expire.
    async fn connect_reader(&self) -> Result<zk::Client> {
        let connector = zk::Client::connector().with_connection_timeout(self.zk.session_timeout * 3 / 5);
        let connector = if self.detached {
            connector.with_detached()
        } else {
            connector
        };
        self.zk.connect_with(connector).await
    }
}

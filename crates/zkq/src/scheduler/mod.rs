//! The scheduler: fleet-wide chores done by the elected leader only, each write fenced by its
//! epoch.
//!
//! Every worker is a candidate by default ([`crate::WorkerConfig::scheduler`]); a
//! [`Scheduler`] runs the same without taking jobs (scheduler-only mode). While leader, a
//! candidate runs four services side by side:
//!
//! - **promotion** of due delayed and retry-waiting jobs ([`promote`]);
//! - **partition assignment** to live workers ([`crate::assignment`]);
//! - **periodic jobs** from cron schedules, once per tick ([`crate::periodic`]);
//! - **trimming** of dead letters by count and age ([`trim`]).
//!
//! When the leadership is in doubt (connection lost) or a write finds a newer epoch, all four
//! stop at once and the candidate campaigns again.

mod cron;
mod depth;
mod due;
mod promote;
pub(crate) mod service;
mod trim;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::producer::Producer;
use crate::recipes::election::{Election, Leadership};
use crate::store::layout::Layout;
use crate::store::session::{self, ZkConfig};
use crate::{assignment, telemetry};

/// How the scheduler's services pace themselves. Every field has a default.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Longest time between looks at every queue's delayed jobs. Delayed jobs are promoted at
    /// their due time, known from watches; this look finds the ones whose watch event was lost
    /// with a connection. Defaults to 2 s.
    pub promote_interval: Duration,
    /// How long before their due time delayed jobs are moved to their lanes. A worker claims
    /// such a job at once and starts it at its due time, so the move and the claim (two commits,
    /// each an fsync of the server's log) happen before it instead of making it late. Defaults to
    /// 250 ms; at most [`crate::job::MAX_EARLY`], how long a worker waits for a job's due time.
    pub promote_ahead: Duration,
    /// Quiet time after a worker joins or leaves before partitions are reassigned, so that a
    /// burst of changes costs one rebalance. Defaults to 1 s.
    pub rebalance_delay: Duration,
    /// How often dead letters are trimmed and stray nodes removed from the claims. Defaults to
    /// 60 s.
    pub trim_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            promote_interval: Duration::from_secs(2),
            promote_ahead: Duration::from_millis(250),
            rebalance_delay: Duration::from_secs(1),
            trim_interval: Duration::from_secs(60),
        }
    }
}

/// A scheduler candidate that takes no jobs: scheduler-only mode.
#[derive(Debug)]
pub struct Scheduler {
    zk: ZkConfig,
    layout: Layout,
    id: String,
    config: SchedulerConfig,
    health: telemetry::Health,
}

impl Scheduler {
    /// A candidate named `id` (shown in its election node) under `root`.
    pub fn new(
        zk: ZkConfig,
        root: &str,
        id: impl Into<String>,
        config: SchedulerConfig,
    ) -> Result<Scheduler> {
        Ok(Scheduler {
            layout: Layout::for_config(root, &zk)?,
            zk,
            id: id.into(),
            config,
            health: telemetry::Health::default(),
        })
    }

    /// The health of this candidate's ZooKeeper session, for a readiness probe.
    pub fn health(&self) -> telemetry::Health {
        self.health.clone()
    }

    /// Campaigns and, while leader, serves, until `shutdown` resolves; then resigns. A lost
    /// session is replaced by a new one, which joins the election again.
    ///
    /// # Errors
    /// When the first session cannot be established.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        tokio::pin!(shutdown);
        let mut first = true;
        let mut following = JoinSet::new();
        loop {
            let client = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                c = session::reconnect(&self.zk, first) => c?,
            };
            first = false;
            following.abort_all();
            let (health, c) = (self.health.clone(), client.clone());
            following.spawn(async move { health.follow(c).await });
            let producer = Arc::new(Producer::with_client(client.clone(), self.layout.clone()));
            let election = Election::new(client.clone(), self.layout.scheduler(), self.id.clone())
                .with_acl(self.layout.acl().clone());
            let stop = CancellationToken::new();
            let served = stand(producer, election, self.config.clone(), stop.clone());
            tokio::pin!(served);
            tokio::select! {
                _ = &mut shutdown => {
                    stop.cancel();
                    (&mut served).await;
                    // The last handle: dropping it closes the session.
                    drop(client);
                    return Ok(());
                }
                _ = &mut served => warn!(id = %self.id, "session lost; joining the election again with a new one"),
            }
        }
    }
}

/// Campaigns and serves as scheduler until `stop` is cancelled (then resigns) or the session
/// ends.
pub(crate) async fn stand(
    producer: Arc<Producer>,
    election: Election,
    config: SchedulerConfig,
    stop: CancellationToken,
) {
    loop {
        let leadership = tokio::select! {
            _ = stop.cancelled() => {
                if let Err(e) = election.withdraw().await {
                    warn!(error = %e, "cannot withdraw from the scheduler election");
                }
                return;
            }
            l = election.campaign() => l,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) if e.is_session_lost() => return,
            Err(e) => {
                warn!(error = %e, "campaign failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let leadership = Arc::new(leadership);
        let session_lost = serve(&producer, &leadership, &config, &stop).await;
        if stop.is_cancelled() {
            if let Ok(l) = Arc::try_unwrap(leadership) {
                l.resign().await;
            }
            return;
        }
        if session_lost {
            return;
        }
        // Leadership in doubt or fenced: campaign again (on this session, the candidate
        // keeps its place in line).
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// `zkq_scheduler_leader` is 1 while one of these lives (dropped however `serve` ends, an
/// abort included).
struct Leading;

impl Leading {
    fn new(epoch: i32) -> Leading {
        metrics::gauge!(telemetry::SCHEDULER_LEADER).set(1.0);
        metrics::gauge!(telemetry::SCHEDULER_EPOCH).set(f64::from(epoch));
        Leading
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::SCHEDULER_LEADER).set(0.0);
    }
}

/// Runs the leader's services until the leadership is lost, a service is fenced, or `stop` is
/// cancelled. Returns whether the session is gone.
async fn serve(
    producer: &Arc<Producer>,
    leadership: &Arc<Leadership>,
    config: &SchedulerConfig,
    stop: &CancellationToken,
) -> bool {
    let serving = leadership.lost().child_token();
    let mut services = JoinSet::new();
    let (p, l, s) = (producer.clone(), leadership.clone(), serving.clone());
    let (interval, ahead) = (
        config.promote_interval,
        config.promote_ahead.min(crate::MAX_EARLY),
    );
    spawn_service(&mut services, &serving, "promote", async move {
        promote::serve(&p, &l, interval, ahead, &s).await
    });
    let (p, l, s) = (producer.clone(), leadership.clone(), serving.clone());
    let delay = config.rebalance_delay;
    spawn_service(&mut services, &serving, "assign", async move {
        assignment::serve(p.client(), p.layout(), &l, delay, &s).await
    });
    let (p, l, s) = (producer.clone(), leadership.clone(), serving.clone());
    spawn_service(&mut services, &serving, "cron", async move {
        cron::serve(&p, &l, &s).await
    });
    let (p, s) = (producer.clone(), serving.clone());
    spawn_service(&mut services, &serving, "depth", async move {
        depth::serve(p.client(), p.layout(), &s).await
    });
    let (p, l, s) = (producer.clone(), leadership.clone(), serving.clone());
    let interval = config.trim_interval;
    spawn_service(&mut services, &serving, "trim", async move {
        trim::serve(p.client(), p.layout(), &l, interval, &s).await
    });
    info!(epoch = leadership.epoch(), "scheduler services running");
    let _leading = Leading::new(leadership.epoch());
    tokio::select! {
        _ = serving.cancelled() => {}
        _ = stop.cancelled() => serving.cancel(),
    }
    let mut session_lost = false;
    while let Some(done) = services.join_next().await {
        if let Ok(Err(e)) = done {
            session_lost |= e.is_session_lost();
        }
    }
    session_lost
}

/// Runs one leader service; when it ends, for whatever reason, all of them stop: a leader that
/// cannot do one of its jobs steps down and campaigns again.
fn spawn_service(
    services: &mut JoinSet<Result<()>>,
    serving: &CancellationToken,
    name: &'static str,
    service: impl Future<Output = Result<()>> + Send + 'static,
) {
    let serving = serving.clone();
    services.spawn(async move {
        let result = service.await;
        match &result {
            Ok(()) => {}
            Err(Error::Fenced { epoch }) => warn!(
                service = name,
                epoch, "deposed: a newer scheduler holds the epoch"
            ),
            Err(e) if e.is_session_lost() => {}
            Err(e) => warn!(service = name, error = %e, "scheduler service failed"),
        }
        serving.cancel();
        result
    });
}

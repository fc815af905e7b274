//! Batch-job master failover: run exactly one of several candidates' command, and make sure a
//! deposed master has stopped.
//!
//! Candidates elect a master under `<root>/singletons/<name>` with the same election as the
//! scheduler ([`crate::Election`]): a master's fencing token is the epoch it holds, so writes it
//! guards with `check(epoch_path, token)` fail once another master took over. In-process users
//! take [`election`] and guard their writes with the [`Leadership`] it returns.
//!
//! [`SingletonRunner`] runs a command (`zkq-worker singleton`):
//!
//! - only while this process is master, with `ZKQ_FENCING_TOKEN` (a new epoch for every run, so
//!   tokens grow strictly from run to run and master to master), `ZKQ_EPOCH_PATH` (the znode
//!   to check it against), `ZKQ_SINGLETON` and `ZKQ_WORKER_ID` in its environment;
//! - under a [`Watchdog`], fed after every successful round trip to ZooKeeper, so that the
//!   command is stopped (SIGTERM, then SIGKILL after the stop grace) before the server could
//!   expire the session, even if this process is frozen and cannot act;
//! - stopped at once when mastership is in doubt (connection lost), after which this process
//!   campaigns again: with a new session if the old one expired.
//!
//! # Restart policy
//! When the command exits while this process is master, [`Restart`] decides: `Always` starts it
//! again, `OnFailure` only after a non-zero status (a zero status ends the runner and hands
//! mastership on), `Never` ends the runner with the command's status. Restarts wait
//! `restart_delay`, doubled after every run shorter than a minute, up to a minute.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::{info, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::recipes::election::{Election, Leadership};
use crate::recipes::watchdog::{monotonic_ns, Watchdog};
use crate::store::layout::{self, Layout};
use crate::store::session::{self, ZkConfig};
use crate::telemetry::{self, Health};

/// The election for singleton `name` under `layout`, for a candidate named `candidate`.
///
/// # Errors
/// [`Error::InvalidName`] for a bad singleton name.
pub fn election(client: zk::Client, layout: &Layout, name: &str, candidate: &str) -> Result<Election> {
    layout::validate_name("singleton name", name)?;
    Ok(Election::new(client, layout.singleton(name), candidate).with_acl(layout.acl().clone()))
}

/// What to do when the command exits while this process is master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

impl FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(format!("expected always, on-failure or never, got {s:?}")),
        }
    }
}

/// How a [`SingletonRunner`] runs its command.
#[derive(Debug, Clone)]
pub struct SingletonConfig {
    /// The singleton's name: candidates with the same name compete.
    pub name: String,
    /// This candidate's name (in its election node and `ZKQ_WORKER_ID`).
    pub id: String,
    pub restart: Restart,
    /// Wait before a restart (doubled after short runs). Defaults to 1 s.
    pub restart_delay: Duration,
    /// Time between SIGTERM and SIGKILL when the command is stopped. `None`: 40% of the
    /// session timeout, at most 5 s.
    pub stop_grace: Option<Duration>,
}

impl SingletonConfig {
    pub fn new(name: impl Into<String>, id: impl Into<String>) -> SingletonConfig {
        SingletonConfig {
            name: name.into(),
            id: id.into(),
            restart: Restart::Always,
            restart_delay: Duration::from_secs(1),
            stop_grace: None,
        }
    }
}

/// Runs a command on exactly one of the candidates.
#[derive(Debug)]
pub struct SingletonRunner {
    zk: ZkConfig,
    layout: Layout,
    config: SingletonConfig,
    program: String,
    args: Vec<String>,
    health: Health,
}

/// `zkq_singleton_master{name}` is 1 while one of these lives.
struct MasterGauge(String);

impl MasterGauge {
    fn on(name: &str) -> MasterGauge {
        metrics::gauge!(telemetry::SINGLETON_MASTER, "name" => name.to_string()).set(1.0);
        MasterGauge(name.to_string())
    }
}

impl Drop for MasterGauge {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::SINGLETON_MASTER, "name" => self.0.clone()).set(0.0);
    }
}

/// How a run of the command ended, as far as the runner is concerned.
enum RunEnd {
    /// It exited on its own with this status.
    Exited(i32),
    /// Mastership was lost or in doubt; it was stopped.
    Deposed,
    /// Shutdown was requested; it was stopped.
    Shutdown,
}

impl SingletonRunner {
    /// A runner of `program args...` for the singleton and candidate in `config`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] or [`Error::InvalidConfig`] for bad names or an empty command.
    pub fn new(
        zk: ZkConfig,
        root: &str,
        config: SingletonConfig,
        command: Vec<String>,
    ) -> Result<SingletonRunner> {
        layout::validate_name("singleton name", &config.name)?;
        let mut command = command.into_iter();
        let program = command
            .next()
            .ok_or_else(|| Error::InvalidConfig("the singleton needs a command to run".into()))?;
        Ok(SingletonRunner {
            layout: Layout::for_config(root, &zk)?,
            zk,
            config,
            program,
            args: command.collect(),
            health: Health::default(),
        })
    }

    /// The health of this runner's ZooKeeper session, for a readiness probe.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Campaigns, runs the command while master, and campaigns again after losing mastership,
    /// until `shutdown` resolves or the restart policy says the work is done. Returns the exit
    /// status to end with.
    ///
    /// # Errors
    /// When the first session cannot be established.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<i32> {
        tokio::pin!(shutdown);
        let mut first = true;
        let mut following = tokio::task::JoinSet::new();
        loop {
            let client = tokio::select! {
                _ = &mut shutdown => return Ok(0),
                c = session::reconnect(&self.zk, first) => c?,
            };
            first = false;
            following.abort_all();
            let (health, c) = (self.health.clone(), client.clone());
            following.spawn(async move { health.follow(c).await });
            let election = election(client.clone(), &self.layout, &self.config.name, &self.config.id)?;
            if let Some(code) = self.on_session(&client, &election, &mut shutdown).await {
                return Ok(code);
            }
            warn!(singleton = %self.config.name, "session lost; campaigning again with a new one");
        }
    }

    /// Campaigns and runs on one session. Returns the exit status when the runner is done,
    /// `None` when the session is gone.
    async fn on_session(
        &self,
        client: &zk::Client,
        election: &Election,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<i32> {
        loop {
            let leadership = tokio::select! {
                _ = shutdown.as_mut() => {
                    let _ = election.withdraw().await;
                    return Some(0);
                }
                l = election.campaign() => l,
            };
            let mut leadership = match leadership {
                Ok(l) => l,
                Err(e) if e.is_session_lost() => return None,
                Err(e) => {
                    warn!(error = %e, "campaign failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            info!(singleton = %self.config.name, token = leadership.epoch(), "master");
            let _master = MasterGauge::on(&self.config.name);
            let mut delay = self.config.restart_delay;
            let mut first_run = true;
            loop {
                if !first_run {
                    match leadership.next_term().await {
                        Ok(_) => {}
                        Err(e) if e.is_session_lost() => return None,
                        Err(e) => {
                            warn!(error = %e, "cannot start a new term; campaigning again");
                            break;
                        }
                    }
                }
                first_run = false;
                let started = Instant::now();
                match self.run_once(client, &leadership, shutdown).await {
                    RunEnd::Shutdown => {
                        leadership.resign().await;
                        return Some(0);
                    }
                    RunEnd::Deposed => break,
                    RunEnd::Exited(code) => {
                        let done = match self.config.restart {
                            Restart::Always => false,
                            Restart::OnFailure => code == 0,
                            Restart::Never => true,
                        };
                        if done {
                            info!(code, "command finished; handing mastership on");
                            leadership.resign().await;
                            return Some(code);
                        }
                        if started.elapsed() >= Duration::from_secs(60) {
                            delay = self.config.restart_delay;
                        }
                        warn!(code, ?delay, "command exited; restarting it");
                        tokio::select! {
                            _ = shutdown.as_mut() => {
                                leadership.resign().await;
                                return Some(0);
                            }
                            _ = leadership.lost().cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(60));
                    }
                }
            }
            if client.state().is_terminated() {
                return None;
            }
        }
    }

    /// Runs the command once under a watchdog, feeding it after every successful probe.
    async fn run_once(
        &self,
        client: &zk::Client,
        leadership: &Leadership,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> RunEnd {
        let timeout = client.session_timeout();
        // The command must be dead before the server can expire the session: a probe sent at T
        // keeps the session alive until at least T + timeout. Keep a fifth of it as margin.
        let budget = timeout.mul_f64(0.8);
        let grace = self
            .config
            .stop_grace
            .unwrap_or_else(|| timeout.mul_f64(0.4).min(Duration::from_secs(5)))
            .min(budget / 2);
        let interval = (timeout / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let Some(sent) = probe(client, leadership).await else {
            return RunEnd::Deposed;
        };
        let token = leadership.epoch();
        let env = vec![
            ("ZKQ_FENCING_TOKEN".to_string(), token.to_string()),
            ("ZKQ_EPOCH_PATH".to_string(), leadership.epoch_path().to_string()),
            ("ZKQ_SINGLETON".to_string(), self.config.name.clone()),
            ("ZKQ_WORKER_ID".to_string(), self.config.id.clone()),
        ];
        let deadline = |sent: u64| sent + budget.as_nanos() as u64;
        let mut watchdog = match Watchdog::spawn(&self.program, &self.args, &env, grace, deadline(sent)) {
            Ok(w) => {
                metrics::counter!(telemetry::SINGLETON_RUNS, "name" => self.config.name.clone()).increment(1);
                w
            }
            Err(e) => {
                warn!(error = %e, "cannot start the command");
                return RunEnd::Exited(crate::recipes::watchdog::CANNOT_START);
            }
        };
        info!(token, program = %self.program, pid = watchdog.id(), "command started");
        let lost = leadership.lost().clone();
        let mut kill_at = deadline(sent);
        let mut beat = tokio::time::interval(interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            tokio::select! {
                code = watchdog.wait() => {
                    if monotonic_ns() + grace.as_nanos() as u64 >= kill_at {
                        // The watchdog stopped it: no word from ZooKeeper in time.
                        warn!(token, code, "the watchdog stopped the command: mastership in doubt");
                        return RunEnd::Deposed;
                    }
                    return RunEnd::Exited(code);
                }
                _ = lost.cancelled() => break RunEnd::Deposed,
                _ = shutdown.as_mut() => break RunEnd::Shutdown,
                _ = beat.tick() => match probe(client, leadership).await {
                    Some(sent) => {
                        kill_at = deadline(sent);
                        watchdog.extend(kill_at).await;
                    }
                    None if lost.is_cancelled() => break RunEnd::Deposed,
                    // No answer: the deadline comes closer; the watchdog acts on it.
                    None => {}
                },
            }
        };
        match end {
            RunEnd::Deposed => warn!(token, "mastership in doubt: stopping the command"),
            _ => info!(token, "stopping the command"),
        }
        watchdog.stop().await;
        let code = watchdog.wait().await;
        info!(token, code, "command stopped");
        end
    }
}

/// A round trip proving the session alive and the epoch still ours. Returns the monotonic time
/// the request was sent.
async fn probe(client: &zk::Client, leadership: &Leadership) -> Option<u64> {
    let sent = monotonic_ns();
    match client.check_stat(leadership.epoch_path()).await {
        Ok(Some(stat)) if stat.version == leadership.epoch() => Some(sent),
        Ok(_) => {
            // Someone else bumped the epoch: we are deposed, whatever the session says.
            leadership.lost().cancel();
            None
        }
        Err(_) => None,
    }
}

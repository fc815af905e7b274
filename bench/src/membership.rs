//! A large fleet on one queue, ZooKeeper's cluster membership at scale: how soon the partitions
//! are balanced after the last worker joins, how soon a crashed tenth of the fleet is replaced,
//! and what the idle fleet costs ZooKeeper (requests per second per worker, watches).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use zkq::zookeeper_client as zk;
use zkq_testkit::server::four_letter_number;

use crate::fleet::{Fleet, FleetConfig};
use crate::workloads::{Workloads, ROOT};

/// The queue of this workload.
const QUEUE: &str = "bench-fleet";
/// How often ownership and registrations are read while waiting for them to settle.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for a fleet to join or to balance.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// What the large-fleet workload measured.
#[derive(Debug)]
pub struct Membership {
    pub workers: usize,
    pub partitions: u32,
    pub session_timeout: Duration,
    /// From starting the processes to the last registration.
    pub join: Duration,
    /// From the last registration to a balanced ownership that includes every worker.
    pub balance: Duration,
    /// ZooKeeper requests per second per worker while the fleet is idle, and over how long.
    pub idle_requests_per_worker_s: Option<f64>,
    pub idle_window: Duration,
    /// Watches on the servers while the fleet is idle (`wchs`), and the paths they are on.
    pub watches: Option<u64>,
    pub watched_paths: Option<u64>,
    /// Workers killed at once (the scheduler leader among them, if it was found), and the time
    /// from the kill to a balanced ownership among the survivors.
    pub killed: usize,
    pub leader_killed: bool,
    pub reown: Duration,
}

impl Workloads<'_> {
    /// Starts `workers` worker processes with `session_timeout` on a queue of
    /// `partitions`, and measures joins, balance, the idle cost, and the loss of a tenth of the
    /// fleet, the scheduler leader included (killed with SIGKILL, so their sessions expire).
    pub async fn membership(
        &self,
        workers: usize,
        partitions: u32,
        session_timeout: Duration,
        idle_window: Duration,
    ) -> Result<Membership, String> {
        self.create_queue_with(QUEUE, partitions).await?;
        let started = Instant::now();
        self.progress.phase("fleet joins");
        let mut fleet = Fleet::start(
            &FleetConfig {
                zk: self.zk.address.clone(),
                root: ROOT.to_string(),
                queue: QUEUE.to_string(),
                workers,
                concurrency: 4,
                auth: self.args.credentials.clone(),
                metrics: false,
                session_timeout,
            },
            self.progress,
        )?;
        let client = self.producer.client();
        let ids = wait_for_ids(&fleet, workers).await?;
        let joined_at = self.wait_registered(&ids).await?;
        let join = joined_at - started;
        println!(
            "fleet: {workers} workers registered {:.1}s after their processes started",
            join.as_secs_f64()
        );

        self.progress.phase("fleet balance");
        let live: HashSet<String> = ids.iter().cloned().collect();
        let balance = self.wait_balanced(&live, partitions).await? - joined_at;
        println!(
            "fleet: {partitions} partitions balanced over {workers} workers {:.2}s after the last join",
            balance.as_secs_f64()
        );

        self.progress.phase("fleet idle");
        // Let the last rebalance's followers settle before counting.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let servers = servers(&self.zk.address);
        let before = packets_received(&servers);
        tokio::time::sleep(idle_window).await;
        let after = packets_received(&servers);
        let idle_requests_per_worker_s = before
            .zip(after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / idle_window.as_secs_f64() / workers as f64);
        let (watches, watched_paths) = watches(&servers).unzip();
        match idle_requests_per_worker_s {
            Some(r) => println!(
                "fleet: idle, {r:.2} requests/s per worker over {:.0}s; {} watches on {} paths",
                idle_window.as_secs_f64(),
                watches.unwrap_or(0),
                watched_paths.unwrap_or(0)
            ),
            None => println!("fleet: the servers do not answer four-letter words; idle load not measured"),
        }

        self.progress.phase("fleet loss");
        // A tenth of the fleet, the scheduler leader first: the worst case, where a new leader
        // must be elected before anything is re-owned.
        let leader = leader(client).await;
        let leader_index = leader.as_ref().and_then(|l| ids.iter().position(|id| id == l));
        let victims: Vec<usize> = leader_index
            .into_iter()
            .chain((0..workers).step_by(10).filter(|i| Some(*i) != leader_index))
            .take(workers.div_ceil(10))
            .collect();
        let dead: HashSet<String> = victims.iter().map(|&i| ids[i].clone()).collect();
        let leader_killed = leader_index.is_some();
        let killed_at = Instant::now();
        fleet.kill(&victims)?;
        let survivors: HashSet<String> = live.difference(&dead).cloned().collect();
        let reown = self.wait_balanced(&survivors, partitions).await? - killed_at;
        println!(
            "fleet: {} of {workers} workers killed{}; their partitions re-owned and balanced after \
             {:.2}s (session timeout {:.0}s)",
            victims.len(),
            if leader_killed {
                ", the scheduler leader among them"
            } else {
                ""
            },
            reown.as_secs_f64(),
            session_timeout.as_secs_f64()
        );
        fleet.stop().await?;
        Ok(Membership {
            workers,
            partitions,
            session_timeout,
            join,
            balance,
            idle_requests_per_worker_s,
            idle_window,
            watches,
            watched_paths,
            killed: victims.len(),
            leader_killed,
            reown,
        })
    }

    /// Waits until every one of `ids` is registered; returns when that was first seen.
    async fn wait_registered(&self, ids: &[String]) -> Result<Instant, String> {
        let path = self.producer.layout().workers();
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let registered: HashSet<String> = match self.producer.client().get_children(&path).await {
                Ok((children, _)) => children.into_iter().collect(),
                Err(zk::Error::NoNode) => HashSet::new(),
                Err(e) => return Err(format!("list {path}: {e}")),
            };
            let missing = ids.iter().filter(|id| !registered.contains(*id)).count();
            if missing == 0 {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!("{missing} workers not registered after {SETTLE_LIMIT:?}"));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the queue's partitions are owned by exactly the `live` workers, one owner
    /// each, no worker with more than one partition above another; returns when that was first
    /// seen.
    async fn wait_balanced(&self, live: &HashSet<String>, partitions: u32) -> Result<Instant, String> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let owners = self.admin.owners(QUEUE).await.map_err(|e| e.to_string())?;
            if balanced(&owners, live, partitions) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the partitions of {QUEUE} were not balanced over {} workers after {SETTLE_LIMIT:?}",
                    live.len()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Whether `owners` gives each of `partitions` one owner from `live`, and every live worker
/// `partitions / live` partitions, or one more.
fn balanced(owners: &[Vec<String>], live: &HashSet<String>, partitions: u32) -> bool {
    if owners.len() != partitions as usize || live.is_empty() {
        return false;
    }
    let mut counts: HashMap<&str, usize> = live.iter().map(|w| (w.as_str(), 0)).collect();
    for owner in owners {
        let [only] = owner.as_slice() else {
            return false;
        };
        match counts.get_mut(only.as_str()) {
            Some(c) => *c += 1,
            None => return false,
        }
    }
    let low = partitions as usize / live.len();
    let high = (partitions as usize).div_ceil(live.len());
    counts.values().all(|c| (low..=high).contains(c))
}

/// Waits until each of the fleet's `workers` said its id.
async fn wait_for_ids(fleet: &Fleet, workers: usize) -> Result<Vec<String>, String> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let ids: Vec<String> = fleet.ids().into_iter().flatten().collect();
        if ids.len() == workers {
            return Ok(ids);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {workers} worker processes started after {SETTLE_LIMIT:?}",
                ids.len()
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The scheduler leader's name (its worker id), if one leads.
async fn leader(client: &zk::Client) -> Option<String> {
    let (data, _) = client.get_data(&format!("{ROOT}/scheduler/epoch")).await.ok()?;
    Some(String::from_utf8_lossy(&data).into_owned()).filter(|n| !n.is_empty())
}

/// The `host:port` of each server in a connect string (a chroot suffix dropped).
fn servers(connect: &str) -> Vec<String> {
    let hosts = connect.split('/').next().unwrap_or_default();
    hosts
        .split(',')
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect()
}

/// Requests received by all `servers` since they started (`mntr`'s `zk_packets_received`,
/// pings included), or `None` if one does not say.
fn packets_received(servers: &[String]) -> Option<u64> {
    servers
        .iter()
        .map(|s| {
            let reply = zkq_testkit::server::four_letter_at(s, "mntr").ok()?;
            four_letter_number(&reply, "zk_packets_received")
        })
        .sum()
}

/// Watches and watched paths on all `servers` (`wchs`), or `None` if one does not say.
fn watches(servers: &[String]) -> Option<(u64, u64)> {
    servers
        .iter()
        .map(|s| {
            let reply = zkq_testkit::server::four_letter_at(s, "wchs").ok()?;
            // "<n> connections watching <m> paths\nTotal watches:<w>"
            let paths: u64 = reply.split_whitespace().nth(3)?.parse().ok()?;
            Some((four_letter_number(&reply, "Total watches")?, paths))
        })
        .try_fold((0, 0), |(w, p), one| one.map(|(w1, p1)| (w + w1, p + p1)))
}

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
    /// From the balance until the fleet went quiet, and the requests per worker from the first
    /// process start until then (joining: first listings, watches, the assignment followed).
    pub settle: Option<Duration>,
    pub join_requests_per_worker: Option<f64>,
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
        let servers = servers(&self.zk.address);
        let at_start = packets_received(&servers);
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

        self.progress.phase("fleet settles");
        // A fresh queue has no assignment until the leader writes one: its workers scan every
        // partition meanwhile, then let go of those others own. That burst is the joining cost,
        // reported apart; the idle window starts once it is over.
        let settled_at = wait_quiet(&servers, workers).await;
        let settle = settled_at.map(|(at, _)| at.saturating_duration_since(joined_at + balance));
        let join_requests_per_worker = at_start
            .zip(settled_at)
            .map(|(start, (_, now))| now.saturating_sub(start) as f64 / workers as f64);
        if let (Some(settle), Some(cost)) = (settle, join_requests_per_worker) {
            println!(
                "fleet: quiet (under {QUIET_PER_WORKER_S} requests/s per worker) {:.1}s after the balance; \
                 joining cost {cost:.0} requests per worker",
                settle.as_secs_f64()
            );
        }

        self.progress.phase("fleet idle");
        let before = packets_received(&servers);
        let sessions_before = session_packets(&servers);
        tokio::time::sleep(idle_window).await;
        let after = packets_received(&servers);
        let sessions_after = session_packets(&servers);
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
        if let (Some(before), Some(after)) = (sessions_before, sessions_after) {
            println!(
                "fleet: idle requests/s per session (cons), by rate and last operation: {}",
                session_rates(&before, &after, idle_window)
            );
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
            settle,
            join_requests_per_worker,
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

/// The request rate per worker under which the fleet counts as quiet after joining.
const QUIET_PER_WORKER_S: f64 = 2.0;

/// Longest wait for the fleet to go quiet.
const MAX_SETTLE: Duration = Duration::from_secs(60);

/// Waits until `workers` send the servers under [`QUIET_PER_WORKER_S`] over a 2 s sample, or
/// [`MAX_SETTLE`]: when, and the servers' request count then. `None` if the servers do not
/// answer four-letter words.
async fn wait_quiet(servers: &[String], workers: usize) -> Option<(Instant, u64)> {
    const SAMPLE: Duration = Duration::from_secs(2);
    let deadline = Instant::now() + MAX_SETTLE;
    let mut last = packets_received(servers)?;
    loop {
        tokio::time::sleep(SAMPLE).await;
        let now = packets_received(servers)?;
        let rate = now.saturating_sub(last) as f64 / SAMPLE.as_secs_f64() / workers as f64;
        if rate < QUIET_PER_WORKER_S || Instant::now() >= deadline {
            return Some((Instant::now(), now));
        }
        last = now;
    }
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

/// What one session sent a server so far, from a line of `cons`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SessionPackets {
    received: u64,
    /// Its last operation (`PING`, `EXIS`, ...).
    last_op: String,
}

/// Requests received from each session, by session id, on all `servers` (`cons`); `None` if
/// one does not say.
fn session_packets(servers: &[String]) -> Option<HashMap<String, SessionPackets>> {
    let mut sessions = HashMap::new();
    for s in servers {
        let reply = zkq_testkit::server::four_letter_at(s, "cons").ok()?;
        sessions.extend(reply.lines().filter_map(parse_cons_line));
    }
    Some(sessions)
}

/// ` /127.0.0.1:40412[1](queued=0,recved=12,sent=12,sid=0x100..,lop=PING,...)`: the session id
/// and what it sent. Connections without a session yet have no `sid`.
fn parse_cons_line(line: &str) -> Option<(String, SessionPackets)> {
    let fields = line.split_once('(')?.1.trim_end().trim_end_matches(')');
    let field = |key: &str| {
        fields
            .split(',')
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    Some((
        field("sid")?,
        SessionPackets {
            received: field("recved")?.parse().ok()?,
            last_op: field("lop").unwrap_or_default(),
        },
    ))
}

/// The sessions seen both times, grouped by their request rate (to 0.05/s) and last operation,
/// largest groups first: "100 x 0.75/s (EXIS), 100 x 0.45/s (PING), ...".
fn session_rates(
    before: &HashMap<String, SessionPackets>,
    after: &HashMap<String, SessionPackets>,
    window: Duration,
) -> String {
    let mut groups: HashMap<(u64, String), usize> = HashMap::new();
    for (sid, now) in after {
        let Some(then) = before.get(sid) else { continue };
        let rate = now.received.saturating_sub(then.received) as f64 / window.as_secs_f64();
        let bucket = (rate * 20.0).round() as u64;
        *groups.entry((bucket, now.last_op.clone())).or_default() += 1;
    }
    let mut groups: Vec<_> = groups.into_iter().collect();
    groups.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let shown: Vec<String> = groups
        .iter()
        .take(6)
        .map(|((bucket, op), n)| format!("{n} x {:.2}/s ({op})", *bucket as f64 / 20.0))
        .collect();
    let rest: usize = groups.iter().skip(6).map(|(_, n)| n).sum();
    match rest {
        0 => shown.join(", "),
        _ => format!("{}, {rest} others", shown.join(", ")),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cons_line_gives_its_session_and_requests() {
        let line = " /127.0.0.1:52538[1](queued=0,recved=57,sent=57,sid=0x10000b5e5c40000,lop=PING,\
                    est=1764620000000,to=10000,lcxid=0x2,lzxid=0x5,lresp=1764620001000,llat=0,minlat=0,\
                    avglat=0,maxlat=1)";
        let (sid, packets) = parse_cons_line(line).unwrap();
        assert_eq!(sid, "0x10000b5e5c40000");
        assert_eq!(packets.received, 57);
        assert_eq!(packets.last_op, "PING");
        // The four-letter word's own connection has no session.
        assert_eq!(
            parse_cons_line(" /127.0.0.1:52540[0](queued=0,recved=1,sent=0)"),
            None
        );
    }

    #[test]
    fn sessions_are_grouped_by_rate_and_last_operation() {
        let at = |received, op: &str| SessionPackets {
            received,
            last_op: op.to_string(),
        };
        let before = HashMap::from([
            ("a".to_string(), at(0, "EXIS")),
            ("b".to_string(), at(10, "EXIS")),
            ("c".to_string(), at(0, "PING")),
        ]);
        let after = HashMap::from([
            ("a".to_string(), at(15, "EXIS")),
            ("b".to_string(), at(25, "EXIS")),
            ("c".to_string(), at(9, "PING")),
            ("new".to_string(), at(3, "PING")),
        ]);
        let shown = session_rates(&before, &after, Duration::from_secs(20));
        assert_eq!(shown, "2 x 0.75/s (EXIS), 1 x 0.45/s (PING)");
    }
}

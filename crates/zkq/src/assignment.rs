//! Partition assignment: which worker scans which partitions of a queue.
//!
//! The elected scheduler writes one record per queue at `<root>/scheduler/assignment/<queue>`,
//! fenced by its epoch. It watches the worker registrations (`<root>/workers`) and, after a
//! quiet period ([`crate::scheduler::SchedulerConfig::rebalance_delay`], so that a burst of
//! joins and leaves costs one rebalance), gives every partition to one live worker that takes
//! jobs from the queue, for each group of workers that handle the same job kinds (a worker
//! leaves jobs of other kinds alone, so every kind needs an owner of its own in every
//! partition; usually there is one group):
//!
//! - **balanced**: worker loads differ by at most one partition;
//! - **sticky**: a partition stays with its owner unless that owner left or holds more than
//!   its share, so a join or leave moves only the partitions it has to.
//!
//! Workers follow their queue's record ([`follow`]): they scan only the partitions they own.
//! A partition handed over mid-flight is safe: correctness comes from the per-job claim (a
//! versioned `multi`), ownership only keeps workers out of each other's way. So a revoked
//! partition's running jobs simply finish. A worker waits for a new queue's first record before
//! it scans any of it, and scans every partition of a queue whose record does not come, or
//! while no scheduler candidate is alive to keep the record current ([`decide`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::queue;
use crate::recipes::election::Leadership;
use crate::registry::WorkerInfo;
use crate::scheduler::service::{Next, Passes};
use crate::store::codec::{self, Record};
use crate::store::layout::Layout;
use crate::store::session;
use crate::store::txn::{NodeKind, Op};
use crate::store::znode;

/// The owners of one queue's partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub v: u8,
    /// The epoch of the scheduler that wrote it.
    pub epoch: i32,
    /// Owners of each partition (index = partition): one per group of workers that handle the
    /// same job kinds, none while no worker can take it.
    pub owners: Vec<Vec<String>>,
}

impl Record for Assignment {
    const WHAT: &'static str = "partition assignment";
    const VERSION: u8 = 2;
    fn version(&self) -> u8 {
        self.v
    }
}

impl Assignment {
    /// The partitions `worker` owns.
    pub fn owned_by(&self, worker: &str) -> Vec<u32> {
        (0..self.owners.len() as u32)
            .filter(|p| self.owners[*p as usize].iter().any(|o| o == worker))
            .collect()
    }
}

/// The current assignment of `queue`, if the scheduler has written one.
pub async fn read(client: &zk::Client, layout: &Layout, queue: &str) -> Result<Option<Assignment>> {
    let path = layout.assignment(queue);
    match client.get_data(&path).await {
        Ok((data, _)) => codec::decode(&path, &data).map(Some),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("read assignment", path, e)),
    }
}

/// A balanced, sticky assignment of `partitions` to `workers`, starting from `current`.
///
/// Each worker's share is `partitions / workers`, and the remainder goes to the workers that
/// already hold the most (so fewer partitions move). A worker keeps its current partitions up
/// to its share; the rest are given out, lowest partition first, to the workers below their
/// share, in id order.
pub fn balance(partitions: u32, current: &[Option<String>], workers: &[String]) -> Vec<Option<String>> {
    let mut owners = vec![None; partitions as usize];
    if workers.is_empty() {
        return owners;
    }
    let mut held: BTreeMap<&str, Vec<usize>> = workers.iter().map(|w| (w.as_str(), Vec::new())).collect();
    for (p, owner) in current.iter().enumerate().take(partitions as usize) {
        if let Some(list) = owner.as_deref().and_then(|o| held.get_mut(o)) {
            list.push(p);
        }
    }
    let mut order: Vec<&str> = held.keys().copied().collect();
    order.sort_by_key(|w| std::cmp::Reverse(held[w].len()));
    let base = partitions as usize / workers.len();
    let extra = partitions as usize % workers.len();
    let share: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, w)| (*w, base + usize::from(i < extra)))
        .collect();
    let mut load: HashMap<&str, usize> = HashMap::new();
    for (w, list) in &held {
        for p in list.iter().take(share[w]) {
            owners[*p] = Some(w.to_string());
        }
        load.insert(w, list.len().min(share[w]));
    }
    let free: Vec<usize> = (0..partitions as usize)
        .filter(|p| owners[*p].is_none())
        .collect();
    let mut free = free.into_iter();
    for w in held.keys() {
        while load[w] < share[w] {
            let Some(p) = free.next() else { break };
            owners[p] = Some(w.to_string());
            *load.get_mut(w).expect("every worker has a load") += 1;
        }
    }
    owners
}

/// The owners of `partitions` for the `groups` of workers that handle the same kinds: each
/// group gets every partition, [`balance`]d among its workers from what they own in `current`.
/// Workers that handle different kinds must each see every job of theirs, so they cannot
/// split the partitions between them; workers that handle the same kinds can.
pub fn assign(partitions: u32, current: &[Vec<String>], groups: &[Vec<String>]) -> Vec<Vec<String>> {
    let mut owners = vec![Vec::new(); partitions as usize];
    for group in groups {
        let mine: Vec<Option<String>> = (0..partitions as usize)
            .map(|p| {
                current
                    .get(p)
                    .and_then(|os| os.iter().find(|o| group.contains(o)))
                    .cloned()
            })
            .collect();
        for (p, owner) in balance(partitions, &mine, group).into_iter().enumerate() {
            owners[p].extend(owner);
        }
    }
    owners
}

/// Groups the workers of `queue` by the kinds they handle: ids sorted, groups in kinds order.
fn kind_groups(workers: &[WorkerInfo], queue: &str) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<&[String], Vec<String>> = BTreeMap::new();
    for w in workers.iter().filter(|w| w.queues.iter().any(|q| q == queue)) {
        groups.entry(&w.kinds).or_default().push(w.id.clone());
    }
    groups
        .into_values()
        .map(|mut ids| {
            ids.sort();
            ids
        })
        .collect()
}

/// The leader's assignment service: rebalances every queue whenever membership changes (after
/// `delay` of quiet) and whenever a queue is created. Returns on
/// [`Error::Fenced`] or when `stop` is cancelled.
pub(crate) async fn serve(
    client: &zk::Client,
    layout: &Layout,
    leadership: &Leadership,
    delay: Duration,
    stop: &CancellationToken,
) -> Result<()> {
    for dir in [layout.assignments(), layout.workers(), layout.queues()] {
        znode::ensure_path(client, layout.acl(), &dir).await?;
    }
    let mut unreadable = queue::Unreadable::default();
    let retry = Duration::from_secs(1) + delay;
    let mut passes = Passes::new(stop, "rebalancing partitions failed", retry);
    while passes.ready().await {
        let result = rebalance(client, layout, leadership, &mut unreadable).await;
        passes.ended(result.map(|(workers, queues)| {
            Next::When(Box::pin(async move {
                tokio::select! {
                    _ = workers.changed() => {}
                    _ = queues.changed() => {}
                }
                // Let a burst of joins and leaves settle into one rebalance.
                tokio::time::sleep(delay).await;
            }))
        }))?;
    }
    Ok(())
}

/// Reads membership and the queues (arming a watch on each) and rewrites every queue's
/// assignment that changed. Returns the watches: (workers, queues).
async fn rebalance(
    client: &zk::Client,
    layout: &Layout,
    leadership: &Leadership,
    unreadable: &mut queue::Unreadable,
) -> Result<(zk::OneshotWatcher, zk::OneshotWatcher)> {
    let dir = layout.workers();
    let (ids, _, watcher) = client
        .get_and_watch_children(&dir)
        .await
        .map_err(|e| Error::zk("watch workers", &dir, e))?;
    let infos = futures::future::join_all(ids.iter().map(|id| {
        let path = layout.worker(id);
        async move {
            match client.get_data(&path).await {
                Ok((data, _)) => codec::decode::<WorkerInfo>(&path, &data).ok(),
                Err(_) => None,
            }
        }
    }))
    .await;
    let workers: Vec<WorkerInfo> = infos.into_iter().flatten().collect();
    let queues_dir = layout.queues();
    let (mut queues, _, queues_watcher) = client
        .get_and_watch_children(&queues_dir)
        .await
        .map_err(|e| Error::zk("watch queues", &queues_dir, e))?;
    queues.sort();
    for q in queues {
        let Some(config) = unreadable.load(client, layout, &q).await? else {
            continue;
        };
        let groups = kind_groups(&workers, &q);
        let path = layout.assignment(&q);
        let current = match client.get_data(&path).await {
            Ok((data, stat)) => Some((codec::decode::<Assignment>(&path, &data).ok(), stat.version)),
            Err(zk::Error::NoNode) => None,
            Err(e) => return Err(Error::zk("read assignment", path, e)),
        };
        let old = current
            .as_ref()
            .and_then(|(a, _)| a.as_ref())
            .map(|a| a.owners.clone())
            .unwrap_or_default();
        let owners = assign(config.partitions, &old, &groups);
        if owners == old {
            continue;
        }
        let record = Assignment {
            v: Assignment::VERSION,
            epoch: leadership.epoch(),
            owners,
        };
        let data = codec::encode(&record)?;
        let write = match current {
            Some((_, version)) => Op::SetData {
                path: path.clone(),
                data,
                version: Some(version),
            },
            None => Op::Create {
                path: path.clone(),
                data,
                kind: NodeKind::Persistent,
            },
        };
        match leadership.commit_fenced("assign partitions", vec![write]).await {
            Ok(()) => {
                let moved = record
                    .owners
                    .iter()
                    .enumerate()
                    .filter(|(p, o)| old.get(*p) != Some(*o))
                    .count();
                let workers: usize = groups.iter().map(Vec::len).sum();
                metrics::counter!(crate::telemetry::PARTITIONS_MOVED, "queue" => q.clone())
                    .increment(moved as u64);
                info!(queue = %q, workers, groups = groups.len(), moved, epoch = record.epoch, "partitions assigned");
            }
            // Written meanwhile (by our own earlier, slower write): the next pass sees it.
            Err(Error::Zk {
                source: zk::Error::BadVersion | zk::Error::NodeExists,
                ..
            }) => debug!(queue = %q, "assignment changed under us; will look again"),
            Err(e) => return Err(e),
        }
    }
    Ok((watcher, queues_watcher))
}

/// Which partitions of one queue a worker scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Share {
    /// None for now: the scheduler's first record for the queue is awaited (see [`follow`]).
    Awaited,
    /// Every partition: nobody keeps a record for the queue current.
    Every,
    /// The partitions the queue's record gives this worker.
    Owned(Vec<u32>),
}

/// Each queue's [`Share`]. A queue missing from it is [`Share::Awaited`]: its record has not
/// been read yet.
pub(crate) type Owned = HashMap<String, Share>;

/// How long a worker goes without what it needs from the scheduler before it scans every
/// partition of a queue: a new queue's first record, or, for a worker that stands for election
/// itself, a candidate (its own shows up within a round trip of its start, unless its campaign
/// keeps failing). The leader writes a new queue's record within its `rebalance_delay` (1 s by
/// default) of the queue or the workers showing up, or of its own election; with a longer
/// delay, a new queue's workers scan every partition until it comes.
pub(crate) const FIRST_RECORD_WAIT: Duration = Duration::from_secs(5);

/// Keeps `owned` current for `worker`: follows each queue's assignment record ([`decide`]).
/// Runs until the session ends.
pub(crate) async fn follow(
    client: zk::Client,
    layout: Layout,
    worker: String,
    queues: Vec<String>,
    stands: bool,
    wait: Duration,
    owned: watch::Sender<Owned>,
) {
    let (leaderless_tx, leaderless) = watch::channel(None);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(watch_candidates(client.clone(), layout.clone(), leaderless_tx));
    for q in queues {
        let follower = Follower {
            client: client.clone(),
            layout: layout.clone(),
            worker: worker.clone(),
            queue: q,
            stands,
            wait,
            owned: owned.clone(),
        };
        let leaderless = leaderless.clone();
        tasks.spawn(async move { follower.run(leaderless).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// What a worker scans of one queue, and when that answer would change by itself (a deadline
/// passing), from what it read of the queue's record (`read`: [`Share::Awaited`] while it has
/// none, since `missing_since`) and since when the election has had no candidate at all.
///
/// - A queue with a record: the partitions it gives this worker.
/// - A queue without one (a new queue, or a record not read yet): none for up to `wait`, while
///   the scheduler writes it; then every partition. A fleet joining a new queue would
///   otherwise have every worker list and read every partition before the first record
///   reached it, each job's name listed once per worker.
/// - No candidate at all: every partition, record or not, so a fleet without a scheduler still
///   drains. A worker that `stands` for election itself gives its own candidacy `wait` to show
///   up first: it starts with none.
pub(crate) fn decide(
    read: &Share,
    missing_since: Option<Instant>,
    leaderless_since: Option<Instant>,
    stands: bool,
    wait: Duration,
    now: Instant,
) -> (Share, Option<Instant>) {
    let mut changes = None;
    if let Some(since) = leaderless_since {
        if !stands || since + wait <= now {
            return (Share::Every, None);
        }
        changes = Some(since + wait);
    }
    if *read == Share::Awaited {
        let due = missing_since.unwrap_or(now) + wait;
        if due <= now {
            return (Share::Every, None);
        }
        changes = Some(changes.map_or(due, |c: Instant| c.min(due)));
    }
    (read.clone(), changes)
}

/// Follows one queue's record for [`follow`].
struct Follower {
    client: zk::Client,
    layout: Layout,
    worker: String,
    queue: String,
    stands: bool,
    wait: Duration,
    owned: watch::Sender<Owned>,
}

impl Follower {
    async fn run(&self, mut leaderless: watch::Receiver<Option<Instant>>) {
        let path = self.layout.assignment(&self.queue);
        // Since when this worker has had no record to follow: from the start.
        let mut missing_since = Some(Instant::now());
        // Whether there is a candidate at all is known first (within the wait, whatever
        // happens), so that the first share published, and logged, is the right one.
        let _ = tokio::time::timeout(self.wait, leaderless.changed()).await;
        loop {
            let (read, watcher) = match self.client.get_and_watch_data(&path).await {
                Ok((data, _, watcher)) => match codec::decode::<Assignment>(&path, &data) {
                    Ok(a) => (Share::Owned(a.owned_by(&self.worker)), watcher),
                    Err(e) => {
                        warn!(error = %e, "unreadable assignment; scanning every partition");
                        (Share::Every, watcher)
                    }
                },
                Err(zk::Error::NoNode) => match self.client.check_and_watch_stat(&path).await {
                    Ok((None, watcher)) => (Share::Awaited, watcher),
                    // Created in between: read it.
                    Ok((Some(_), _)) => continue,
                    Err(e) if session::is_final(&e) => return,
                    Err(_) => {
                        self.unread(missing_since, &mut leaderless).await;
                        continue;
                    }
                },
                Err(e) if session::is_final(&e) => return,
                Err(_) => {
                    self.unread(missing_since, &mut leaderless).await;
                    continue;
                }
            };
            if read == Share::Awaited {
                missing_since.get_or_insert_with(Instant::now);
            } else {
                missing_since = None;
            }
            let fired = watcher.changed();
            tokio::pin!(fired);
            loop {
                let since = *leaderless.borrow_and_update();
                let changes = self.decide_and_publish(&read, missing_since, since);
                let deadline = async {
                    match changes {
                        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = &mut fired => break,
                    changed = leaderless.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = deadline => {}
                }
            }
        }
    }

    /// The record could not be read: a worker that has not read one yet publishes what it has
    /// (nothing, then every partition once its wait is over), and tries again in a second.
    async fn unread(
        &self,
        missing_since: Option<Instant>,
        leaderless: &mut watch::Receiver<Option<Instant>>,
    ) {
        if missing_since.is_some() {
            let since = *leaderless.borrow();
            self.decide_and_publish(&Share::Awaited, missing_since, since);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    /// Publishes what this worker scans now ([`decide`]); returns when that changes by itself.
    fn decide_and_publish(
        &self,
        read: &Share,
        missing_since: Option<Instant>,
        leaderless_since: Option<Instant>,
    ) -> Option<Instant> {
        let (share, changes) = decide(
            read,
            missing_since,
            leaderless_since,
            self.stands,
            self.wait,
            Instant::now(),
        );
        self.publish(share, read, leaderless_since.is_some());
        changes
    }

    /// Publishes `share`, decided from `read` with or without a scheduler candidate; a change
    /// is logged with its reason, so that an operator can tell a worker waiting for the
    /// scheduler from one scanning every partition, and why.
    fn publish(&self, share: Share, read: &Share, leaderless: bool) {
        let queue = &self.queue;
        self.owned.send_if_modified(|map| {
            if map.get(queue) == Some(&share) {
                return false;
            }
            match &share {
                Share::Awaited => info!(%queue, "waiting for the scheduler's first partition assignment"),
                Share::Owned(partitions) => {
                    info!(%queue, owned = partitions.len(), ?partitions, "scanning the partitions assigned to this worker");
                }
                Share::Every if leaderless => info!(%queue, "no scheduler candidate: scanning every partition"),
                Share::Every if *read == Share::Awaited => {
                    warn!(%queue, waited = ?self.wait, "no partition assignment from the scheduler yet: scanning every partition");
                }
                // An unreadable record, warned about when read.
                Share::Every => {}
            }
            map.insert(queue.clone(), share);
            true
        });
    }
}

/// Publishes since when the scheduler election has had no candidate at all (nobody to keep the
/// assignments current), or `None` while it has one.
async fn watch_candidates(client: zk::Client, layout: Layout, leaderless: watch::Sender<Option<Instant>>) {
    let dir = format!("{}/candidates", layout.scheduler());
    // The first answer is always sent, changed or not: the followers wait for it.
    let mut first = true;
    let mut set = |none: bool| {
        leaderless.send_if_modified(|since| {
            let changed = match (none, since.is_some()) {
                (true, false) => {
                    *since = Some(Instant::now());
                    true
                }
                (false, true) => {
                    *since = None;
                    true
                }
                _ => false,
            };
            std::mem::take(&mut first) || changed
        });
    };
    loop {
        match client.get_and_watch_children(&dir).await {
            Ok((names, _, watcher)) => {
                set(names.is_empty());
                watcher.changed().await;
            }
            Err(zk::Error::NoNode) => {
                set(true);
                match client.check_and_watch_stat(&dir).await {
                    Ok((None, watcher)) => {
                        watcher.changed().await;
                    }
                    Ok((Some(_), _)) => {}
                    Err(e) if session::is_final(&e) => return,
                    Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
                }
            }
            Err(e) if session::is_final(&e) => return,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn loads(owners: &[Option<String>]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for o in owners.iter().flatten() {
            *m.entry(o.clone()).or_default() += 1;
        }
        m
    }

    fn moved(a: &[Option<String>], b: &[Option<String>]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn every_partition_gets_an_owner_and_loads_differ_by_at_most_one() {
        for workers in 1..=7 {
            let w: Vec<String> = (0..workers).map(|i| format!("w{i}")).collect();
            let owners = balance(16, &[], &w);
            assert!(owners.iter().all(Option::is_some));
            let l = loads(&owners);
            assert_eq!(l.len(), workers.min(16));
            let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
            assert!(max - min <= 1, "{workers} workers: {l:?}");
        }
    }

    #[test]
    fn every_group_of_kinds_owns_every_partition_and_keeps_what_it_had() {
        let groups = vec![ids(&["a1", "a2"]), ids(&["b1"])];
        let owners = assign(4, &[], &groups);
        for o in &owners {
            assert_eq!(o.len(), 2, "{owners:?}");
            assert!(o.iter().any(|w| w.starts_with('a')) && o.contains(&"b1".to_string()));
        }
        // b1 leaves and b2 joins: the a-group keeps every partition it had.
        let later = assign(4, &owners, &[ids(&["a1", "a2"]), ids(&["b2"])]);
        for (before, after) in owners.iter().zip(&later) {
            assert_eq!(before[0], after[0]);
            assert_eq!(after[1], "b2");
        }
    }

    #[test]
    fn no_workers_means_no_owners() {
        assert_eq!(balance(4, &vec![Some("gone".to_string()); 4], &[]), vec![None; 4]);
    }

    #[test]
    fn a_join_moves_only_what_the_newcomer_takes() {
        let before = balance(16, &[], &ids(&["a", "b", "c", "d"]));
        let after = balance(16, &before, &ids(&["a", "b", "c", "d", "e"]));
        // e's share is 3 (16 = 4+3+3+3+3); nothing else moves.
        assert_eq!(loads(&after)["e"], 3);
        assert_eq!(moved(&before, &after), 3);
    }

    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let before = balance(16, &[], &ids(&["a", "b", "c", "d"]));
        let after = balance(16, &before, &ids(&["a", "b", "d"]));
        assert_eq!(moved(&before, &after), 4);
        assert!(after.iter().all(|o| o.as_deref() != Some("c")));
        let l = loads(&after);
        assert!(l.values().max().unwrap() - l.values().min().unwrap() <= 1);
    }

    #[test]
    fn unchanged_membership_changes_nothing() {
        let w = ids(&["a", "b", "c"]);
        let first = balance(8, &[], &w);
        assert_eq!(balance(8, &first, &w), first);
    }

    #[test]
    fn more_workers_than_partitions_leaves_some_idle() {
        let owners = balance(2, &[], &ids(&["a", "b", "c"]));
        assert!(owners.iter().all(Option::is_some));
        assert_eq!(loads(&owners).len(), 2);
    }
}

/// What a worker scans of a queue: [`decide`], and [`follow`] against a real ZooKeeper.
#[cfg(test)]
mod follow_tests {
    use super::*;
    use crate::store::session::ZkConfig;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_record_gives_its_share_and_no_record_gives_nothing_until_the_wait_is_over() {
        let t0 = Instant::now();
        let owned = Share::Owned(vec![1, 3]);
        assert_eq!(decide(&owned, None, None, true, WAIT, t0), (owned.clone(), None));
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(
            decide(&Share::Awaited, Some(t0), None, true, WAIT, at(4)),
            (Share::Awaited, Some(at(5)))
        );
        assert_eq!(
            decide(&Share::Awaited, Some(t0), None, false, WAIT, at(5)),
            (Share::Every, None)
        );
        // An unreadable record means every partition, at once.
        assert_eq!(
            decide(&Share::Every, None, None, true, WAIT, t0),
            (Share::Every, None)
        );
    }

    #[test]
    fn with_no_candidate_a_worker_that_stands_waits_for_its_own_and_others_scan_everything() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let owned = Share::Owned(vec![2]);
        assert_eq!(
            decide(&owned, None, Some(t0), false, WAIT, t0),
            (Share::Every, None)
        );
        assert_eq!(
            decide(&owned, None, Some(t0), true, WAIT, at(1)),
            (owned.clone(), Some(at(5)))
        );
        assert_eq!(
            decide(&owned, None, Some(t0), true, WAIT, at(5)),
            (Share::Every, None)
        );
        // Nothing yet, either way: the earlier deadline is when the answer changes.
        let (share, changes) = decide(&Share::Awaited, Some(at(2)), Some(t0), true, WAIT, at(3));
        assert_eq!((share, changes), (Share::Awaited, Some(at(5))));
        let (share, changes) = decide(&Share::Awaited, Some(t0), Some(at(2)), true, WAIT, at(3));
        assert_eq!((share, changes), (Share::Awaited, Some(at(5))));
    }

    async fn setup(name: &str) -> (zk::Client, Layout) {
        let server = zkq_testkit::shared();
        let client = ZkConfig::new(server.connect_string()).connect().await.unwrap();
        let layout = Layout::new(&format!("/follow-{name}-{}", uuid::Uuid::new_v4().simple())).unwrap();
        znode::ensure_path(&client, layout.acl(), &layout.assignments())
            .await
            .unwrap();
        (client, layout)
    }

    fn start(
        client: &zk::Client,
        layout: &Layout,
        stands: bool,
        wait: Duration,
    ) -> (watch::Receiver<Owned>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(Owned::new());
        let task = tokio::spawn(follow(
            client.clone(),
            layout.clone(),
            "w".to_string(),
            vec!["q".to_string()],
            stands,
            wait,
            tx,
        ));
        (rx, task)
    }

    /// The next share of queue `q` published that is not `not`.
    async fn share_other_than(owned: &mut watch::Receiver<Owned>, not: Option<&Share>) -> Share {
        let wait = owned.wait_for(|m| m.get("q").is_some_and(|s| Some(s) != not));
        let found = tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("a share is published");
        found.unwrap()["q"].clone()
    }

    /// Waits for the share that follows `after` and checks that it is `want`.
    async fn expect_next(owned: &mut watch::Receiver<Owned>, after: Option<Share>, want: Share) {
        assert_eq!(share_other_than(owned, after.as_ref()).await, want);
    }

    async fn write_record(client: &zk::Client, layout: &Layout, owners: &[&str]) {
        let record = Assignment {
            v: Assignment::VERSION,
            epoch: 1,
            owners: owners.iter().map(|o| vec![o.to_string()]).collect(),
        };
        let data = codec::encode(&record).unwrap();
        let path = layout.assignment("q");
        client
            .create(
                &path,
                &data,
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .unwrap();
    }

    async fn add_candidate(client: &zk::Client, layout: &Layout) {
        let candidates = format!("{}/candidates", layout.scheduler());
        znode::ensure_path(client, layout.acl(), &candidates)
            .await
            .unwrap();
        client
            .create(
                &format!("{candidates}/c-"),
                b"",
                &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all()),
            )
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_queue_is_given_nothing_until_its_first_record_then_the_share_it_gives() {
        let (client, layout) = setup("awaited").await;
        add_candidate(&client, &layout).await;
        let (mut owned, task) = start(&client, &layout, false, Duration::from_secs(60));
        expect_next(&mut owned, None, Share::Awaited).await;
        // Still nothing a while later: no record, no fallback.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(owned.borrow()["q"], Share::Awaited);
        write_record(&client, &layout, &["w", "x", "w"]).await;
        expect_next(&mut owned, Some(Share::Awaited), Share::Owned(vec![0, 2])).await;
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_queue_whose_first_record_is_late_is_given_every_partition_then_its_share() {
        let (client, layout) = setup("late").await;
        add_candidate(&client, &layout).await;
        let (mut owned, task) = start(&client, &layout, false, Duration::from_secs(3));
        expect_next(&mut owned, None, Share::Awaited).await;
        expect_next(&mut owned, Some(Share::Awaited), Share::Every).await;
        // A record that comes late is followed all the same.
        write_record(&client, &layout, &["x", "w"]).await;
        expect_next(&mut owned, Some(Share::Every), Share::Owned(vec![1])).await;
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_candidate_a_worker_that_does_not_stand_is_given_every_partition_at_once() {
        let (client, layout) = setup("leaderless").await;
        // No record either: every partition long before the wait is over.
        let (mut owned, task) = start(&client, &layout, false, Duration::from_secs(60));
        expect_next(&mut owned, Some(Share::Awaited), Share::Every).await;
        // A candidate shows up: the new queue waits for its record again, then follows it.
        add_candidate(&client, &layout).await;
        expect_next(&mut owned, Some(Share::Every), Share::Awaited).await;
        write_record(&client, &layout, &["w", "x"]).await;
        expect_next(&mut owned, Some(Share::Awaited), Share::Owned(vec![0])).await;
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_no_candidate_a_worker_that_stands_follows_the_record_until_the_wait_is_over() {
        let (client, layout) = setup("standing").await;
        write_record(&client, &layout, &["w", "x"]).await;
        // Its own candidacy never shows up (as when its campaign keeps failing).
        let (mut owned, task) = start(&client, &layout, true, Duration::from_secs(3));
        expect_next(&mut owned, None, Share::Owned(vec![0])).await;
        expect_next(&mut owned, Some(Share::Owned(vec![0])), Share::Every).await;
        task.abort();
    }
}

//! Finding ready jobs: scans lanes (highest priority first) across the partitions this worker
//! owns, skips claimed jobs, reads job data in batches, and cleans up drained segments.
//!
//! # Lane watches and the listing cache
//! Each lane this worker scans has a persistent recursive watch (ZooKeeper 3.6+), set up in the
//! same round trip as the lane's first listing and before it, so nothing created after the
//! listing goes unseen. A listing returns all the children of a segment in one reply; the
//! unclaimed jobs seen go into a per-lane cache that the following scans hand out.
//!
//! - A lane whose listing reached its last segment is **complete**: from then on each new job
//!   arrives as a watch event carrying its path, and goes straight into the cache. Nothing is
//!   listed to find it: a job costs one data read (batched) and one claim.
//! - A lane with more jobs than one listing takes in (a backlog) is listed again, from its
//!   oldest segment, whenever its cache runs dry; events for it are ignored meanwhile, since
//!   that next listing sees those jobs in order. So does a complete lane whose cache grew past
//!   [`MAX_CACHED`].
//!
//! Jobs that become ready again without being created (a claim released on shutdown, or gone
//! with a crashed worker's session) produce no lane event. A listing that skipped jobs because
//! another worker holds their claims arms a one-shot watch on the partition's claims (this
//! worker's own claims end through its own hands and need none); when it fires, the lane is
//! listed again. So is every lane after a reconnect (a persistent watch may miss events while
//! disconnected, and the client does not set persistent watches again on the new connection: the
//! fetcher drops them and sets new ones before those listings), after the worker slept a whole poll interval (a safety net), and every
//! [`TIDY_INTERVAL`], which also deletes drained segments.
//!
//! A cached job may have been taken meanwhile by another worker: reading it (gone) or claiming
//! it (the version moved, or the claim exists) tells, and it is skipped. Partition ownership
//! makes that rare. Jobs this worker already holds (handed out, claims in flight or running)
//! are never offered again, although a claim in flight is not in the claims directory yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::assignment::Owned;
use crate::claim::{self, Candidate, Held, Holding};
use crate::codec;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::layout::Layout;
use crate::line;
use crate::queue::QueueConfig;
use crate::znode;

/// A candidate with its data as read.
#[derive(Debug)]
pub(crate) enum Found {
    /// A decodable job at `version`.
    Job {
        candidate: Candidate,
        job: Job,
        version: i32,
    },
    /// A znode whose data is not a job zkq can read.
    Garbage {
        candidate: Candidate,
        data: Vec<u8>,
        version: i32,
        reason: String,
    },
}

/// One lane of one partition of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LaneId {
    queue: String,
    partition: u32,
    lane: u8,
}

/// What the fetcher knows about a lane between scans.
#[derive(Debug)]
struct LaneCache {
    /// Known, unclaimed when seen, not handed out yet; oldest first.
    ready: VecDeque<Candidate>,
    /// New jobs arrive by event: the last listing saw the whole lane, under a live watch.
    complete: bool,
    /// To be listed again once `ready` runs dry.
    stale: bool,
}

impl Default for LaneCache {
    fn default() -> Self {
        LaneCache {
            ready: VecDeque::new(),
            complete: false,
            stale: true,
        }
    }
}

/// Segments of one lane listed at once.
const SEGMENTS_AT_ONCE: usize = 4;

/// Most jobs a complete lane takes in by event before it goes back to listings: a worker that
/// falls behind a producer keeps a bounded cache.
const MAX_CACHED: usize = 4096;

/// How often every lane is listed again even though its watch is live: drained segments are
/// deleted by listings.
const TIDY_INTERVAL: Duration = Duration::from_secs(30);

/// What a listing of one lane found.
#[derive(Debug)]
struct Listed {
    lane: u8,
    /// Unclaimed jobs, oldest first.
    jobs: Vec<Candidate>,
    /// Whether the listing reached the lane's last segment.
    complete: bool,
    /// Whether some job was skipped because another worker holds its claim.
    foreign: bool,
}

/// One lane being listed.
struct Walk<'a> {
    queue: &'a str,
    partition: u32,
    lane: u8,
    lane_path: &'a str,
    /// The partition's claims.
    claims: &'a HashSet<String>,
}

/// What a lane watch reports.
#[derive(Debug)]
enum LaneEvent {
    /// A job znode was created in the lane.
    Created {
        lane: LaneId,
        segment: String,
        node: String,
    },
    /// The reader reconnected: events may have been missed, and the lane watches are gone from
    /// the server (zookeeper-client 0.11 sets only one-shot watches again on a new connection).
    /// Every lane is watched anew and listed again.
    Reconnected,
    /// A job whose lock key is held elsewhere, kept until the key is free ([`Parking`]).
    Park { key: String, candidate: Candidate },
    /// The holder of a lock key that parked jobs wait for has let go.
    KeyFree(String),
}

/// Hands jobs whose lock key is busy back to the fetcher.
///
/// Such a job is not claimed (so it holds no slot and uses no attempt) and is not offered again
/// until the key's current holder node is gone: the fetcher watches that one node per key, and
/// then puts the key's jobs back at the front of their lanes, in the order they were found.
/// Jobs of other keys, and jobs without a key, are offered as usual meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct Parking(mpsc::UnboundedSender<LaneEvent>);

impl Parking {
    pub(crate) fn park(&self, key: String, candidate: Candidate) {
        let _ = self.0.send(LaneEvent::Park { key, candidate });
    }
}

/// Jobs waiting for one lock key, and the watch on its holder.
struct Parked {
    jobs: Vec<Candidate>,
    _watch: AbortOnDrop,
}

/// A claims watch path and the partition whose lanes it wakes.
type Wakes = (String, (String, u32));

type WatchFuture = futures::future::BoxFuture<'static, String>;

/// Scans the worker's queues. Keeps listings and watches between scans.
pub(crate) struct Fetcher {
    /// A session of its own for listings, job data reads and watches. ZooKeeper answers a
    /// session's requests in order, so on the worker's session a scan would wait for every
    /// claim and ack commit (an fsync each) sent before it; here it waits for none.
    reader: zk::Client,
    layout: Layout,
    queues: Vec<(String, QueueConfig)>,
    cursor: usize,
    lanes: HashMap<LaneId, LaneCache>,
    /// Lane watches, each forwarding its events to `events`; aborted when dropped.
    watching: HashMap<LaneId, AbortOnDrop>,
    events: mpsc::UnboundedReceiver<LaneEvent>,
    events_tx: mpsc::UnboundedSender<LaneEvent>,
    /// Armed claims watches: path -> the (queue, partition) whose lanes it wakes.
    armed: HashMap<String, (String, u32)>,
    /// Whether a scan that found nothing should be repeated before sleeping.
    rescan: bool,
    /// Armed claims watches. In a `Mutex` only so that `&Fetcher` is `Send` (it is only
    /// touched through `&mut self`, with `get_mut`, never locked).
    fired: std::sync::Mutex<FuturesUnordered<WatchFuture>>,
    /// The partitions this worker owns, per queue ([`crate::assignment::follow`]).
    owned: watch::Receiver<Owned>,
    /// Jobs handed out and not let go of yet.
    holding: Holding,
    /// Jobs waiting for their lock key, by key. They stay in `holding` meanwhile, so that
    /// listings do not offer them.
    parked: HashMap<String, Parked>,
    last_tidy: Instant,
}

/// A task aborted when this is dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("queues", &self.queues.len())
            .field("lanes", &self.lanes.len())
            .field("watching", &self.watching.len())
            .field("armed", &self.armed.len())
            .finish()
    }
}

impl Fetcher {
    pub(crate) fn new(
        reader: zk::Client,
        layout: Layout,
        queues: Vec<(String, QueueConfig)>,
        owned: watch::Receiver<Owned>,
    ) -> Fetcher {
        let (events_tx, events) = mpsc::unbounded_channel();
        Fetcher {
            owned,
            reader,
            layout,
            queues,
            cursor: 0,
            lanes: HashMap::new(),
            watching: HashMap::new(),
            events,
            events_tx,
            armed: HashMap::new(),
            rescan: false,
            fired: std::sync::Mutex::new(FuturesUnordered::new()),
            holding: Holding::default(),
            parked: HashMap::new(),
            last_tidy: Instant::now(),
        }
    }

    /// Where the worker hands back jobs whose lock key is busy.
    pub(crate) fn parking(&self) -> Parking {
        Parking(self.events_tx.clone())
    }

    /// Up to `want` ready, unclaimed jobs with their data, highest priority first.
    pub(crate) async fn scan(&mut self, want: usize) -> Result<Vec<Found>> {
        self.take_events();
        if self.last_tidy.elapsed() >= TIDY_INTERVAL {
            self.last_tidy = Instant::now();
            self.all_stale();
        }
        self.cursor = self.cursor.wrapping_add(1);
        let mut to_arm = Vec::new();
        let mut found = Vec::new();
        for q in 0..self.queues.len() {
            let (queue, config) = self.queues[(q + self.cursor) % self.queues.len()].clone();
            self.scan_queue(&queue, &config, want - found.len(), &mut found, &mut to_arm)
                .await?;
            if found.len() >= want {
                break;
            }
        }
        let armed_new = self.arm(to_arm).await?;
        let handed = found.len();
        let read = self.read(found).await?;
        self.rescan = armed_new || read.len() < handed;
        // Jobs of a key already waiting wait with them, in order.
        let mut found = Vec::with_capacity(read.len());
        for f in read {
            match f {
                Found::Job { candidate, job, .. }
                    if job.lock_key.as_ref().is_some_and(|k| self.parked.contains_key(k)) =>
                {
                    let key = job.lock_key.unwrap_or_default();
                    self.park(key, candidate);
                }
                f => found.push(f),
            }
        }
        Ok(found)
    }

    /// Whether a scan that found nothing should be repeated before sleeping:
    /// - it armed new claims watches, and a claim may have ended between the listing and the
    ///   watch;
    /// - jobs it took from a lane's cache were gone when read (taken by another worker since
    ///   seen): the rest of the cache, or a new listing, may hold ready jobs.
    pub(crate) fn rescan(&self) -> bool {
        self.rescan
    }

    async fn scan_queue(
        &mut self,
        queue: &str,
        config: &QueueConfig,
        want: usize,
        out: &mut Vec<Candidate>,
        to_arm: &mut Vec<Wakes>,
    ) -> Result<()> {
        let mut partitions: Vec<u32> = match self.owned.borrow_and_update().get(queue) {
            Some(Some(owned)) => owned.iter().copied().filter(|p| *p < config.partitions).collect(),
            _ => (0..config.partitions).collect(),
        };
        // Forget lanes of partitions given away: their jobs are another worker's now.
        let mine = |id: &LaneId| id.queue != queue || partitions.contains(&id.partition);
        self.lanes.retain(|id, _| mine(id));
        self.watching.retain(|id, _| mine(id));
        if partitions.is_empty() {
            return Ok(());
        }
        // Start at a different partition each scan so that none is always last.
        let turn = self.cursor % partitions.len();
        partitions.rotate_left(turn);
        let id = |partition: u32, lane: u8| LaneId {
            queue: queue.to_string(),
            partition,
            lane,
        };
        // List every lane worth listing, all partitions at once.
        let stale: Vec<(u32, Vec<u8>)> = partitions
            .iter()
            .map(|p| {
                let lanes = (0..config.priorities)
                    .filter(|lane| match self.lanes.get(&id(*p, *lane)) {
                        None => true,
                        Some(c) => c.ready.is_empty() && c.stale,
                    })
                    .collect::<Vec<_>>();
                (*p, lanes)
            })
            .filter(|(_, lanes)| !lanes.is_empty())
            .collect();
        // Watches first: requests are answered in order, so each watch is live before its
        // lane's listing is taken.
        let unwatched: Vec<LaneId> = stale
            .iter()
            .flat_map(|(p, lanes)| lanes.iter().map(move |lane| id(*p, *lane)))
            .filter(|lane| !self.watching.contains_key(lane))
            .collect();
        let watches = futures::future::join_all(unwatched.iter().map(|lane| {
            self.reader.watch(
                &self.layout.lane(&lane.queue, lane.partition, lane.lane),
                zk::AddWatchMode::PersistentRecursive,
            )
        }));
        let this = &*self;
        let listings = futures::future::join_all(
            stale
                .iter()
                .map(|(p, lanes)| this.list_partition(queue, *p, lanes, want)),
        );
        let (watches, listed) = futures::future::join(watches, listings).await;
        for (lane, watch) in unwatched.into_iter().zip(watches) {
            let path = self.layout.lane(&lane.queue, lane.partition, lane.lane);
            let watcher = watch.map_err(|e| Error::zk("watch lane", &path, e))?;
            let task = tokio::spawn(forward(watcher, lane.clone(), path, self.events_tx.clone()));
            self.watching.insert(lane, AbortOnDrop(task));
        }
        let claims_path = |p: u32| self.layout.claims(queue, p);
        for ((p, _), listing) in stale.iter().zip(listed) {
            for Listed {
                lane,
                jobs,
                complete,
                foreign,
            } in listing?
            {
                // Jobs held by another worker come back only through the claims watch.
                let claims_armed = !foreign || self.armed.contains_key(&claims_path(*p));
                if foreign && !claims_armed {
                    to_arm.push((claims_path(*p), (queue.to_string(), *p)));
                }
                let cache = self.lanes.entry(id(*p, lane)).or_default();
                cache.complete = complete;
                cache.stale = !(complete && claims_armed);
                cache.ready.extend(jobs);
            }
        }
        // Highest lane first; within a lane, take from partitions in turn so none starves.
        for lane in (0..config.priorities).rev() {
            let mut progress = true;
            while out.len() < want && progress {
                progress = false;
                for p in &partitions {
                    if out.len() >= want {
                        break;
                    }
                    let Some(cache) = self.lanes.get_mut(&id(*p, lane)) else {
                        continue;
                    };
                    // A job both listed and reported by its watch is in the cache twice.
                    while let Some(mut c) = cache.ready.pop_front() {
                        let path = c.path(&self.layout);
                        if claim::is_held(&self.holding, &path) {
                            continue;
                        }
                        c.held = Some(Arc::new(Held::new(&self.holding, path)));
                        out.push(c);
                        progress = true;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lists `lanes` of one partition: for each, its unclaimed jobs (at least `want` if there
    /// are that many).
    async fn list_partition(
        &self,
        queue: &str,
        partition: u32,
        lanes: &[u8],
        want: usize,
    ) -> Result<Vec<Listed>> {
        let claims_path = self.layout.claims(queue, partition);
        let lane_paths: Vec<String> = lanes
            .iter()
            .map(|lane| self.layout.lane(queue, partition, *lane))
            .collect();
        // The claims and the lanes' segments in one round trip.
        let (claims, segments) = futures::future::join(
            self.reader.list_children(&claims_path),
            futures::future::join_all(lane_paths.iter().map(|l| self.reader.list_children(l))),
        )
        .await;
        let claims: HashSet<String> = match claims {
            Ok(names) => names.into_iter().collect(),
            Err(zk::Error::NoNode) => HashSet::new(),
            Err(e) => return Err(Error::zk("list claims", claims_path, e)),
        };
        let walks = lanes
            .iter()
            .zip(&lane_paths)
            .zip(segments)
            .map(|((lane, path), segments)| {
                let claims = &claims;
                async move {
                    let segments = match segments {
                        Ok(s) => s,
                        Err(zk::Error::NoNode) => Vec::new(),
                        Err(e) => return Err(Error::zk("list segments", path.clone(), e)),
                    };
                    let walk = Walk {
                        queue,
                        partition,
                        lane: *lane,
                        lane_path: path,
                        claims,
                    };
                    self.walk_lane(&walk, segments, want).await
                }
            });
        futures::future::join_all(walks).await.into_iter().collect()
    }

    /// Unclaimed jobs of one lane, oldest first, listing its segments a few at a time until it
    /// has at least `want`.
    async fn walk_lane(&self, walk: &Walk<'_>, mut segments: Vec<String>, want: usize) -> Result<Listed> {
        segments.sort();
        let mut jobs = Vec::new();
        let mut foreign = false;
        let mut complete = true;
        let groups: Vec<&[String]> = segments.chunks(SEGMENTS_AT_ONCE).collect();
        for (i, group) in groups.iter().enumerate() {
            let paths: Vec<String> = group.iter().map(|s| format!("{}/{s}", walk.lane_path)).collect();
            let listed = futures::future::join_all(paths.iter().map(|p| self.reader.list_children(p))).await;
            for ((segment, path), children) in group.iter().zip(paths).zip(listed) {
                let mut children = match children {
                    Ok(c) => c,
                    Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(Error::zk("list jobs", path, e)),
                };
                if children.is_empty() {
                    // Drained and nobody writing: remove it. Fails harmlessly if a job just
                    // arrived.
                    drop(self.reader.delete(&path, None));
                    continue;
                }
                children.sort();
                for node in children.into_iter().filter(|c| c.starts_with("j-")) {
                    if claim::is_held(&self.holding, &format!("{path}/{node}")) {
                        continue;
                    }
                    if walk
                        .claims
                        .contains(&claim::claim_name(walk.lane, segment, &node))
                    {
                        foreign = true;
                        continue;
                    }
                    jobs.push(Candidate {
                        queue: walk.queue.to_string(),
                        partition: walk.partition,
                        lane: walk.lane,
                        segment: segment.clone(),
                        node,
                        held: None,
                    });
                }
            }
            if jobs.len() >= want && i + 1 < groups.len() {
                complete = false;
                break;
            }
        }
        Ok(Listed {
            lane: walk.lane,
            jobs,
            complete,
            foreign,
        })
    }

    /// Reads the data of `candidates` in pipelined multi-reads, in order.
    async fn read(&self, candidates: Vec<Candidate>) -> Result<Vec<Found>> {
        let paths: Vec<String> = candidates.iter().map(|c| c.path(&self.layout)).collect();
        let results = znode::get_many(&self.reader, "read jobs", &paths).await?;
        let mut out = Vec::with_capacity(candidates.len());
        for ((candidate, path), result) in candidates.into_iter().zip(paths).zip(results) {
            // None: taken and finished by another worker since the listing.
            let Some((data, stat)) = result else { continue };
            out.push(match codec::decode::<Job>(&path, &data) {
                Ok(job) => Found::Job {
                    candidate,
                    job,
                    version: stat.version,
                },
                Err(e) => Found::Garbage {
                    candidate,
                    data,
                    version: stat.version,
                    reason: e.to_string(),
                },
            });
        }
        Ok(out)
    }

    /// Arms one-shot watches on claims `paths` that are not armed yet, all at once. Returns
    /// whether it armed any.
    async fn arm(&mut self, mut paths: Vec<Wakes>) -> Result<bool> {
        paths.retain(|(path, _)| !self.armed.contains_key(path));
        paths.sort_by(|a, b| a.0.cmp(&b.0));
        paths.dedup_by(|a, b| a.0 == b.0);
        if paths.is_empty() {
            return Ok(false);
        }
        let client = &self.reader;
        let results =
            futures::future::join_all(paths.iter().map(|(path, _)| client.get_and_watch_children(path)))
                .await;
        let mut armed_new = false;
        for ((path, wakes), result) in paths.into_iter().zip(results) {
            match result {
                Ok((_, _, watcher)) => {
                    self.armed.insert(path.clone(), wakes);
                    self.fired().push(
                        async move {
                            watcher.changed().await;
                            path
                        }
                        .boxed(),
                    );
                    armed_new = true;
                }
                // No claims directory yet: nothing to wait for.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(Error::zk("watch", path, e)),
            }
        }
        Ok(armed_new)
    }

    /// Sleeps until a lane event or claims watch brings something to do, the owned partitions
    /// change, or `fallback` passes (after which every lane is listed again).
    pub(crate) async fn wait(&mut self, fallback: Duration) {
        let deadline = tokio::time::Instant::now() + fallback;
        let mut owned = self.owned.clone();
        loop {
            let fired = self.fired.get_mut().unwrap_or_else(|p| p.into_inner());
            let watch = async {
                if fired.is_empty() {
                    std::future::pending().await
                } else {
                    fired.next().await
                }
            };
            tokio::select! {
                Some(path) = watch => self.woken(&path),
                Some(event) = self.events.recv() => self.apply(event),
                Ok(()) = owned.changed() => return,
                _ = tokio::time::sleep_until(deadline) => {
                    self.all_stale();
                    return;
                }
            }
            self.take_events();
            if self.worth_scanning() {
                return;
            }
        }
    }

    /// Whether a scan would find something to list or hand out.
    fn worth_scanning(&self) -> bool {
        self.lanes.values().any(|c| !c.ready.is_empty() || c.stale)
    }

    fn take_events(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.apply(event);
        }
        while let Some(Some(path)) = self.fired().next().now_or_never() {
            self.woken(&path);
        }
    }

    fn apply(&mut self, event: LaneEvent) {
        match event {
            LaneEvent::Created { lane, segment, node } => {
                let Some(cache) = self.lanes.get_mut(&lane) else {
                    return;
                };
                if !cache.complete {
                    // The next listing sees it, in order.
                    return;
                }
                if cache.ready.len() >= MAX_CACHED {
                    cache.complete = false;
                    cache.stale = true;
                    return;
                }
                cache.ready.push_back(Candidate {
                    queue: lane.queue,
                    partition: lane.partition,
                    lane: lane.lane,
                    segment,
                    node,
                    held: None,
                });
            }
            LaneEvent::Park { key, candidate } => self.park(key, candidate),
            LaneEvent::KeyFree(key) => self.unpark(&key),
            LaneEvent::Reconnected => {
                // Dropping a watcher removes its watch; the next scan sets a new one before it
                // lists the lane, in the same round trip.
                self.watching.clear();
                self.all_stale();
            }
        }
    }

    fn park(&mut self, key: String, candidate: Candidate) {
        let parked = self.parked.entry(key.clone()).or_insert_with(|| {
            let watch = watch_key(
                self.reader.clone(),
                self.layout.lock(&key),
                key,
                self.events_tx.clone(),
            );
            Parked {
                jobs: Vec::new(),
                _watch: AbortOnDrop(tokio::spawn(watch)),
            }
        });
        parked.jobs.push(candidate);
    }

    /// Puts the jobs parked on `key` back at the front of their lanes, oldest first.
    fn unpark(&mut self, key: &str) {
        let Some(parked) = self.parked.remove(key) else {
            return;
        };
        for mut candidate in parked.jobs.into_iter().rev() {
            candidate.held = None;
            let id = LaneId {
                queue: candidate.queue.clone(),
                partition: candidate.partition,
                lane: candidate.lane,
            };
            // A lane forgotten meanwhile belongs to another worker now.
            if let Some(cache) = self.lanes.get_mut(&id) {
                cache.ready.push_front(candidate);
            }
        }
    }

    fn all_stale(&mut self) {
        for cache in self.lanes.values_mut() {
            cache.stale = true;
        }
    }

    /// A claims watch on `path` fired: the lanes of its partition are worth listing again.
    fn woken(&mut self, path: &str) {
        if let Some((queue, partition)) = self.armed.remove(path) {
            for (id, cache) in self.lanes.iter_mut() {
                if id.partition == partition && id.queue == queue {
                    cache.stale = true;
                }
            }
        }
    }

    fn fired(&mut self) -> &mut FuturesUnordered<WatchFuture> {
        self.fired.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

/// Forwards the job creations a lane watch reports, and reconnects, until the session ends.
async fn forward(
    mut watcher: zk::PersistentWatcher,
    lane: LaneId,
    lane_path: String,
    events: mpsc::UnboundedSender<LaneEvent>,
) {
    loop {
        let event = watcher.changed().await;
        let forwarded = match event.event_type {
            zk::EventType::NodeCreated => match job_in_lane(&lane_path, &event.path) {
                Some((segment, node)) => events.send(LaneEvent::Created {
                    lane: lane.clone(),
                    segment: segment.to_string(),
                    node: node.to_string(),
                }),
                None => Ok(()),
            },
            zk::EventType::Session if event.session_state.is_terminated() => return,
            zk::EventType::Session if event.session_state == zk::SessionState::SyncConnected => {
                events.send(LaneEvent::Reconnected)
            }
            _ => Ok(()),
        };
        if forwarded.is_err() {
            return;
        }
    }
}

/// Reports `key` free once the node holding its lock (the lowest in `dir`) is gone. When the
/// holder cannot be watched, reports it free after a pause: the worker tries the lock again,
/// which is safe, only not free.
async fn watch_key(reader: zk::Client, dir: String, key: String, events: mpsc::UnboundedSender<LaneEvent>) {
    loop {
        let holder = match reader.list_children(&dir).await {
            Ok(children) => children.into_iter().min_by_key(|c| line::sequence_of(c)),
            Err(zk::Error::NoNode) => None,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        };
        let Some(holder) = holder else { break };
        match reader.check_and_watch_stat(&format!("{dir}/{holder}")).await {
            // Gone between the listing and the watch: look again.
            Ok((None, _)) => continue,
            Ok((Some(_), watcher)) => {
                watcher.changed().await;
                break;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
    let _ = events.send(LaneEvent::KeyFree(key));
}

/// The segment and job names of `path` if it is a job znode of the lane at `lane_path`.
fn job_in_lane<'a>(lane_path: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(lane_path)?.strip_prefix('/')?;
    let (segment, node) = rest.split_once('/')?;
    (node.starts_with("j-") && !node.contains('/')).then_some((segment, node))
}

#[cfg(test)]
mod tests {
    use super::job_in_lane;

    #[test]
    fn job_paths_are_told_from_segments_and_markers() {
        let lane = "/zkq/queues/q/p/3/l0";
        assert_eq!(
            job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001/j-0000000042"),
            Some(("s-0000000001", "j-0000000042"))
        );
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001"), None);
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001/open"), None);
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l01/s-0000000001/j-1"), None);
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0"), None);
    }
}

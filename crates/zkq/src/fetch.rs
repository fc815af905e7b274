//! Finding ready jobs: scans lanes (highest priority first) across the partitions this worker
//! owns, skips claimed jobs, reads job data in batches, and cleans up drained segments.
//!
//! # Listing cache
//! Listing a segment returns all of its children in one reply, so a lane is listed once and the
//! unclaimed jobs seen are kept in a per-lane cache that the following scans hand out; the lane
//! is listed again only when its cache runs dry. Jobs that become ready again without being new
//! (a claim released on shutdown, or gone with a crashed worker's session) show up in that next
//! listing. A cached job may have been taken meanwhile by another worker: reading it (gone) or
//! claiming it (the version moved, or the claim exists) tells, and it is skipped. Partition
//! ownership makes that rare. Jobs this worker already holds (handed out, claims in flight or
//! running) are never offered again, although a claim in flight is not in the claims directory
//! yet.
//!
//! # Quiet lanes
//! A lane whose listing found nothing gets one-shot watches: on the lane (a new segment), on each
//! of its segments a producer is still appending to (a new job), and, when another worker holds
//! claims on some of its jobs, on its partition's claims (a claim that vanishes makes a job ready
//! again; this worker's own claims end through its own hands and need no watch). Once those are armed and a listing still finds
//! nothing, the lane is quiet: scans skip it until one of its watches fires or the worker has
//! slept a whole poll interval (a safety net). Watches are re-armed only after they fire, so an
//! idle worker costs ZooKeeper nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::watch;
use zookeeper_client as zk;

use crate::assignment::Owned;
use crate::claim::{self, Candidate, Held, Holding};
use crate::codec;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::layout::{Layout, OPEN_MARKER};
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
#[derive(Debug, Default)]
struct LaneCache {
    /// Listed, unclaimed at listing time, not handed out yet; oldest first.
    ready: VecDeque<Candidate>,
    /// Nothing to find until one of the lane's watches fires.
    quiet: bool,
    /// Segments a producer was still appending to at the last listing: listed again together
    /// with the lane itself, since that is where new jobs arrive.
    open: Vec<String>,
}

/// Segments of one lane listed at once.
const SEGMENTS_AT_ONCE: usize = 4;

/// A lane to list, with the segments that were open at its last listing.
type StaleLane = (u8, Vec<String>);

/// What a listing of one lane found.
#[derive(Debug)]
struct Listed {
    lane: u8,
    /// Unclaimed jobs, oldest first.
    jobs: Vec<Candidate>,
    /// Segments a producer may still append to.
    open: Vec<String>,
    /// What to watch if there were no jobs.
    watch: Vec<String>,
}

/// One lane being listed, and what was listed for it already.
struct Walk<'a> {
    queue: &'a str,
    partition: u32,
    lane: u8,
    lane_path: &'a str,
    /// The partition's claims.
    claims: &'a HashSet<String>,
    /// Segments listed already, by path.
    listed: &'a HashMap<String, std::result::Result<Vec<String>, zk::Error>>,
}

/// A watch path and the partition whose lanes it wakes.
type Wakes = (String, (String, u32));

type WatchFuture = futures::future::BoxFuture<'static, String>;

/// Scans the worker's queues. Keeps listings and armed watches between scans.
pub(crate) struct Fetcher {
    /// A session of its own for listings, job data reads and watches. ZooKeeper answers a
    /// session's requests in order, so on the worker's session a scan would wait for every
    /// claim and ack commit (an fsync each) sent before it; here it waits for none.
    reader: zk::Client,
    layout: Layout,
    queues: Vec<(String, QueueConfig)>,
    cursor: usize,
    lanes: HashMap<LaneId, LaneCache>,
    /// Armed watches: path -> the (queue, partition) whose lanes it wakes.
    armed: HashMap<String, (String, u32)>,
    /// Whether the last scan's result is no reason to sleep: it armed watches that were not
    /// armed before, or some jobs it handed out were gone when read.
    rescan: bool,
    /// Armed watches. In a `Mutex` only so that `&Fetcher` is `Send` (it is only touched
    /// through `&mut self`, with `get_mut`, never locked).
    fired: std::sync::Mutex<FuturesUnordered<WatchFuture>>,
    /// The partitions this worker owns, per queue ([`crate::assignment::follow`]).
    owned: watch::Receiver<Owned>,
    /// Jobs handed out and not let go of yet.
    holding: Holding,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("queues", &self.queues.len())
            .field("lanes", &self.lanes.len())
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
        Fetcher {
            owned,
            reader,
            layout,
            queues,
            cursor: 0,
            lanes: HashMap::new(),
            armed: HashMap::new(),
            rescan: false,
            fired: std::sync::Mutex::new(FuturesUnordered::new()),
            holding: Holding::default(),
        }
    }

    /// Up to `want` ready, unclaimed jobs with their data, highest priority first.
    pub(crate) async fn scan(&mut self, want: usize) -> Result<Vec<Found>> {
        self.drain_fired();
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
        let listed = found.len();
        let found = self.read(found).await?;
        self.rescan = armed_new || found.len() < listed;
        Ok(found)
    }

    /// Whether a scan that found nothing should be repeated before sleeping:
    /// - it armed new watches, and something may have arrived between the listing and the watch;
    /// - jobs it took from a lane's cache were gone when read (taken by another worker since the
    ///   listing): that lane has no watch armed, and the rest of its cache, or a new listing, may
    ///   hold ready jobs.
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
        self.lanes
            .retain(|id, _| id.queue != queue || partitions.contains(&id.partition));
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
        let stale: Vec<(u32, Vec<StaleLane>)> = partitions
            .iter()
            .map(|p| {
                let lanes = (0..config.priorities)
                    .filter_map(|lane| match self.lanes.get(&id(*p, lane)) {
                        None => Some((lane, Vec::new())),
                        Some(c) if c.ready.is_empty() && !c.quiet => Some((lane, c.open.clone())),
                        Some(_) => None,
                    })
                    .collect::<Vec<_>>();
                (*p, lanes)
            })
            .filter(|(_, lanes)| !lanes.is_empty())
            .collect();
        let this = &*self;
        let listed = futures::future::join_all(
            stale
                .iter()
                .map(|(p, lanes)| this.list_partition(queue, *p, lanes, want)),
        )
        .await;
        for ((p, _), listing) in stale.iter().zip(listed) {
            for Listed {
                lane,
                jobs,
                open,
                watch,
            } in listing?
            {
                let all_armed = watch.iter().all(|w| self.armed.contains_key(w));
                let cache = self.lanes.entry(id(*p, lane)).or_default();
                cache.open = open;
                cache.quiet = jobs.is_empty() && all_armed;
                if jobs.is_empty() && !all_armed {
                    to_arm.extend(watch.into_iter().map(|w| (w, (queue.to_string(), *p))));
                }
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
                    let next = self
                        .lanes
                        .get_mut(&id(*p, lane))
                        .and_then(|c| c.ready.pop_front());
                    if let Some(mut c) = next {
                        c.held = Some(Arc::new(Held::new(&self.holding, c.path(&self.layout))));
                        out.push(c);
                        progress = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lists `lanes` (each with the segments that were open at its last listing) of one
    /// partition: for each, its unclaimed jobs (at least `want` if there are that many).
    async fn list_partition(
        &self,
        queue: &str,
        partition: u32,
        lanes: &[StaleLane],
        want: usize,
    ) -> Result<Vec<Listed>> {
        let claims_path = self.layout.claims(queue, partition);
        let lane_paths: Vec<String> = lanes
            .iter()
            .map(|(lane, _)| self.layout.lane(queue, partition, *lane))
            .collect();
        let open: Vec<&String> = lanes.iter().flat_map(|(_, open)| open).collect();
        // The claims, the lanes' segments and the segments that were open, in one round trip.
        let (claims, segments, open_listed) = futures::future::join3(
            self.reader.list_children(&claims_path),
            futures::future::join_all(lane_paths.iter().map(|l| self.reader.list_children(l))),
            futures::future::join_all(open.iter().map(|s| self.reader.list_children(s))),
        )
        .await;
        let claims: HashSet<String> = match claims {
            Ok(names) => names.into_iter().collect(),
            Err(zk::Error::NoNode) => HashSet::new(),
            Err(e) => return Err(Error::zk("list claims", claims_path, e)),
        };
        let listed: HashMap<String, std::result::Result<Vec<String>, zk::Error>> =
            open.into_iter().cloned().zip(open_listed).collect();
        let walks = lanes
            .iter()
            .zip(&lane_paths)
            .zip(segments)
            .map(|(((lane, _), path), segments)| {
                let (claims, claims_path, listed) = (&claims, &claims_path, &listed);
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
                        listed,
                    };
                    let (jobs, open, foreign) = self.walk_lane(&walk, segments, want).await?;
                    let mut watch = vec![path.clone()];
                    watch.extend(open.iter().cloned());
                    if foreign {
                        watch.push(claims_path.clone());
                    }
                    Ok(Listed {
                        lane: *lane,
                        jobs,
                        open,
                        watch,
                    })
                }
            });
        futures::future::join_all(walks).await.into_iter().collect()
    }

    /// Unclaimed jobs of one lane, oldest first, listing its segments a few at a time (unless
    /// already listed) until it has at least `want`; the open segments; and whether some job
    /// was skipped because another worker holds its claim (whose end would make it ready
    /// again).
    async fn walk_lane(
        &self,
        walk: &Walk<'_>,
        mut segments: Vec<String>,
        want: usize,
    ) -> Result<(Vec<Candidate>, Vec<String>, bool)> {
        segments.sort();
        let mut open = Vec::new();
        let mut found = Vec::new();
        let mut foreign = false;
        for group in segments.chunks(SEGMENTS_AT_ONCE) {
            let paths: Vec<String> = group.iter().map(|s| format!("{}/{s}", walk.lane_path)).collect();
            let listed = futures::future::join_all(paths.iter().map(|p| async move {
                match walk.listed.get(p) {
                    Some(listed) => listed.clone(),
                    None => self.reader.list_children(p).await,
                }
            }))
            .await;
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
                if children.iter().any(|c| c == OPEN_MARKER) {
                    open.push(path.clone());
                }
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
                    found.push(Candidate {
                        queue: walk.queue.to_string(),
                        partition: walk.partition,
                        lane: walk.lane,
                        segment: segment.clone(),
                        node,
                        held: None,
                    });
                }
            }
            if found.len() >= want {
                break;
            }
        }
        Ok((found, open, foreign))
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

    /// Arms one-shot watches on `paths` that are not armed yet, all at once. Returns whether it
    /// armed any.
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
                // Gone (a drained segment): the lane watch covers what comes next.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(Error::zk("watch", path, e)),
            }
        }
        Ok(armed_new)
    }

    /// Sleeps until a watch fires, the owned partitions change, or `fallback` passes (after
    /// which every lane is listed again).
    pub(crate) async fn wait(&mut self, fallback: Duration) {
        let mut owned = self.owned.clone();
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
            Ok(()) = owned.changed() => {}
            _ = tokio::time::sleep(fallback) => {
                for cache in self.lanes.values_mut() {
                    cache.quiet = false;
                }
            }
        }
        self.drain_fired();
    }

    fn drain_fired(&mut self) {
        while let Some(Some(path)) = self.fired().next().now_or_never() {
            self.woken(&path);
        }
    }

    /// A watch on `path` fired: the lanes it covers are worth listing again.
    fn woken(&mut self, path: &str) {
        if let Some((queue, partition)) = self.armed.remove(path) {
            for (id, cache) in self.lanes.iter_mut() {
                if id.partition == partition && id.queue == queue {
                    cache.quiet = false;
                }
            }
        }
    }

    fn fired(&mut self) -> &mut FuturesUnordered<WatchFuture> {
        self.fired.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

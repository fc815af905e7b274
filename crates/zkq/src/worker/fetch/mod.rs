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
//!   oldest segment, whenever its cache runs dry. Its watch is removed meanwhile, since that
//!   next listing sees those jobs in order: left in place, it would cost the server two events
//!   per job drained (its claim and its settle) for nothing. It is set again in the round trip
//!   of the next listing, before it. So does a complete lane whose cache grew past
//!   [`MAX_CACHED`].
//!
//! Jobs that become ready again without being created (a claim released on shutdown, or gone
//! with a crashed worker's session) produce no creation event. A listing that skipped jobs because
//! another worker holds their claims arms a one-shot watch on the partition's claims (this
//! worker's own claims end through its own hands and need none); when it fires, the lane is
//! listed again. So is every lane after a reconnect (a persistent watch may miss events while
//! disconnected, and the client does not set persistent watches again on the new connection: the
//! fetcher drops them and sets new ones before those listings), and after a move between the
//! worker's own session and its read session ([`read_session`]).
//!
//! Two safety nets list lanes again without being asked: after the worker slept a whole poll
//! interval, and every [`TIDY_INTERVAL`] (which also deletes drained segments), each lane that
//! is *touched* is listed again; every [`RESYNC_INTERVAL`], every lane is. A lane is touched
//! when its watch reported any event in it since its last listing (a deletion included), when
//! this worker handed out one of its jobs, and while a listing found one still held: a job
//! let go without a write (a claim that failed without a lost race, a scan that failed after
//! taking it) produces no event, and this finds it again. A lane whose watch stayed quiet and
//! whose jobs this worker did not touch cannot have changed, so an idle worker lists nothing,
//! and an idle fleet costs ZooKeeper only its heartbeats and pings.
//!
//! A cached job may have been taken meanwhile by another worker: reading it (gone) or claiming
//! it (the version moved, or the claim exists) tells, and it is skipped. Partition ownership
//! makes that rare. Jobs this worker already holds (handed out, claims in flight or running)
//! are never offered again, although a claim in flight is not in the claims directory yet.

mod kinds;
mod listing;
mod parking;
mod read_session;
mod watches;

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::warn;

use crate::assignment::Owned;
use crate::claim::{Candidate, Holding};
use crate::error::Result;
use crate::job::Job;
use crate::queue::QueueConfig;
use crate::store::layout::Layout;
use crate::worker::configs::{is_paused, Configs};

use self::parking::Parked;
use self::watches::{PartitionId, WatchFuture};

pub(crate) use self::kinds::Kinds;
pub(crate) use self::parking::Parking;
pub(crate) use self::read_session::{Opener, Sessions};

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
    /// Its watch reported an event since its last listing, this worker handed out one of its
    /// jobs since, or that listing found one still held (see the module's documentation).
    touched: bool,
}

impl Default for LaneCache {
    fn default() -> Self {
        LaneCache {
            ready: VecDeque::new(),
            complete: false,
            stale: true,
            touched: false,
        }
    }
}

/// Most jobs a complete lane takes in by event before it goes back to listings: a worker that
/// falls behind a producer keeps a bounded cache.
const MAX_CACHED: usize = 4096;

/// How often every touched lane is listed again even though its watch is live: drained
/// segments are deleted by listings.
const TIDY_INTERVAL: Duration = Duration::from_secs(30);

/// How often every lane is listed again, changed or not: a safety net under the watches.
const RESYNC_INTERVAL: Duration = Duration::from_secs(300);

/// What a lane watch reports.
#[derive(Debug)]
enum LaneEvent {
    /// A job znode was created in the lane.
    Created {
        lane: LaneId,
        segment: String,
        node: String,
    },
    /// The session of a lane watch reconnected: events may have been missed, and the lane
    /// watches are gone from the server (zookeeper-client 0.11 sets only one-shot watches again
    /// on a new connection). Every lane is watched anew and listed again.
    Reconnected,
    /// Something else changed in the lane: a job or segment deleted, a segment created.
    Touched(LaneId),
    /// A job whose lock key is held elsewhere, kept until the key is free ([`Parking`]).
    Park { key: String, candidate: Candidate },
    /// The holder of a lock key that parked jobs wait for has let go.
    KeyFree(String),
}

/// Scans the worker's queues. Keeps listings and watches between scans.
pub(crate) struct Fetcher {
    /// The session for listings, job data reads and watches: the worker's own while it is
    /// idle, a read session of its own while it is busy ([`read_session`]).
    sessions: Sessions,
    layout: Layout,
    queues: Vec<(String, QueueConfig)>,
    /// The queues' live settings: a paused queue is not scanned.
    configs: Configs,
    cursor: usize,
    lanes: HashMap<LaneId, LaneCache>,
    /// Lane watches, each forwarding its events to `events`; aborted when dropped.
    watching: HashMap<LaneId, AbortOnDrop>,
    events: mpsc::UnboundedReceiver<LaneEvent>,
    events_tx: mpsc::UnboundedSender<LaneEvent>,
    /// Armed claims watches: path -> the partition whose lanes it wakes.
    armed: HashMap<String, PartitionId>,
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
    /// The kinds this worker runs: jobs of other kinds are left alone.
    kinds: Kinds,
    /// Jobs read and found to be of a kind this worker does not run (their names did not
    /// tell), by path, so that listings pass over them; forgotten at each tidy.
    skipped: HashSet<String>,
    last_tidy: Instant,
    last_resync: Instant,
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
    /// A fetcher working on `sessions`.
    pub(crate) fn new(
        sessions: Sessions,
        layout: Layout,
        queues: Vec<(String, QueueConfig)>,
        configs: Configs,
        owned: watch::Receiver<Owned>,
        kinds: Kinds,
    ) -> Fetcher {
        let (events_tx, events) = mpsc::unbounded_channel();
        Fetcher {
            owned,
            sessions,
            layout,
            queues,
            configs,
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
            kinds,
            skipped: HashSet::new(),
            last_tidy: Instant::now(),
            last_resync: Instant::now(),
        }
    }

    /// Where the worker hands back jobs whose lock key is busy.
    pub(crate) fn parking(&self) -> Parking {
        Parking(self.events_tx.clone())
    }

    /// Up to `want` ready, unclaimed jobs with their data, highest priority first.
    ///
    /// # Errors
    /// A failed request. A read session that ended is let go of instead (the scan finds
    /// nothing and asks to be repeated, on the worker's own session).
    pub(crate) async fn scan(&mut self, want: usize) -> Result<Vec<Found>> {
        if self.sessions.update() {
            self.switched();
        }
        let reading = self.sessions.reading();
        match self.scan_lanes(want).await {
            Ok(found) => {
                self.sessions.handed_out(found.len());
                Ok(found)
            }
            // The read session holds nothing: its end is not the worker's session's.
            Err(e) if reading && e.is_session_lost() => {
                warn!(error = %e, "the read session ended under a scan; listing on the worker's own session");
                self.sessions.read_lost();
                self.switched();
                self.rescan = true;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Closes the read session, if open, within `within`.
    pub(crate) async fn close(mut self, within: Duration) {
        // Their tasks hold session handles, and a session closes with its last handle.
        self.parked.clear();
        self.watching.clear();
        self.sessions.close(within).await;
    }

    /// The fetcher moved to another session: every watch is dropped (a lane watch is set
    /// again, on the new session, ahead of its lane's next listing), every lane is listed
    /// again, and parked jobs go back to their lanes (to be parked again, watched from the new
    /// session, if their key is still busy).
    fn switched(&mut self) {
        self.watching.clear();
        self.armed.clear();
        self.fired().clear();
        let keys: Vec<String> = self.parked.keys().cloned().collect();
        for key in keys {
            self.unpark(&key);
        }
        self.all_stale();
    }

    async fn scan_lanes(&mut self, want: usize) -> Result<Vec<Found>> {
        // This scan sees the current settings and ownership: only later changes wake `wait`
        // (its clones of these receivers start from what is marked seen here).
        self.configs.borrow_and_update();
        self.owned.borrow_and_update();
        self.take_events();
        if self.last_resync.elapsed() >= RESYNC_INTERVAL {
            self.last_resync = Instant::now();
            self.last_tidy = Instant::now();
            self.skipped.clear();
            self.all_stale();
        } else if self.last_tidy.elapsed() >= TIDY_INTERVAL {
            self.last_tidy = Instant::now();
            self.skipped.clear();
            self.changed_stale();
        }
        self.cursor = self.cursor.wrapping_add(1);
        let mut to_arm = Vec::new();
        let mut found = Vec::new();
        for q in 0..self.queues.len() {
            let (queue, config) = self.queues[(q + self.cursor) % self.queues.len()].clone();
            if is_paused(&self.configs, &queue) {
                continue;
            }
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
                // Another kind: left for the workers that run it.
                Found::Job { candidate, job, .. } if !self.kinds.runs(&job.kind) => {
                    self.skipped.insert(candidate.path(&self.layout));
                    self.rescan = true;
                }
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

    /// Sleeps until a lane event or claims watch brings something to do, the owned partitions
    /// change, or `fallback` passes (after which every touched lane, and every lane that one
    /// listing did not take in whole, is listed again).
    pub(crate) async fn wait(&mut self, fallback: Duration) {
        let deadline = tokio::time::Instant::now() + fallback;
        let mut owned = self.owned.clone();
        let mut configs = self.configs.clone();
        // Its watches went with it.
        let read_ended = self.sessions.read_ended();
        tokio::pin!(read_ended);
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
                // A queue resumed (or its settings changed).
                Ok(()) = configs.changed() => return,
                () = &mut read_ended => return,
                _ = tokio::time::sleep_until(deadline) => {
                    self.changed_stale();
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
        self.lanes
            .iter()
            .any(|(id, c)| (!c.ready.is_empty() || c.stale) && !is_paused(&self.configs, &id.queue))
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
                if !self.kinds.may_run(&node) {
                    return;
                }
                if !cache.complete {
                    // The next listing sees it, in order.
                    return;
                }
                if cache.ready.len() >= MAX_CACHED {
                    cache.complete = false;
                    cache.stale = true;
                    self.watching.remove(&lane);
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
            LaneEvent::Touched(lane) => {
                if let Some(cache) = self.lanes.get_mut(&lane) {
                    cache.touched = true;
                }
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

    fn all_stale(&mut self) {
        for cache in self.lanes.values_mut() {
            cache.stale = true;
        }
    }

    /// Marks stale each touched lane, and each lane that one listing did not take in whole.
    fn changed_stale(&mut self) {
        for cache in self.lanes.values_mut() {
            cache.stale |= cache.touched || !cache.complete;
        }
    }
}

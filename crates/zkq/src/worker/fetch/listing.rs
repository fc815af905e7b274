//! Listing: the lanes of the owned partitions walked segment by segment, claimed jobs skipped,
//! drained segments deleted, and the job data of what is found read in batches.

use std::collections::HashSet;
use std::sync::Arc;

use zookeeper_client as zk;

use crate::assignment::Share;
use crate::claim::{self, Candidate, Held};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::queue::QueueConfig;
use crate::store::codec;
use crate::store::layout;
use crate::store::znode;

use super::watches::{forward, ClaimsWatch, PartitionId};
use super::{AbortOnDrop, Fetcher, Found, LaneId};

/// Segments of one lane listed at once.
pub(super) const SEGMENTS_AT_ONCE: usize = 4;

/// Lanes listed at once, about three requests each (see `scan_queue`).
const LANES_AT_ONCE: usize = 16;

/// What a listing of one lane found.
#[derive(Debug)]
pub(super) struct Listed {
    lane: u8,
    /// Unclaimed jobs, oldest first.
    jobs: Vec<Candidate>,
    /// Whether the listing reached the lane's last segment.
    complete: bool,
    /// Whether some job was skipped because another worker holds its claim.
    foreign: bool,
    /// Whether some job was skipped because this worker holds it (handed out, not let go yet).
    held: bool,
}

/// One lane being listed.
pub(super) struct Walk<'a> {
    queue: &'a str,
    partition: u32,
    lane: u8,
    lane_path: &'a str,
    /// The partition's claims.
    claims: &'a HashSet<String>,
}

impl Fetcher {
    pub(super) async fn scan_queue(
        &mut self,
        queue: &str,
        config: &QueueConfig,
        want: usize,
        out: &mut Vec<Candidate>,
        to_arm: &mut Vec<ClaimsWatch>,
    ) -> Result<()> {
        // Not marked seen here: `scan_lanes` did that for every queue before the first, so that a
        // change to a queue scanned earlier in this scan still wakes `wait`.
        let mut partitions: Vec<u32> = match self.owned.borrow().get(queue) {
            Some(Share::Owned(owned)) => owned.iter().copied().filter(|p| *p < config.partitions).collect(),
            Some(Share::Every) => (0..config.partitions).collect(),
            // The first record is on its way: the scan after it lists what it gives.
            Some(Share::Awaited) | None => Vec::new(),
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
        // Every lane worth listing.
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
        // A bounded number of lanes at a time. Requests wait at the server behind those sent
        // before them, by this session and by every other: a worker that scans every partition
        // (without a scheduler, say) lists every lane (about 1,300 requests for 128 partitions
        // of 3 lanes).
        // A fleet of 100 sending them all at once held up the scheduler's election, each of its
        // round trips (like the heartbeats') queued behind the whole fleet's listings: elected
        // 4.1 to 4.8 s after the last join, and as late with 16 partitions at a time; with 16
        // lanes, 1.4 to 2.3 s.
        let mut start = 0;
        while start < stale.len() {
            let mut end = start + 1;
            let mut lanes = stale[start].1.len();
            while end < stale.len() && lanes + stale[end].1.len() <= LANES_AT_ONCE {
                lanes += stale[end].1.len();
                end += 1;
            }
            self.list_lanes(queue, &stale[start..end], want, to_arm).await?;
            start = end;
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
                        // Until a listing finds it gone: see `touched` in `list_lanes`.
                        cache.touched = true;
                        progress = true;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Lists the `stale` lanes of some partitions of `queue`, each lane's watch set first, and
    /// puts what they found into the lane caches.
    async fn list_lanes(
        &mut self,
        queue: &str,
        stale: &[(u32, Vec<u8>)],
        want: usize,
        to_arm: &mut Vec<ClaimsWatch>,
    ) -> Result<()> {
        let id = |partition: u32, lane: u8| LaneId {
            queue: queue.to_string(),
            partition,
            lane,
        };
        // Watches first: requests are answered in order, so each watch is live before its
        // lane's listing is taken.
        let unwatched: Vec<LaneId> = stale
            .iter()
            .flat_map(|(p, lanes)| lanes.iter().map(move |lane| id(*p, *lane)))
            .filter(|lane| !self.watching.contains_key(lane))
            .collect();
        let watches = futures::future::join_all(unwatched.iter().map(|lane| {
            self.sessions.current().watch(
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
                held,
            } in listing?
            {
                // Jobs held by another worker come back only through the claims watch.
                let claims_armed = !foreign || self.armed.contains_key(&claims_path(*p));
                if foreign && !claims_armed {
                    to_arm.push(ClaimsWatch {
                        path: claims_path(*p),
                        wakes: PartitionId {
                            queue: queue.to_string(),
                            partition: *p,
                        },
                    });
                }
                if !complete {
                    self.sessions.backlog();
                    // A backlog: the next listing sees what its watch would report, and the
                    // watch would cost the server two events per job (its claim and its
                    // settle). It is set again before the listing that follows.
                    self.watching.remove(&id(*p, lane));
                }
                let cache = self.lanes.entry(id(*p, lane)).or_default();
                cache.complete = complete;
                cache.stale = !(complete && claims_armed);
                // A job this worker still holds may be let go without a write (a claim that
                // failed, say), which no watch reports: the lane stays due for the safety nets.
                cache.touched = held;
                cache.ready.extend(jobs);
            }
        }
        Ok(())
    }

    /// Lists `lanes` of one partition: for each, its unclaimed jobs (at least `want` if there
    /// are that many).
    pub(super) async fn list_partition(
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
            self.sessions.current().list_children(&claims_path),
            futures::future::join_all(
                lane_paths
                    .iter()
                    .map(|l| self.sessions.current().list_children(l)),
            ),
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
    pub(super) async fn walk_lane(
        &self,
        walk: &Walk<'_>,
        mut segments: Vec<String>,
        want: usize,
    ) -> Result<Listed> {
        segments.sort();
        let mut jobs = Vec::new();
        let mut foreign = false;
        let mut held = false;
        let mut complete = true;
        let groups: Vec<&[String]> = segments.chunks(SEGMENTS_AT_ONCE).collect();
        for (i, group) in groups.iter().enumerate() {
            let paths: Vec<String> = group.iter().map(|s| format!("{}/{s}", walk.lane_path)).collect();
            let listed =
                futures::future::join_all(paths.iter().map(|p| self.sessions.current().list_children(p)))
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
                    drop(self.sessions.current().delete(&path, None));
                    continue;
                }
                layout::sort_job_nodes(&mut children);
                for node in children
                    .into_iter()
                    .filter(|c| layout::parse_job_node(c).is_some())
                {
                    if !self.kinds.may_run(&node) {
                        continue;
                    }
                    let job_path = format!("{path}/{node}");
                    if claim::is_held(&self.holding, &job_path) {
                        held = true;
                        continue;
                    }
                    if self.skipped.contains(&job_path) {
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
            held,
        })
    }

    /// Reads the data of `candidates` in pipelined multi-reads, in order.
    pub(super) async fn read(&self, candidates: Vec<Candidate>) -> Result<Vec<Found>> {
        let paths: Vec<String> = candidates.iter().map(|c| c.path(&self.layout)).collect();
        let results = znode::get_many(self.sessions.current(), "read jobs", &paths).await?;
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
}

//! Finding ready jobs: scans lanes (highest priority first) across partitions, skips claimed
//! jobs, reads job data in batches, and cleans up drained segments. When nothing is ready it arms
//! one-shot watches (re-armed only after they fire) so the worker sleeps until something changes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use zookeeper_client as zk;

use tokio::sync::watch;

use crate::assignment::Owned;
use crate::claim::{self, Candidate};
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

type WatchFuture = futures::future::BoxFuture<'static, String>;

/// Scans the worker's queues. Keeps the armed watches between scans.
pub(crate) struct Fetcher {
    client: zk::Client,
    layout: Layout,
    queues: Vec<(String, QueueConfig)>,
    cursor: usize,
    /// What the last scan saw that is worth watching: lanes, claims dirs, segments with an
    /// active writer.
    seen: Vec<String>,
    armed: HashSet<String>,
    /// Armed watches. In a `Mutex` only so that `&Fetcher` is `Send` (it is only touched
    /// through `&mut self`, with `get_mut`, never locked).
    fired: std::sync::Mutex<FuturesUnordered<WatchFuture>>,
    /// The partitions this worker owns, per queue ([`crate::assignment::follow`]).
    owned: watch::Receiver<Owned>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("queues", &self.queues.len())
            .field("armed", &self.armed.len())
            .finish()
    }
}

impl Fetcher {
    pub(crate) fn new(
        client: zk::Client,
        layout: Layout,
        queues: Vec<(String, QueueConfig)>,
        owned: watch::Receiver<Owned>,
    ) -> Fetcher {
        Fetcher {
            owned,
            client,
            layout,
            queues,
            cursor: 0,
            seen: Vec::new(),
            armed: HashSet::new(),
            fired: std::sync::Mutex::new(FuturesUnordered::new()),
        }
    }

    /// Up to `want` ready, unclaimed jobs with their data, highest priority first.
    pub(crate) async fn scan(&mut self, want: usize) -> Result<Vec<Found>> {
        self.seen.clear();
        self.cursor = self.cursor.wrapping_add(1);
        let mut names = Vec::new();
        for q in 0..self.queues.len() {
            let (queue, config) = self.queues[(q + self.cursor) % self.queues.len()].clone();
            self.scan_queue(&queue, &config, want - names.len(), &mut names)
                .await?;
            if names.len() >= want {
                break;
            }
        }
        self.read(names).await
    }

    async fn scan_queue(
        &mut self,
        queue: &str,
        config: &QueueConfig,
        want: usize,
        out: &mut Vec<Candidate>,
    ) -> Result<()> {
        let mut partitions: Vec<u32> = match self.owned.borrow_and_update().get(queue) {
            Some(Some(owned)) => owned.iter().copied().filter(|p| *p < config.partitions).collect(),
            _ => (0..config.partitions).collect(),
        };
        if partitions.is_empty() {
            return Ok(());
        }
        // Start at a different partition each scan so that none is always last.
        let turn = self.cursor % partitions.len();
        partitions.rotate_left(turn);
        let client = &self.client;
        let claims = futures::future::join_all(partitions.iter().map(|p| {
            let path = self.layout.claims(queue, *p);
            async move {
                match client.list_children(&path).await {
                    Ok(names) => Ok((*p, names.into_iter().collect::<HashSet<String>>())),
                    Err(e) => Err(Error::zk("list claims", path, e)),
                }
            }
        }))
        .await
        .into_iter()
        .collect::<Result<HashMap<u32, HashSet<String>>>>()?;
        for p in &partitions {
            self.seen.push(self.layout.claims(queue, *p));
        }
        for lane in (0..config.priorities).rev() {
            let this = &*self;
            let walks = futures::future::join_all(partitions.iter().map(|p| {
                let claimed = &claims[p];
                this.walk_lane(queue, *p, lane, claimed, want)
            }))
            .await;
            let mut per_partition = Vec::new();
            for walk in walks {
                let (found, watch) = walk?;
                self.seen.extend(watch);
                per_partition.push(found.into_iter());
            }
            // Take from partitions in turn so that no partition starves.
            let mut progress = true;
            while out.len() < want && progress {
                progress = false;
                for found in per_partition.iter_mut() {
                    if out.len() >= want {
                        break;
                    }
                    if let Some(c) = found.next() {
                        out.push(c);
                        progress = true;
                    }
                }
            }
            if out.len() >= want {
                break;
            }
        }
        Ok(())
    }

    /// Unclaimed jobs of one lane of one partition, oldest first, and the paths worth watching.
    async fn walk_lane(
        &self,
        queue: &str,
        partition: u32,
        lane: u8,
        claimed: &HashSet<String>,
        want: usize,
    ) -> Result<(Vec<Candidate>, Vec<String>)> {
        let lane_path = self.layout.lane(queue, partition, lane);
        let mut segments = match self.client.list_children(&lane_path).await {
            Ok(s) => s,
            Err(zk::Error::NoNode) => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(Error::zk("list segments", lane_path, e)),
        };
        segments.sort();
        let mut watch = vec![lane_path.clone()];
        let mut found = Vec::new();
        for segment in segments {
            let path = format!("{lane_path}/{segment}");
            let mut children = match self.client.list_children(&path).await {
                Ok(c) => c,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(Error::zk("list jobs", path, e)),
            };
            if children.is_empty() {
                // Drained and nobody writing: remove it. Fails harmlessly if a job just arrived.
                drop(self.client.delete(&path, None));
                continue;
            }
            children.sort();
            if children.iter().any(|c| c == OPEN_MARKER) {
                watch.push(path.clone());
            }
            for node in children.into_iter().filter(|c| c.starts_with("j-")) {
                if claimed.contains(&claim::claim_name(lane, &segment, &node)) {
                    continue;
                }
                found.push(Candidate {
                    queue: queue.to_string(),
                    partition,
                    lane,
                    segment: segment.clone(),
                    node,
                });
                if found.len() >= want {
                    return Ok((found, watch));
                }
            }
        }
        Ok((found, watch))
    }

    /// Reads the data of `candidates` in multi-reads, in order.
    async fn read(&self, candidates: Vec<Candidate>) -> Result<Vec<Found>> {
        let paths: Vec<String> = candidates.iter().map(|c| c.path(&self.layout)).collect();
        let results = znode::get_many(&self.client, "read jobs", &paths).await?;
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

    /// Sleeps until a watched lane, segment or claim dir changes, or `fallback` passes.
    ///
    /// Arms watches on what the last (empty) scan saw. Returns `true` if it armed new ones:
    /// the caller should scan again before sleeping, in case something arrived meanwhile.
    pub(crate) async fn arm(&mut self) -> Result<bool> {
        self.drain_fired();
        let mut armed_new = false;
        for path in std::mem::take(&mut self.seen) {
            if self.armed.contains(&path) {
                continue;
            }
            match self.client.get_and_watch_children(&path).await {
                Ok((_, _, watcher)) => {
                    self.armed.insert(path.clone());
                    self.fired().push(
                        async move {
                            watcher.changed().await;
                            path
                        }
                        .boxed(),
                    );
                    armed_new = true;
                }
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(Error::zk("watch", path, e)),
            }
        }
        Ok(armed_new)
    }

    /// Waits for one watch to fire or the owned partitions to change, up to `fallback`.
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
            Some(path) = watch => {
                self.armed.remove(&path);
            }
            Ok(()) = owned.changed() => {}
            _ = tokio::time::sleep(fallback) => {}
        }
        self.drain_fired();
    }

    fn drain_fired(&mut self) {
        while let Some(Some(path)) = self.fired().next().now_or_never() {
            self.armed.remove(&path);
        }
    }

    fn fired(&mut self) -> &mut FuturesUnordered<WatchFuture> {
        self.fired.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

//! One job, found by id wherever it is (ready, running, delayed or dead), and cancelled.
//!
//! # Finding a job without reading jobs
//! Every place a job can be names it: a ready job's znode is `j-<kind tag><id fingerprint>-<seq>`
//! (the running ones too: a claim leaves the job znode where it is), the fingerprint being 32
//! bits of the id ([`crate::store::layout::id_fingerprint`]: for zkq's ids, the millisecond the
//! job was made); a delayed entry is `<due-ms>-<id>`; a dead letter is `dead/<id>`. So a search
//! reads names: the dead letter first (one stat), then the delayed buckets, then every segment
//! of every lane, listed in pipelined requests. Only the jobs whose name has the fingerprint are
//! read (the jobs made in the same millisecond: one, or the rest of its batch), and the record
//! confirms the id.
//!
//! A job moves while the search runs (a promotion out of a bucket already searched into a
//! segment already listed, say). So up to three passes run before the answer is "not found"; a
//! job that keeps moving is found by the pass after its move.

use futures::stream::{self, StreamExt};
use zookeeper_client as zk;

use crate::claim::{self, ClaimRecord};
use crate::error::{Error, Result};
use crate::job::Job;
use crate::producer::dead_letter_op;
use crate::queue::{self, QueueConfig};
use crate::stops::{self, CANCELLED};
use crate::store::codec;
use crate::store::layout::{id_fingerprint, parse_delayed_entry, parse_job_node};
use crate::store::txn::{self, Op};
use crate::store::znode;

use super::{Admin, STATS_IN_FLIGHT};

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Waiting in a lane.
    Ready { partition: u32 },
    /// Claimed: `worker` runs attempt `attempt`, started at `since_ms`.
    Running {
        partition: u32,
        worker: String,
        attempt: u32,
        since_ms: u64,
    },
    /// Waiting for its due time (a delayed enqueue, or a retry's backoff).
    Delayed { due_ms: u64 },
    /// In the dead letters since `died_ms`.
    Dead { died_ms: u64 },
}

impl JobState {
    /// `ready`, `running`, `delayed` or `dead`.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Ready { .. } => "ready",
            JobState::Running { .. } => "running",
            JobState::Delayed { .. } => "delayed",
            JobState::Dead { .. } => "dead",
        }
    }
}

/// A job as found: its queue, where it is, and its record.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub queue: String,
    pub state: JobState,
    pub job: Job,
}

/// What [`Admin::cancel_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// A ready or delayed job, now a dead letter with the error `cancelled`.
    Waiting,
    /// A running job, now a dead letter; `stopped` tells whether its worker confirmed that the
    /// attempt stopped (its process gone) within the wait.
    Running { worker: String, stopped: bool },
    /// The job was a dead letter already: nothing changed.
    AlreadyDead,
}

/// How long [`Admin::cancel_job`] waits for the worker to confirm a running attempt stopped.
const STOP_CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Candidates read at once: the jobs of one batch share a fingerprint.
const READS_IN_FLIGHT: usize = 64;

/// A job's znode, as the search found it.
#[derive(Debug, Clone)]
enum Spot {
    Lane {
        partition: u32,
        lane: u8,
        segment: String,
        node: String,
    },
    Delayed {
        entry: String,
        due_ms: u64,
    },
    Dead,
}

/// A job found: its queue, znode, record and the record's version.
struct Found {
    queue: String,
    path: String,
    job: Job,
    version: i32,
    state: JobState,
    /// The claim's path, for a running job.
    claim: Option<String>,
}

impl Admin {
    /// The job `id`, wherever it is.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no queue holds it (done jobs leave nothing behind); ZooKeeper
    /// errors.
    pub async fn job(&self, id: &str) -> Result<JobView> {
        let found = self.find_job(id).await?;
        Ok(JobView {
            queue: found.queue,
            state: found.state,
            job: found.job,
        })
    }

    /// Cancels the job `id`. A ready or delayed job becomes a dead letter with the error
    /// [`CANCELLED`], in one `multi`. So does a running one, whose claim goes in the same
    /// `multi` with a stop notice for its worker ([`crate::stops`]): the worker stops the
    /// attempt (its command gets SIGTERM, then SIGKILL after the stop grace) and does not retry
    /// it. The job stays visible in the dead letters and can be retried from there.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no queue holds it; ZooKeeper errors.
    pub async fn cancel_job(&self, id: &str) -> Result<Cancelled> {
        loop {
            let found = self.find_job(id).await?;
            let mut dead = found.job.clone();
            dead.record_error(CANCELLED);
            let mut ops = vec![Op::Delete {
                path: found.path.clone(),
                version: Some(found.version),
            }];
            let worker = match (&found.state, &found.claim) {
                (JobState::Dead { .. }, _) => return Ok(Cancelled::AlreadyDead),
                (JobState::Running { worker, .. }, Some(claim)) => {
                    znode::ensure_path(&self.client, self.layout.acl(), &self.layout.stops()).await?;
                    ops.push(Op::Delete {
                        path: claim.clone(),
                        version: None,
                    });
                    ops.push(stops::notice_op(&self.layout, worker, found.job.id, claim)?);
                    Some(worker.clone())
                }
                _ => None,
            };
            ops.push(dead_letter_op(&self.layout, &found.queue, &dead)?);
            match txn::commit(&self.client, self.layout.acl(), &ops).await {
                Ok(results) => {
                    let Some(worker) = worker else {
                        return Ok(Cancelled::Waiting);
                    };
                    let notice = results.iter().find_map(|r| match r {
                        zk::MultiWriteResult::Create { path, .. }
                            if path.starts_with(&self.layout.stops()) =>
                        {
                            Some(path.clone())
                        }
                        _ => None,
                    });
                    // The cancel committed: trouble while waiting only means "not confirmed".
                    let stopped = match notice {
                        Some(notice) => self.stop_confirmed(&notice).await.unwrap_or(false),
                        None => false,
                    };
                    return Ok(Cancelled::Running { worker, stopped });
                }
                // Moved meanwhile (claimed, settled, promoted): find it again.
                Err(e) if txn::lost_race(&e.source) => {}
                Err(e) => {
                    let error = e.into_error("cancel job", &ops);
                    if !error.is_outcome_unknown() {
                        return Err(error);
                    }
                    // Lost with the connection: the next search tells whether it committed
                    // (the job is dead, its history ending with `cancelled`).
                    self.reconnected().await?;
                    let _ = self.client.sync(&found.path).await;
                    let now = self.find_job(id).await?;
                    if matches!(now.state, JobState::Dead { .. })
                        && now.job.errors.last().is_some_and(|e| e.message == CANCELLED)
                    {
                        return Ok(match worker {
                            Some(worker) => Cancelled::Running {
                                worker,
                                stopped: false,
                            },
                            None => Cancelled::Waiting,
                        });
                    }
                }
            }
        }
    }

    /// Waits for the worker to delete the stop notice at `notice`, at most
    /// [`STOP_CONFIRM_WITHIN`]. Returns whether it did.
    async fn stop_confirmed(&self, notice: &str) -> Result<bool> {
        let wait = async {
            loop {
                match self.client.check_and_watch_stat(notice).await {
                    Ok((None, _)) => return Ok(true),
                    Ok((Some(_), watcher)) => {
                        watcher.changed().await;
                    }
                    Err(e) => return Err(Error::zk("watch stop notice", notice, e)),
                }
            }
        };
        match tokio::time::timeout(STOP_CONFIRM_WITHIN, wait).await {
            Ok(result) => result,
            Err(_) => Ok(false),
        }
    }

    /// Whether an attempt of `id` is still being stopped after a cancel.
    /// The ids of every job whose cancelled attempt is still being stopped.
    pub(super) async fn stopping_ids(&self) -> Result<std::collections::HashSet<String>> {
        stops::pending(&self.client, &self.layout).await
    }

    /// Searches for `id` (three passes before giving up, see the module docs) and reads it.
    /// Queues whose config cannot be read are passed over.
    async fn find_job(&self, id: &str) -> Result<Found> {
        let uuid = uuid::Uuid::parse_str(id)
            .map_err(|_| Error::NotFound(format!("no job with id {id:?} (a job id is a UUID)")))?;
        let id = uuid.to_string();
        let mut queues = Vec::new();
        for q in queue::list(&self.client, &self.layout).await? {
            match queue::load(&self.client, &self.layout, &q).await {
                Ok(Some(config)) => queues.push((q, config)),
                Ok(None) => {}
                Err(e) if queue::is_unreadable(&e) => {}
                Err(e) => return Err(e),
            }
        }
        for _ in 0..3 {
            for (q, config) in &queues {
                // A spot gone between the search and the read, or holding another job (a
                // fingerprint collision), is passed over.
                let spots = self.search(q, config, &uuid).await?;
                let mut reads = stream::iter(spots)
                    .map(|spot| self.read_spot(q, spot, &id))
                    .buffer_unordered(READS_IN_FLIGHT);
                while let Some(read) = reads.next().await {
                    if let Some(found) = read? {
                        if found.job.id.0 == uuid {
                            return Ok(found);
                        }
                    }
                }
            }
        }
        Err(Error::NotFound(format!(
            "no job with id {id:?}: not ready, running, delayed or dead in any queue (done jobs leave nothing behind)"
        )))
    }

    /// Where `id` may be in `queue`, by names only: the dead letter or delayed entry named by
    /// it, or else every job znode whose name has its fingerprint.
    async fn search(&self, queue: &str, config: &QueueConfig, id: &uuid::Uuid) -> Result<Vec<Spot>> {
        let dead = self.layout.dead_job(queue, &id.to_string());
        match self.client.check_stat(&dead).await {
            Ok(Some(_)) => return Ok(vec![Spot::Dead]),
            Ok(None) => {}
            Err(e) => return Err(Error::zk("stat dead letter", dead, e)),
        }
        let delayed = self.layout.delayed(queue);
        let buckets: Vec<String> = znode::children(&self.client, &delayed)
            .await?
            .into_iter()
            .map(|b| format!("{delayed}/{b}"))
            .collect();
        let suffix = format!("-{id}");
        let entries = self
            .matching_children(buckets, |name| name.ends_with(&suffix))
            .await?;
        if let Some((bucket, entry)) = entries.into_iter().next() {
            let due_ms = parse_delayed_entry(&entry).unwrap_or(0);
            let bucket = bucket.rsplit('/').next().unwrap_or_default().to_string();
            return Ok(vec![Spot::Delayed {
                entry: format!("{bucket}/{entry}"),
                due_ms,
            }]);
        }
        let lanes: Vec<(u32, u8)> = (0..config.partitions)
            .flat_map(|p| (0..config.priorities).map(move |l| (p, l)))
            .collect();
        let listed: Vec<Result<Vec<String>>> = stream::iter(lanes)
            .map(|(p, l)| async move {
                let lane = self.layout.lane(queue, p, l);
                Ok(znode::children(&self.client, &lane)
                    .await?
                    .into_iter()
                    .map(|s| format!("{lane}/{s}"))
                    .collect())
            })
            .buffer_unordered(STATS_IN_FLIGHT)
            .collect()
            .await;
        let mut segments = Vec::new();
        for l in listed {
            segments.extend(l?);
        }
        let fingerprint = id_fingerprint(id);
        let named = self
            .matching_children(segments, |name| {
                parse_job_node(name).and_then(|n| n.fingerprint) == Some(fingerprint.as_str())
            })
            .await?;
        let mut spots = Vec::with_capacity(named.len());
        for (segment_path, node) in named {
            // <queue>/p/<partition>/l<lane>/<segment>
            let mut parts = segment_path.rsplit('/');
            let segment = parts.next().unwrap_or_default().to_string();
            let lane = parts.next().and_then(|l| l.strip_prefix('l')?.parse().ok());
            let partition = parts.next().and_then(|p| p.parse().ok());
            if let (Some(partition), Some(lane)) = (partition, lane) {
                spots.push(Spot::Lane {
                    partition,
                    lane,
                    segment,
                    node,
                });
            }
        }
        Ok(spots)
    }

    /// The children of `dirs` whose name matches, with their parent, the dirs listed in
    /// pipelined requests.
    async fn matching_children(
        &self,
        dirs: Vec<String>,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, String)>> {
        let mut listings = stream::iter(dirs)
            .map(|dir| async move {
                let children = znode::children(&self.client, &dir).await;
                (dir, children)
            })
            .buffer_unordered(STATS_IN_FLIGHT);
        let mut found = Vec::new();
        while let Some((dir, children)) = listings.next().await {
            for name in children?.into_iter().filter(|c| matches(c)) {
                found.push((dir.clone(), name));
            }
        }
        Ok(found)
    }

    /// Reads the job at `spot`, and its claim if it has one. `None` if it moved away.
    async fn read_spot(&self, queue: &str, spot: Spot, id: &str) -> Result<Option<Found>> {
        let path = match &spot {
            Spot::Lane {
                partition,
                lane,
                segment,
                node,
            } => format!(
                "{}/{node}",
                self.layout.segment(queue, *partition, *lane, segment)
            ),
            Spot::Delayed { entry, .. } => format!("{}/{entry}", self.layout.delayed(queue)),
            Spot::Dead => self.layout.dead_job(queue, id),
        };
        let (data, stat) = match self.client.get_data(&path).await {
            Ok(read) => read,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(Error::zk("read job", path, e)),
        };
        let job: Job = codec::decode(&path, &data)?;
        let (state, claim) = match &spot {
            Spot::Dead => (
                JobState::Dead {
                    died_ms: stat.ctime.max(0) as u64,
                },
                None,
            ),
            Spot::Delayed { due_ms, .. } => (JobState::Delayed { due_ms: *due_ms }, None),
            Spot::Lane {
                partition,
                lane,
                segment,
                node,
            } => {
                let claim = format!(
                    "{}/{}",
                    self.layout.claims(queue, *partition),
                    claim::claim_name(*lane, segment, node)
                );
                match self.client.get_data(&claim).await {
                    Ok((data, _)) => {
                        let record: ClaimRecord = codec::decode(&claim, &data)?;
                        (
                            JobState::Running {
                                partition: *partition,
                                worker: record.worker,
                                attempt: record.attempt,
                                since_ms: record.at_ms,
                            },
                            Some(claim),
                        )
                    }
                    Err(zk::Error::NoNode) => (
                        JobState::Ready {
                            partition: *partition,
                        },
                        None,
                    ),
                    Err(e) => return Err(Error::zk("read claim", claim, e)),
                }
            }
        };
        Ok(Some(Found {
            queue: queue.to_string(),
            path,
            job,
            version: stat.version,
            state,
            claim,
        }))
    }
}

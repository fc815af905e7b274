//! Queue depth and fleet state, from child counts.

use std::collections::{BTreeMap, HashSet};

use futures::stream::{self, StreamExt};
use serde::Serialize;
use zookeeper_client as zk;

use crate::claim;
use crate::error::{Error, Result};
use crate::job::Job;
use crate::queue::{self, QueueConfig};
use crate::registry::{self, WorkerInfo};
use crate::store::codec;
use crate::store::layout::{self, OPEN_MARKER};
use crate::store::znode;

use super::{Admin, STATS_IN_FLIGHT};

/// One queue's depth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub partitions: u32,
    /// Paused: workers claim none of its jobs.
    pub paused: bool,
    /// Ready jobs (not running) by priority: index 0 is priority 0.
    pub ready: Vec<u64>,
    /// Jobs waiting for their due time: delayed enqueues and retries.
    pub delayed: u64,
    /// Jobs running: claims held by live workers.
    pub running: u64,
    pub dead: u64,
    /// Ready jobs of kinds that no live worker of the queue runs, by kind: they wait until a
    /// worker that runs them joins.
    pub unhandled: Vec<UnhandledKind>,
    /// Why the queue could not be counted (its config cannot be read), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One partition of a queue: ready jobs per lane (priority), claims held, and owners.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionStats {
    pub partition: u32,
    /// Ready jobs (not running) per lane: index 0 is priority 0.
    pub ready: Vec<u64>,
    /// Claims held: jobs running.
    pub running: u64,
    /// The workers that own it, one per group of workers with the same kinds; none while no
    /// worker can take it.
    pub owners: Vec<String>,
}

/// What [`Admin::queue_detail`] shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueDetail {
    pub config: QueueConfig,
    pub stats: QueueStats,
    pub partitions: Vec<PartitionStats>,
}

/// Ready jobs of one kind that no live worker runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnhandledKind {
    pub kind: String,
    pub ready: u64,
}

/// The fleet: live workers and the elected scheduler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FleetStats {
    pub workers: u64,
    /// The scheduler leader's id, while one leads.
    pub scheduler_leader: Option<String>,
    /// The scheduler epoch (the fencing token of the current or last leader).
    pub scheduler_epoch: Option<i32>,
}

/// What `zkq-admin stats` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub queues: Vec<QueueStats>,
    pub fleet: FleetStats,
}

impl Admin {
    /// The depth of `queue`, or of every queue, and the fleet's state.
    ///
    /// # Errors
    /// [`Error::InvalidName`] for a bad queue name, [`Error::NotFound`] for a queue that does
    /// not exist; ZooKeeper errors.
    pub async fn stats(&self, queue: Option<&str>) -> Result<Stats> {
        let names = match queue {
            Some(q) => {
                crate::store::layout::validate_queue_name(q)?;
                vec![q.to_string()]
            }
            None => queue::list(&self.client, &self.layout).await?,
        };
        // Unhandled kinds need every registration; one that cannot be read leaves them out.
        let workers = registry::list(&self.client, &self.layout).await.ok();
        let mut queues = Vec::with_capacity(names.len());
        for name in names {
            let config = match queue::load(&self.client, &self.layout, &name).await {
                Ok(Some(config)) => config,
                Ok(None) => return Err(Error::NotFound(format!("no queue named {name:?}"))),
                Err(e) => {
                    queues.push(QueueStats {
                        queue: name,
                        problem: Some(e.to_string()),
                        ..QueueStats::default()
                    });
                    continue;
                }
            };
            let mut stats = self.queue_stats(&name, &config).await?;
            if let Some(workers) = &workers {
                stats.unhandled = self.unhandled(&name, &config, workers).await?;
            }
            queues.push(stats);
        }
        Ok(Stats {
            queues,
            fleet: self.fleet_stats().await?,
        })
    }

    /// The depth of every queue whose config can be read, from child counts only: what the
    /// scheduler leader exports every few seconds (no unhandled kinds, which may list jobs).
    pub(crate) async fn depth(&self) -> Result<Vec<QueueStats>> {
        let mut queues = Vec::new();
        for name in queue::list(&self.client, &self.layout).await? {
            if let Ok(Some(config)) = queue::load(&self.client, &self.layout, &name).await {
                queues.push(self.queue_stats(&name, &config).await?);
            }
        }
        Ok(queues)
    }

    async fn queue_stats(&self, queue: &str, config: &QueueConfig) -> Result<QueueStats> {
        let partitions = self.partition_counts(queue, config).await?;
        self.queue_stats_of(queue, config, &partitions).await
    }

    /// A queue's depth, given its partitions' counts.
    async fn queue_stats_of(
        &self,
        queue: &str,
        config: &QueueConfig,
        partitions: &[PartitionStats],
    ) -> Result<QueueStats> {
        let mut ready = vec![0u64; config.priorities as usize];
        for p in partitions {
            for (sum, count) in ready.iter_mut().zip(&p.ready) {
                *sum += count;
            }
        }
        let running = partitions.iter().map(|p| p.running).sum();
        let buckets = znode::children(&self.client, &self.layout.delayed(queue)).await?;
        let delayed_dir = self.layout.delayed(queue);
        let delayed = self
            .sum_children(buckets.iter().map(|b| format!("{delayed_dir}/{b}")).collect())
            .await?;
        let dead = self.child_count(&self.layout.dead(queue)).await?.unwrap_or(0);
        Ok(QueueStats {
            queue: queue.to_string(),
            partitions: config.partitions,
            paused: config.paused,
            ready,
            delayed,
            running,
            dead,
            unhandled: Vec::new(),
            problem: None,
        })
    }

    /// Ready jobs per lane and claims of every partition of `queue`, from child counts.
    async fn partition_counts(&self, queue: &str, config: &QueueConfig) -> Result<Vec<PartitionStats>> {
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for partition in 0..config.partitions {
            let claims = znode::children(&self.client, &self.layout.claims(queue, partition)).await?;
            let mut ready = Vec::with_capacity(config.priorities as usize);
            for lane in 0..config.priorities {
                let lane_path = self.layout.lane(queue, partition, lane);
                let jobs = self.jobs_in_lane(&lane_path).await?;
                let prefix = format!("l{lane}.");
                let claimed = claims.iter().filter(|c| c.starts_with(&prefix)).count() as u64;
                ready.push(jobs.saturating_sub(claimed));
            }
            partitions.push(PartitionStats {
                partition,
                ready,
                running: claims.len() as u64,
                owners: Vec::new(),
            });
        }
        Ok(partitions)
    }

    /// One queue in detail: its settings, its depth, and each partition's lanes, claims and
    /// owners (per the scheduler's assignment).
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::NotFound`] for a queue that does not exist; ZooKeeper
    /// errors.
    pub async fn queue_detail(&self, queue: &str) -> Result<QueueDetail> {
        crate::store::layout::validate_queue_name(queue)?;
        let Some(config) = queue::load(&self.client, &self.layout, queue).await? else {
            return Err(Error::NotFound(format!("no queue named {queue:?}")));
        };
        let mut partitions = self.partition_counts(queue, &config).await?;
        let stats = self.queue_stats_of(queue, &config, &partitions).await?;
        for (p, owners) in partitions.iter_mut().zip(self.owners(queue).await?) {
            p.owners = owners;
        }
        Ok(QueueDetail {
            config,
            stats,
            partitions,
        })
    }

    /// Ready jobs of `queue` whose kind none of the live `workers` of the queue runs. Nothing
    /// to count (no listing) when one of them runs every kind. Otherwise every segment is
    /// listed and the kind tags in the job names are counted (a name without a tag is not);
    /// one job per unknown tag is read for its kind's name.
    async fn unhandled(
        &self,
        queue: &str,
        config: &QueueConfig,
        workers: &[WorkerInfo],
    ) -> Result<Vec<UnhandledKind>> {
        let mut runs = HashSet::new();
        for w in workers.iter().filter(|w| w.queues.iter().any(|q| q == queue)) {
            for kind in &w.kinds {
                if kind == "*" {
                    return Ok(Vec::new());
                }
                runs.insert(layout::kind_tag(kind));
            }
        }
        // tag -> (count, a job with it)
        let mut tags: BTreeMap<String, (u64, String)> = BTreeMap::new();
        for partition in 0..config.partitions {
            let claims: HashSet<String> =
                znode::children(&self.client, &self.layout.claims(queue, partition))
                    .await?
                    .into_iter()
                    .collect();
            for lane in 0..config.priorities {
                let lane_path = self.layout.lane(queue, partition, lane);
                let segments = znode::children(&self.client, &lane_path).await?;
                let listed: Vec<(String, Result<Vec<String>>)> = stream::iter(segments)
                    .map(|segment| async {
                        let path = format!("{lane_path}/{segment}");
                        let children = znode::children(&self.client, &path).await;
                        (segment, children)
                    })
                    .buffer_unordered(STATS_IN_FLIGHT)
                    .collect()
                    .await;
                for (segment, children) in listed {
                    for node in children? {
                        let Some(tag) = layout::parse_job_node(&node).and_then(|n| n.tag) else {
                            continue;
                        };
                        if runs.contains(tag) || claims.contains(&claim::claim_name(lane, &segment, &node)) {
                            continue;
                        }
                        let entry = tags
                            .entry(tag.to_string())
                            .or_insert_with(|| (0, format!("{lane_path}/{segment}/{node}")));
                        entry.0 += 1;
                    }
                }
            }
        }
        let mut unhandled = Vec::with_capacity(tags.len());
        for (tag, (ready, sample)) in tags {
            let kind = match self.client.get_data(&sample).await {
                Ok((data, _)) => codec::decode::<Job>(&sample, &data)
                    .map(|j| j.kind)
                    .unwrap_or_else(|_| format!("(kind tag {tag})")),
                Err(_) => format!("(kind tag {tag})"),
            };
            unhandled.push(UnhandledKind { kind, ready });
        }
        unhandled.sort_by(|a, b| b.ready.cmp(&a.ready).then_with(|| a.kind.cmp(&b.kind)));
        Ok(unhandled)
    }

    /// Job znodes in a lane, claimed or not: each segment's children less its `open` marker.
    async fn jobs_in_lane(&self, lane: &str) -> Result<u64> {
        let segments: Vec<String> = znode::children(&self.client, lane)
            .await?
            .into_iter()
            .map(|s| format!("{lane}/{s}"))
            .collect();
        let markers: Vec<String> = segments.iter().map(|s| format!("{s}/{OPEN_MARKER}")).collect();
        let children = self.sum_children(segments).await?;
        let open = stream::iter(markers)
            .map(|m| async move { self.client.check_stat(&m).await })
            .buffer_unordered(STATS_IN_FLIGHT)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(Some(_))))
            .count() as u64;
        Ok(children.saturating_sub(open))
    }

    async fn fleet_stats(&self) -> Result<FleetStats> {
        let workers = znode::children(&self.client, &self.layout.workers()).await?.len() as u64;
        let scheduler = self.layout.scheduler();
        let candidates = znode::children(&self.client, &format!("{scheduler}/candidates")).await?;
        let epoch_path = format!("{scheduler}/epoch");
        let (leader, epoch) = match self.client.get_data(&epoch_path).await {
            Ok((data, stat)) => {
                let name = String::from_utf8_lossy(&data).into_owned();
                let leading = !candidates.is_empty() && !name.is_empty();
                (leading.then_some(name), Some(stat.version))
            }
            Err(zk::Error::NoNode) => (None, None),
            Err(e) => return Err(Error::zk("read scheduler epoch", epoch_path, e)),
        };
        Ok(FleetStats {
            workers,
            scheduler_leader: leader,
            scheduler_epoch: epoch,
        })
    }

    async fn child_count(&self, path: &str) -> Result<Option<u64>> {
        match self.client.check_stat(path).await {
            Ok(stat) => Ok(stat.map(|s| s.num_children as u64)),
            Err(e) => Err(Error::zk("stat", path, e)),
        }
    }

    /// The sum of the child counts of `paths`, stats pipelined.
    async fn sum_children(&self, paths: Vec<String>) -> Result<u64> {
        let counts: Vec<Result<Option<u64>>> = stream::iter(paths)
            .map(|p| async move { self.child_count(&p).await })
            .buffer_unordered(STATS_IN_FLIGHT)
            .collect()
            .await;
        let mut sum = 0;
        for count in counts {
            sum += count?.unwrap_or(0);
        }
        Ok(sum)
    }
}

//! The producer: validates jobs and commits them to ZooKeeper.
//!
//! A call returns only after ZooKeeper committed the jobs. A batch is one `multi`: all of its
//! jobs are enqueued or none is. Ready jobs go to a partition (by partition key, or round robin)
//! and to their priority lane, into a segment this producer owns ([`crate::segment`]); delayed
//! jobs go to the queue's delayed set, from which they are promoted when due.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use tracing::{debug, instrument};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{Job, JobId, NewJob};
use crate::limits::MAX_REQUEST_BYTES;
use crate::queue::{self, QueueConfig};
use crate::segment::{LaneKey, Segments};
use crate::store::codec;
use crate::store::layout::{self, Layout};
use crate::store::txn::{self, NodeKind, Op};
use crate::store::znode::{ZkConfig, PERSISTENT};
use crate::telemetry;

/// How often a `multi` is retried into fresh segments when a segment vanished under it.
const SEGMENT_RETRIES: usize = 5;

/// Enqueues jobs. Cheap to share: wrap it in an `Arc` and call it from many tasks; their
/// requests are pipelined over one ZooKeeper session.
#[derive(Debug)]
pub struct Producer {
    client: zk::Client,
    layout: Layout,
    /// Config used when a queue is created on first use.
    default_config: QueueConfig,
    configs: Mutex<HashMap<String, QueueConfig>>,
    segments: tokio::sync::Mutex<Segments>,
    round_robin: AtomicU32,
}

/// A job ready to be committed, with its target.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    Ready(Job),
    Delayed { job: Job, due_ms: u64 },
}

impl Producer {
    /// Connects to ZooKeeper and uses the znodes under `root` (such as `/zkq`).
    pub async fn connect(zk: &ZkConfig, root: &str) -> Result<Producer> {
        let layout = Layout::new(root)?;
        let client = zk.connect().await?;
        Ok(Producer::with_client(client, layout))
    }

    /// A producer on an existing session.
    pub fn with_client(client: zk::Client, layout: Layout) -> Producer {
        Producer {
            client,
            layout,
            default_config: QueueConfig::default(),
            configs: Mutex::new(HashMap::new()),
            segments: tokio::sync::Mutex::new(Segments::default()),
            round_robin: AtomicU32::new(rand::random()),
        }
    }

    /// The config used for queues this producer creates on first use.
    pub fn with_default_config(mut self, config: QueueConfig) -> Producer {
        self.default_config = config;
        self
    }

    /// Creates `name` with `config` if it does not exist; returns the config in force.
    pub async fn create_queue(&self, name: &str, config: &QueueConfig) -> Result<QueueConfig> {
        let config = queue::ensure(&self.client, &self.layout, name, config).await?;
        self.cache(name, &config);
        Ok(config)
    }

    /// Enqueues one job; returns its id once ZooKeeper committed it.
    pub async fn enqueue(&self, queue: &str, job: NewJob) -> Result<JobId> {
        Ok(self.enqueue_batch(queue, vec![job]).await?[0])
    }

    /// Enqueues jobs atomically (one `multi`): all of them, or none when an error is returned.
    ///
    /// # Errors
    /// Validation errors (bad names, oversized payloads, a batch over [`MAX_REQUEST_BYTES`])
    /// come before anything is sent. [`Error::OutcomeUnknown`] means the connection dropped with
    /// the request in flight: the jobs may or may not be enqueued.
    #[instrument(skip_all, fields(queue = queue, jobs = jobs.len()))]
    pub async fn enqueue_batch(&self, queue: &str, jobs: Vec<NewJob>) -> Result<Vec<JobId>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let config = self.config(queue).await?;
        let mut placements = Vec::with_capacity(jobs.len());
        for new in jobs {
            let (job, delay) = new.into_job(
                config.priorities,
                config.max_attempts,
                config.max_payload_bytes as usize,
            )?;
            placements.push(match delay {
                Some(due_ms) => Placement::Delayed { job, due_ms },
                None => Placement::Ready(job),
            });
        }
        let ids: Vec<JobId> = placements.iter().map(|p| p.job().id).collect();
        let count = ids.len() as u64;
        self.commit(queue, &config, placements, Vec::new()).await?;
        metrics::counter!(telemetry::ENQUEUED, "queue" => queue.to_string()).increment(count);
        debug!(count, "enqueued");
        Ok(ids)
    }

    /// Checks `job` against `queue`'s limits as [`Producer::enqueue`] would, without sending
    /// anything: a caller with many jobs can refuse bad input before any of it is enqueued.
    ///
    /// # Errors
    /// The validation error [`Producer::enqueue`] would return; reading (or creating) the
    /// queue's config can fail as in [`Producer::enqueue`].
    pub async fn check(&self, queue: &str, job: &NewJob) -> Result<()> {
        let config = self.config(queue).await?;
        let (job, _) = job.clone().into_job(
            config.priorities,
            config.max_attempts,
            config.max_payload_bytes as usize,
        )?;
        let bytes = codec::encode(&job)?.len();
        if bytes + self.layout.queue(queue).len() + 100 > MAX_REQUEST_BYTES {
            return Err(Error::InvalidJob(format!(
                "the job's record takes {bytes} bytes, over what one ZooKeeper request carries"
            )));
        }
        Ok(())
    }

    /// The request bytes a job record of `encoded` bytes takes in a `multi` of [`Self::commit`]:
    /// the record, and the path of a job or delayed entry with room for segment and sequence
    /// names.
    pub(crate) fn placement_bytes(&self, queue: &str, encoded: usize) -> usize {
        encoded + self.layout.queue(queue).len() + 100
    }

    /// Commits `placements` together with `extra` operations (which come first in the `multi`)
    /// as one transaction. Used by enqueue, promotion of delayed jobs and retries.
    pub(crate) async fn commit(
        &self,
        queue: &str,
        config: &QueueConfig,
        placements: Vec<Placement>,
        extra: Vec<Op>,
    ) -> Result<()> {
        let mut encoded = Vec::with_capacity(placements.len());
        let mut budget = extra.iter().map(Op::wire_size).sum::<usize>();
        for placement in &placements {
            let bytes = codec::encode(placement.job())?;
            budget += self.placement_bytes(queue, bytes.len());
            encoded.push(bytes);
        }
        if budget > MAX_REQUEST_BYTES {
            return Err(Error::InvalidJob(format!(
                "a batch of {} jobs needs about {budget} bytes, over the {MAX_REQUEST_BYTES}-byte limit of one \
                 ZooKeeper request: split it into smaller batches",
                placements.len()
            )));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            // Buckets must exist before the multi creates entries in them: each one once.
            let mut buckets: Vec<String> = placements
                .iter()
                .filter_map(|p| match p {
                    Placement::Delayed { due_ms, .. } => Some(layout::delayed_bucket_name(*due_ms)),
                    Placement::Ready(_) => None,
                })
                .collect();
            buckets.sort();
            buckets.dedup();
            futures::future::try_join_all(buckets.iter().map(|b| self.ensure_bucket(queue, b))).await?;
            let mut ops = extra.clone();
            let mut lanes: Vec<(LaneKey, Vec<Vec<u8>>)> = Vec::new();
            for (placement, bytes) in placements.iter().zip(&encoded) {
                match placement {
                    Placement::Delayed { job, due_ms } => {
                        let bucket = layout::delayed_bucket_name(*due_ms);
                        let path = format!(
                            "{}/{}",
                            self.layout.delayed_bucket(queue, &bucket),
                            layout::delayed_entry_name(*due_ms, &job.id.0)
                        );
                        ops.push(Op::Create {
                            path,
                            data: bytes.clone(),
                            kind: NodeKind::Persistent,
                        });
                    }
                    Placement::Ready(job) => {
                        let key = LaneKey {
                            queue: queue.to_string(),
                            partition: self.partition_for(job, config.partitions),
                            lane: job.priority,
                        };
                        match lanes.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, list)) => list.push(bytes.clone()),
                            None => lanes.push((key, vec![bytes.clone()])),
                        }
                    }
                }
            }
            let (sent, used) = {
                let mut segments = self.segments.lock().await;
                let mut used = Vec::new();
                for (key, jobs) in lanes {
                    used.extend(
                        segments
                            .append(
                                &self.client,
                                &self.layout,
                                &key,
                                config.segment_size,
                                jobs,
                                &mut ops,
                            )
                            .await?,
                    );
                }
                (txn::commit(&self.client, &ops), used)
            };
            let Err(err) = sent.await else {
                return Ok(());
            };
            let in_extra = err.index.is_some_and(|i| i < extra.len());
            let markers = self.segments.lock().await.forget(&used);
            self.delete_best_effort(markers);
            // NoNode on our own ops means a segment (or bucket) was removed under us; anything
            // else, or a failure in the caller's ops, is a real conflict.
            let segment_vanished = !in_extra && err.source == zk::Error::NoNode && attempt < SEGMENT_RETRIES;
            if !segment_vanished {
                return Err(err.into_error("commit jobs", &ops));
            }
            debug!(
                path = err.path(&ops),
                attempt, "segment changed under the batch; retrying into a fresh one"
            );
        }
    }

    /// The queue's config, creating the queue with the default config on first use.
    pub(crate) async fn config(&self, queue: &str) -> Result<QueueConfig> {
        layout::validate_queue_name(queue)?;
        if let Some(config) = self.lock_configs().get(queue) {
            return Ok(config.clone());
        }
        let config = queue::ensure(&self.client, &self.layout, queue, &self.default_config).await?;
        self.cache(queue, &config);
        Ok(config)
    }

    pub(crate) fn cache(&self, queue: &str, config: &QueueConfig) {
        self.lock_configs().insert(queue.to_string(), config.clone());
    }

    fn lock_configs(&self) -> std::sync::MutexGuard<'_, HashMap<String, QueueConfig>> {
        self.configs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partition_for(&self, job: &Job, partitions: u32) -> u32 {
        match &job.partition_key {
            Some(key) => partition_of_key(key, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }

    async fn ensure_bucket(&self, queue: &str, bucket: &str) -> Result<()> {
        let path = self.layout.delayed_bucket(queue, bucket);
        match self.client.create(&path, &[], &PERSISTENT).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(Error::zk("create delayed bucket", path, e)),
        }
    }

    fn delete_best_effort(&self, paths: Vec<String>) {
        for path in paths {
            // Sent now; the reply does not matter (the marker goes with the session anyway).
            drop(self.client.delete(&path, None));
        }
    }

    /// The session this producer uses.
    pub fn client(&self) -> &zk::Client {
        &self.client
    }

    /// The layout this producer writes to.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Releases this producer's open segments so consumers can clean them up once drained, and
    /// closes the session.
    pub async fn close(self) {
        let markers = self.segments.lock().await.drain_markers();
        let deletes: Vec<_> = markers.iter().map(|m| self.client.delete(m, None)).collect();
        futures::future::join_all(deletes).await;
    }
}

impl Placement {
    pub(crate) fn job(&self) -> &Job {
        match self {
            Placement::Ready(job) | Placement::Delayed { job, .. } => job,
        }
    }
}

/// The partition for a partition key: FNV-1a (64-bit) of the key's UTF-8 bytes, modulo the
/// partition count. Stable across processes and languages.
pub fn partition_of_key(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// Ops that put `job` into the dead letters.
pub(crate) fn dead_letter_op(layout: &Layout, queue: &str, job: &Job) -> Result<Op> {
    Ok(Op::Create {
        path: layout.dead_job(queue, &job.id.to_string()),
        data: codec::encode(job)?,
        kind: NodeKind::Persistent,
    })
}

#[cfg(test)]
mod tests {
    use super::partition_of_key;

    #[test]
    fn partition_keys_hash_stably() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(
            partition_of_key("a", 1 << 31),
            (0xaf63dc4c8601ec8c_u64 % (1 << 31)) as u32
        );
        assert_eq!(partition_of_key("user-7", 8), partition_of_key("user-7", 8));
        assert!(partition_of_key("x", 8) < 8);
    }
}

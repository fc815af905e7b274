//! Placement: where a job goes (a segment of its lane when ready, a delayed bucket, the dead
//! letters) and the `multi` that puts it there, together with whatever else the caller must
//! commit with it (a claim's removal, a leader's fence, a schedule's new last tick). Enqueue,
//! settling (retries), promotion and cron fires all write jobs through here.

use std::sync::atomic::Ordering;

use tracing::debug;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::Job;
use crate::limits::MAX_REQUEST_BYTES;
use crate::queue::QueueConfig;
use crate::store::codec;
use crate::store::layout::{self, Layout};
use crate::store::txn::{self, NodeKind, Op};

use super::segment::{LaneKey, NamedRecord};
use super::Producer;

/// How often a `multi` is retried into fresh segments when a segment vanished under it.
const SEGMENT_RETRIES: usize = 5;

/// A job ready to be committed, with its target.
#[derive(Debug, Clone)]
pub(crate) enum Placement {
    Ready(Job),
    Delayed { job: Job, due_ms: u64 },
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
    (layout::fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Ops that put `job` into the dead letters.
pub(crate) fn dead_letter_op(layout: &Layout, queue: &str, job: &Job) -> Result<Op> {
    Ok(Op::Create {
        path: layout.dead_job(queue, &job.id.to_string()),
        data: codec::encode(job)?,
        kind: NodeKind::Persistent,
    })
}

impl Producer {
    /// The request bytes a job record of `encoded` bytes takes in a `multi` of [`Self::commit`]:
    /// the record, the path of a job or delayed entry (partition, lane, segment and a job name
    /// of 29 bytes, or a bucket and an entry of 50) and the operation's framing.
    pub(crate) fn placement_bytes(&self, queue: &str, encoded: usize) -> usize {
        encoded + self.layout.queue(queue).len() + 200
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
            let mut lanes: Vec<(LaneKey, Vec<NamedRecord>)> = Vec::new();
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
                        let named = (layout::job_node_prefix(&job.kind, &job.id.0), bytes.clone());
                        match lanes.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, list)) => list.push(named),
                            None => lanes.push((key, vec![named])),
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
                (txn::commit(&self.client, self.layout.acl(), &ops), used)
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

    pub(crate) fn partition_for(&self, job: &Job, partitions: u32) -> u32 {
        match &job.partition_key {
            Some(key) => partition_of_key(key, partitions),
            None => self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions,
        }
    }

    pub(crate) async fn ensure_bucket(&self, queue: &str, bucket: &str) -> Result<()> {
        let path = self.layout.delayed_bucket(queue, bucket);
        let persistent = self.layout.acl().options(zk::CreateMode::Persistent);
        match self.client.create(&path, &[], &persistent).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(Error::zk("create delayed bucket", path, e)),
        }
    }

    pub(crate) fn delete_best_effort(&self, paths: Vec<String>) {
        for path in paths {
            // Sent now; the reply does not matter (the marker goes with the session anyway).
            drop(self.client.delete(&path, None));
        }
    }
}

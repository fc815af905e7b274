//! The live workers, with what each runs and owns.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::assignment;
use crate::claim::ClaimRecord;
use crate::error::Result;
use crate::queue::QueueConfig;
use crate::registry::{self, WorkerInfo};
use crate::store::codec;
use crate::store::znode;

use super::Admin;

/// A live worker as `zkq-admin workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    /// Job kinds it handles; `*` when it handles every kind.
    pub kinds: Vec<String>,
    pub concurrency: u32,
    /// zkq version of the worker.
    pub version: String,
    pub started_at_ms: u64,
    /// Jobs running now (claims it holds).
    pub running: u64,
    /// Partitions it owns, by queue, per the scheduler's assignment.
    pub partitions: BTreeMap<String, Vec<u32>>,
}

impl Admin {
    /// Every live worker (registered, so its session lives), by id.
    ///
    /// # Errors
    /// ZooKeeper errors; an unreadable registration.
    pub async fn workers(&self) -> Result<Vec<WorkerView>> {
        let infos = registry::list(&self.client, &self.layout).await?;
        let mut views: Vec<WorkerView> = infos.into_iter().map(view).collect();
        for queue in self.queue_names(None).await? {
            let Ok(Some(config)) = crate::queue::load(&self.client, &self.layout, &queue).await else {
                continue;
            };
            let running = self.claims_by_worker(&queue, &config).await?;
            let owners = self.owners(&queue).await.unwrap_or_default();
            for view in &mut views {
                view.running += running.get(&view.id).copied().unwrap_or(0);
                let owned: Vec<u32> = owners
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.contains(&view.id))
                    .map(|(p, _)| p as u32)
                    .collect();
                if !owned.is_empty() {
                    view.partitions.insert(queue.clone(), owned);
                }
            }
        }
        Ok(views)
    }

    /// The owners of each of `queue`'s partitions (index = partition), one per group of workers
    /// that run the same kinds, as the scheduler last assigned them; empty before its first
    /// assignment. One read.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`]; ZooKeeper errors; an unreadable record.
    pub async fn owners(&self, queue: &str) -> Result<Vec<Vec<String>>> {
        crate::store::layout::validate_queue_name(queue)?;
        let assignment = assignment::read(&self.client, &self.layout, queue).await?;
        Ok(assignment.map(|a| a.owners).unwrap_or_default())
    }

    /// How many claims of `queue` each worker holds, from the claim records.
    async fn claims_by_worker(&self, queue: &str, config: &QueueConfig) -> Result<BTreeMap<String, u64>> {
        let mut paths = Vec::new();
        for partition in 0..config.partitions {
            let dir = self.layout.claims(queue, partition);
            paths.extend(
                znode::children(&self.client, &dir)
                    .await?
                    .into_iter()
                    .map(|c| format!("{dir}/{c}")),
            );
        }
        let mut counts = BTreeMap::new();
        for (path, record) in paths
            .iter()
            .zip(znode::get_many(&self.client, "read claims", &paths).await?)
        {
            if let Some(claim) = record.and_then(|(data, _)| codec::decode::<ClaimRecord>(path, &data).ok()) {
                *counts.entry(claim.worker).or_default() += 1;
            }
        }
        Ok(counts)
    }
}

fn view(info: WorkerInfo) -> WorkerView {
    WorkerView {
        id: info.id,
        host: info.host,
        pid: info.pid,
        queues: info.queues,
        kinds: info.kinds,
        concurrency: info.concurrency,
        version: info.version,
        started_at_ms: info.started_at_ms,
        running: 0,
        partitions: BTreeMap::new(),
    }
}

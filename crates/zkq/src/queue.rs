//! Queues and their configuration, stored in the queue's znode.
//!
//! The config is written once when the queue is created (explicitly, or on first use with the
//! defaults) and read by producers and workers. Creating a queue lays out its whole subtree in
//! one `multi`, so a queue is either complete or absent.

use serde::{Deserialize, Serialize};
use std::collections::HashSet;

use tracing::{info, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::limits::{DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES};
use crate::retry::RetryPolicy;
use crate::store::codec::{self, Record};
use crate::store::layout::{self, Layout};
use crate::store::znode;

/// Most partitions a queue may have.
pub const MAX_PARTITIONS: u32 = 1024;
/// Most priority levels a queue may have.
pub const MAX_PRIORITIES: u8 = 16;
/// Largest segment: no znode should have more than about 10k children.
pub const MAX_SEGMENT_SIZE: u32 = 10_000;

/// A queue's configuration (format version 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Format version of the record.
    pub v: u8,
    /// Paused: workers claim none of its jobs (running ones finish); enqueue and promotion go
    /// on. Set live with `zkq-admin pause` / `resume`. Defaults to false.
    #[serde(default)]
    pub paused: bool,
    /// Shards of the queue. Defaults to 8.
    pub partitions: u32,
    /// Priority levels (lanes per partition); job priorities run from 0 to `priorities - 1`.
    /// Defaults to 3.
    pub priorities: u8,
    /// Most children of one segment znode, the bound on any child list in the queue.
    /// Defaults to 4096.
    pub segment_size: u32,
    /// Attempts before a job is dead-lettered, when the job does not say. Defaults to 5.
    pub max_attempts: u32,
    /// Backoff between attempts. Defaults to [`RetryPolicy::DEFAULT`].
    pub retry: RetryPolicy,
    /// Largest payload accepted. Defaults to 512 KiB.
    pub max_payload_bytes: u32,
    /// Dead letters kept: the scheduler removes the oldest beyond this many. `None` keeps
    /// all. Defaults to 10,000.
    #[serde(default = "default_dead_max")]
    pub dead_max: Option<u32>,
    /// How long a dead letter is kept (ms) before the scheduler removes it. `None` keeps them
    /// forever. Defaults to 14 days.
    #[serde(default = "default_dead_max_age_ms")]
    pub dead_max_age_ms: Option<u64>,
}

fn default_dead_max() -> Option<u32> {
    Some(10_000)
}

fn default_dead_max_age_ms() -> Option<u64> {
    Some(14 * 24 * 3600 * 1000)
}

impl Record for QueueConfig {
    const WHAT: &'static str = "queue config";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            v: Self::VERSION,
            paused: false,
            partitions: 8,
            priorities: 3,
            segment_size: 4096,
            max_attempts: 5,
            retry: RetryPolicy::DEFAULT,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES as u32,
            dead_max: default_dead_max(),
            dead_max_age_ms: default_dead_max_age_ms(),
        }
    }
}

impl QueueConfig {
    /// Checks every field, naming the first one that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if !(1..=MAX_PARTITIONS).contains(&self.partitions) {
            return bad(format!(
                "partitions must be 1 to {MAX_PARTITIONS}, got {}",
                self.partitions
            ));
        }
        if !(1..=MAX_PRIORITIES).contains(&self.priorities) {
            return bad(format!(
                "priorities must be 1 to {MAX_PRIORITIES}, got {}",
                self.priorities
            ));
        }
        if !(2..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return bad(format!(
                "segment size must be 2 to {MAX_SEGMENT_SIZE}, got {}",
                self.segment_size
            ));
        }
        if self.max_attempts == 0 {
            return bad("max attempts must be at least 1".into());
        }
        if self.max_payload_bytes as usize > MAX_PAYLOAD_BYTES {
            return bad(format!("max payload must be at most {MAX_PAYLOAD_BYTES} bytes"));
        }
        self.retry.validate().map_err(Error::InvalidConfig)
    }
}

/// Creates the queue with `config` unless it exists, and returns the config in force.
///
/// An existing queue keeps its config: the one passed here is only used for creation.
pub async fn ensure(
    client: &zk::Client,
    layout: &Layout,
    name: &str,
    config: &QueueConfig,
) -> Result<QueueConfig> {
    layout::validate_queue_name(name)?;
    if let Some(existing) = load(client, layout, name).await? {
        return Ok(existing);
    }
    config.validate()?;
    znode::ensure_path(client, layout.acl(), &layout.queues()).await?;
    let mut multi = client.new_multi_writer();
    let data = codec::encode(config)?;
    let persistent = layout.acl().options(zk::CreateMode::Persistent);
    let add = |m: &mut zk::MultiWriter<'_>, path: &str, data: &[u8]| {
        m.add_create(path, data, &persistent)
            .map_err(|e| Error::zk("create", path, e))
    };
    add(&mut multi, &layout.queue(name), &data)?;
    add(&mut multi, &layout.partitions(name), &[])?;
    add(&mut multi, &layout.delayed(name), &[])?;
    add(&mut multi, &layout.dead(name), &[])?;
    for p in 0..config.partitions {
        add(&mut multi, &layout.partition(name, p), &[])?;
        add(&mut multi, &layout.claims(name, p), &[])?;
        for lane in 0..config.priorities {
            add(&mut multi, &layout.lane(name, p, lane), &[])?;
        }
    }
    match multi.commit().await {
        Ok(_) => Ok(config.clone()),
        // Someone else created it first: theirs is in force.
        Err(zk::MultiWriteError::OperationFailed {
            source: zk::Error::NodeExists,
            ..
        }) => load(client, layout, name).await?.ok_or_else(|| {
            Error::InvalidConfig(format!("queue {name} appeared and vanished while being created"))
        }),
        Err(e) => Err(Error::zk("create queue", layout.queue(name), e.into())),
    }
}

/// Reads a queue's config, or `None` if the queue does not exist.
pub async fn load(client: &zk::Client, layout: &Layout, name: &str) -> Result<Option<QueueConfig>> {
    layout::validate_queue_name(name)?;
    let path = layout.queue(name);
    match client.get_data(&path).await {
        Ok((data, _)) => codec::decode(&path, &data).map(Some),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(Error::zk("read queue config", path, e)),
    }
}

/// Queues whose config znode holds bytes that are not a queue config. A fleet-wide service
/// (promotion, assignment, trimming) skips such a queue and keeps serving every other one; each
/// is reported once, and again once it reads fine.
#[derive(Debug, Default)]
pub(crate) struct Unreadable(HashSet<String>);

impl Unreadable {
    /// Loads `name`'s config; an undecodable one is reported (the first time) and comes back as
    /// `None`, like a queue that does not exist.
    pub(crate) async fn load(
        &mut self,
        client: &zk::Client,
        layout: &Layout,
        name: &str,
    ) -> Result<Option<QueueConfig>> {
        match load(client, layout, name).await {
            Err(e) if is_unreadable(&e) => {
                self.skip(name, &e);
                Ok(None)
            }
            Ok(config) => {
                self.served(name);
                Ok(config)
            }
            Err(e) => Err(e),
        }
    }

    /// Reports `name` as skipped because of `error`, the first time.
    pub(crate) fn skip(&mut self, name: &str, error: &Error) {
        if self.0.insert(name.to_string()) {
            warn!(queue = name, error = %error, "queue skipped: its config cannot be read; fix or delete the znode");
        }
    }

    /// Notes that `name` was served, reporting it if it was skipped before.
    pub(crate) fn served(&mut self, name: &str) {
        if self.0.remove(name) {
            info!(queue = name, "queue config readable again: queue served");
        }
    }
}

/// Whether `error` says a queue's config (or name) is not one zkq can use, rather than that
/// ZooKeeper could not be asked.
pub(crate) fn is_unreadable(error: &Error) -> bool {
    matches!(error, Error::Decode { .. } | Error::InvalidName { .. })
}

/// The names of all queues under the root.
pub async fn list(client: &zk::Client, layout: &Layout) -> Result<Vec<String>> {
    let path = layout.queues();
    match client.get_children(&path).await {
        Ok((mut names, _)) => {
            names.sort();
            Ok(names)
        }
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(Error::zk("list queues", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_bad_fields_are_named() {
        QueueConfig::default().validate().unwrap();
        let err = QueueConfig {
            partitions: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("partitions"), "{err}");
        let err = QueueConfig {
            segment_size: 20_000,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("segment size"), "{err}");
    }
}

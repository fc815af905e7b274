//! The producer: validates jobs and commits them to ZooKeeper.
//!
//! A call returns only after ZooKeeper committed the jobs. A batch is one `multi`: all of its
//! jobs are enqueued or none is. Ready jobs go to a partition (by partition key, or round robin)
//! and to their priority lane, into a segment this producer owns ([`segment`]); delayed
//! jobs go to the queue's delayed set, from which they are promoted when due.

mod placement;
mod segment;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{debug, instrument};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{JobId, NewJob};
use crate::limits::MAX_REQUEST_BYTES;
use crate::queue::{self, QueueConfig};
use crate::store::codec;
use crate::store::layout::{self, Layout};
use crate::store::session::ZkConfig;
use crate::telemetry;

use self::segment::Segments;

pub use self::placement::partition_of_key;
pub(crate) use self::placement::{dead_letter_op, Placement};

/// How long a queue config read by a producer is used before it is read again.
const CONFIG_FRESH: Duration = Duration::from_secs(1);

/// Enqueues jobs. Cheap to share: wrap it in an `Arc` and call it from many tasks; their
/// requests are pipelined over one ZooKeeper session.
#[derive(Debug)]
pub struct Producer {
    client: zk::Client,
    layout: Layout,
    /// Config used when a queue is created on first use.
    default_config: QueueConfig,
    /// Queue configs as last read, and when: older than [`CONFIG_FRESH`], they are read again.
    configs: Mutex<HashMap<String, (QueueConfig, Instant)>>,
    segments: tokio::sync::Mutex<Segments>,
    round_robin: AtomicU32,
}

impl Producer {
    /// Connects to ZooKeeper and uses the znodes under `root` (such as `/zkq`).
    pub async fn connect(zk: &ZkConfig, root: &str) -> Result<Producer> {
        let layout = Layout::for_config(root, zk)?;
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

    /// The queue's config, creating the queue with the default config on first use. A config
    /// read more than [`CONFIG_FRESH`] ago is read again, so that settings changed live (limits,
    /// attempts, retry backoff) apply within that time.
    pub(crate) async fn config(&self, queue: &str) -> Result<QueueConfig> {
        layout::validate_queue_name(queue)?;
        let cached = self.lock_configs().get(queue).cloned();
        if let Some((config, read)) = &cached {
            if read.elapsed() < CONFIG_FRESH {
                return Ok(config.clone());
            }
        }
        match queue::ensure(&self.client, &self.layout, queue, &self.default_config).await {
            Ok(config) => {
                self.cache(queue, &config);
                Ok(config)
            }
            // A config read before stays good enough while a new read fails.
            Err(e) => cached.map(|(config, _)| config).ok_or(e),
        }
    }

    pub(crate) fn cache(&self, queue: &str, config: &QueueConfig) {
        self.lock_configs()
            .insert(queue.to_string(), (config.clone(), Instant::now()));
    }

    fn lock_configs(&self) -> std::sync::MutexGuard<'_, HashMap<String, (QueueConfig, Instant)>> {
        self.configs.lock().unwrap_or_else(|p| p.into_inner())
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

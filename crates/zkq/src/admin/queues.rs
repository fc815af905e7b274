//! Queue settings changed live: pause, resume, and new limits, each one versioned write of the
//! queue znode that workers (through their data watch) and producers (re-reading every second)
//! pick up.

use zookeeper_client as zk;

use crate::error::{outcome_unknown, Error, Result};
use crate::queue::QueueConfig;
use crate::store::codec;
use crate::store::layout::validate_queue_name;

use super::Admin;

impl Admin {
    /// Pauses `queue`: workers stop claiming its jobs (running ones finish); enqueue and the
    /// promotion of delayed jobs go on. Returns the config now in force.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist; ZooKeeper errors.
    pub async fn pause(&self, queue: &str) -> Result<QueueConfig> {
        self.update_queue(queue, |c| c.paused = true).await
    }

    /// Resumes a paused `queue`. Returns the config now in force.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist; ZooKeeper errors.
    pub async fn resume(&self, queue: &str) -> Result<QueueConfig> {
        self.update_queue(queue, |c| c.paused = false).await
    }

    /// Changes `queue`'s settings with `change`, in a versioned write (done again on the new
    /// config if someone else changed it meanwhile). Returns the config now in force.
    ///
    /// Partitions, priorities and the segment size cannot change: jobs already placed would
    /// have to move.
    ///
    /// # Errors
    /// [`Error::NotFound`] for a queue that does not exist; [`Error::InvalidConfig`] for a
    /// change that is refused or a setting out of range (nothing is written); ZooKeeper errors.
    pub async fn update_queue(&self, queue: &str, change: impl Fn(&mut QueueConfig)) -> Result<QueueConfig> {
        validate_queue_name(queue)?;
        let path = self.layout.queue(queue);
        loop {
            let (data, stat) = match self.client.get_data(&path).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => return Err(Error::NotFound(format!("no queue named {queue:?}"))),
                Err(e) if outcome_unknown(&e) => {
                    self.reconnected().await?;
                    continue;
                }
                Err(e) => return Err(Error::zk("read queue config", path, e)),
            };
            let current: QueueConfig = codec::decode(&path, &data)?;
            let mut wanted = current.clone();
            change(&mut wanted);
            if wanted == current {
                return Ok(current);
            }
            refuse_moves(&current, &wanted)?;
            wanted.validate()?;
            match self
                .client
                .set_data(&path, &codec::encode(&wanted)?, Some(stat.version))
                .await
            {
                Ok(_) => return Ok(wanted),
                // Changed meanwhile, or our own write whose reply was lost: read it again (a
                // committed write then reads as `wanted`).
                Err(zk::Error::BadVersion) => {}
                Err(e) if outcome_unknown(&e) => self.reconnected().await?,
                Err(e) => return Err(Error::zk("write queue config", path, e)),
            }
        }
    }
}

/// Refuses changes that would have to move jobs already placed.
fn refuse_moves(current: &QueueConfig, wanted: &QueueConfig) -> Result<()> {
    let refuse = |what: &str, from: u32, to: u32| {
        Err(Error::InvalidConfig(format!(
            "{what} cannot change ({from} to {to}): jobs already in the queue would have to move; \
             create a new queue instead"
        )))
    };
    if wanted.partitions != current.partitions {
        return refuse("the partition count", current.partitions, wanted.partitions);
    }
    if wanted.priorities != current.priorities {
        return refuse(
            "the priority count",
            current.priorities.into(),
            wanted.priorities.into(),
        );
    }
    if wanted.segment_size != current.segment_size {
        return refuse("the segment size", current.segment_size, wanted.segment_size);
    }
    Ok(())
}

//! Operating a running zkq: what is queued, running, delayed and dead; who works; and dead
//! letters looked at, sent back to work or purged. This is the API behind `zkq-admin`.
//!
//! Counts come from child counts (the `numChildren` of a stat), never from reading every job,
//! so they stay fast on a million-job backlog: a lane costs one listing of its segments and two
//! stats per segment (its child count, and whether its `open` marker is among them).

mod acl;
mod activity;
mod dead;
mod fleet;
mod jobs;
mod locks;
mod queues;
mod stats;

pub use acl::{AclDifference, AclEntry, AclReport};
pub use activity::ClaimActivity;
pub use dead::{DeadLetter, Purge};
pub use fleet::WorkerView;
pub use jobs::{Cancelled, JobState, JobView};
pub use locks::LockView;
pub use stats::{FleetStats, PartitionStats, QueueDetail, QueueStats, Stats, UnhandledKind};

use zookeeper_client as zk;

use crate::error::Result;
use crate::producer::Producer;
use crate::store::layout::Layout;
use crate::store::session::{self, ZkConfig};

/// How long a command waits for the connection to come back after a lost reply.
const RECONNECT_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Stat requests in flight while counting.
const STATS_IN_FLIGHT: usize = 256;

/// Inspects and steers the zkq under one root.
#[derive(Debug)]
pub struct Admin {
    client: zk::Client,
    layout: Layout,
    /// Writes jobs back to their queues (dead letters retried) like any enqueue.
    producer: Producer,
}

impl Admin {
    /// Connects to ZooKeeper for the zkq under `root`.
    ///
    /// # Errors
    /// [`crate::Error::Unreachable`] when no session can be had; a bad root.
    pub async fn connect(zk: &ZkConfig, root: &str) -> Result<Admin> {
        let layout = Layout::for_config(root, zk)?;
        let client = zk.connect().await?;
        Ok(Admin::with_client(client, layout))
    }

    /// An admin on an existing session.
    pub fn with_client(client: zk::Client, layout: Layout) -> Admin {
        let producer = Producer::with_client(client.clone(), layout.clone());
        Admin {
            client,
            layout,
            producer,
        }
    }

    /// Waits for the connection after a lost reply, at most [`RECONNECT_WITHIN`]: an operator's
    /// command should end, not wait for ZooKeeper forever.
    ///
    /// # Errors
    /// [`crate::Error::Unreachable`] past that; a lost session.
    pub(super) async fn reconnected(&self) -> Result<()> {
        match tokio::time::timeout(RECONNECT_WITHIN, session::connected(&self.client)).await {
            Ok(result) => result,
            Err(_) => Err(crate::Error::Unreachable {
                address: "ZooKeeper".into(),
                reason: format!(
                    "no connection within {RECONNECT_WITHIN:?} after a reply was lost; the change may or may not have been made"
                ),
            }),
        }
    }

    /// Closes the session.
    pub async fn close(self) {
        self.producer.close().await;
        session::close(self.client, std::time::Duration::from_secs(2)).await;
    }
}

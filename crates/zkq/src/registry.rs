//! Worker registration: cluster membership through EPHEMERAL znodes under `<root>/workers`.
//!
//! A worker's node exists exactly as long as its session: a crashed worker disappears within
//! the session timeout, with no heartbeat table to sweep.

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::error::{outcome_unknown, Error, Result};
use crate::job::now_ms;
use crate::store::codec::{self, Record};
use crate::store::layout::Layout;
use crate::store::session;
use crate::store::znode;

/// What a worker says about itself in its registration node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub v: u8,
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub queues: Vec<String>,
    /// Job kinds it has a handler for, sorted; `*` when it handles every kind.
    #[serde(default)]
    pub kinds: Vec<String>,
    pub concurrency: u32,
    /// zkq version of the worker.
    pub version: String,
    pub started_at_ms: u64,
}

impl Record for WorkerInfo {
    const WHAT: &'static str = "worker registration";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

impl WorkerInfo {
    /// Describes this process.
    pub fn this_process(id: &str, queues: &[String], kinds: Vec<String>, concurrency: u32) -> WorkerInfo {
        WorkerInfo {
            v: Self::VERSION,
            id: id.to_string(),
            host: hostname(),
            pid: std::process::id(),
            queues: queues.to_vec(),
            kinds,
            concurrency,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: now_ms(),
        }
    }
}

/// Creates the worker's ephemeral node. A create whose reply was lost with the connection is
/// looked up once connected again: a node this session owns is the worker's own.
///
/// # Errors
/// [`Error::WorkerIdInUse`] when another live session registered the same id.
pub async fn register(client: &zk::Client, layout: &Layout, info: &WorkerInfo) -> Result<()> {
    znode::ensure_path(client, layout.acl(), &layout.workers()).await?;
    let ephemeral = layout.acl().options(zk::CreateMode::Ephemeral);
    let path = layout.worker(&info.id);
    let data = codec::encode(info)?;
    loop {
        match client.create(&path, &data, &ephemeral).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NodeExists) => match client.check_stat(&path).await {
                Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => return Ok(()),
                Ok(Some(_)) => return Err(Error::WorkerIdInUse { id: info.id.clone() }),
                // Its session just ended: try again.
                Ok(None) => {}
                Err(e) => return Err(Error::zk("read worker registration", path, e)),
            },
            Err(e) if outcome_unknown(&e) => session::connected(client).await?,
            Err(e) => return Err(Error::zk("register worker", path, e)),
        }
    }
}

/// The live workers, by id.
pub async fn list(client: &zk::Client, layout: &Layout) -> Result<Vec<WorkerInfo>> {
    let dir = layout.workers();
    let mut ids = match client.list_children(&dir).await {
        Ok(ids) => ids,
        Err(zk::Error::NoNode) => return Ok(Vec::new()),
        Err(e) => return Err(Error::zk("list workers", dir, e)),
    };
    ids.sort();
    let mut workers = Vec::new();
    for id in ids {
        let path = layout.worker(&id);
        match client.get_data(&path).await {
            Ok((data, _)) => workers.push(codec::decode(&path, &data)?),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Error::zk("read worker", path, e)),
        }
    }
    Ok(workers)
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

//! Lock keys in use: who holds each, since when, and how many wait.

use serde::Serialize;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::recipes::line::sequence_of;
use crate::store::layout::unescape_key;
use crate::store::znode;

use super::Admin;

/// A lock key with a holder, as `zkq-admin locks` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockView {
    pub key: String,
    /// What the holder stored in its node (zkq workers store their id).
    pub holder: String,
    /// When the holder's node was created, in ms since the Unix epoch.
    pub held_since_ms: u64,
    /// The holder's fencing token (the zxid that created its node).
    pub token: i64,
    /// Nodes in line behind the holder.
    pub waiters: u64,
}

impl Admin {
    /// Every lock key with a holder, by key.
    ///
    /// # Errors
    /// ZooKeeper errors.
    pub async fn locks(&self) -> Result<Vec<LockView>> {
        let dir = self.layout.locks();
        let mut keys = znode::children(&self.client, &dir).await?;
        keys.sort();
        let mut out = Vec::new();
        for name in keys {
            let key_dir = format!("{dir}/{name}");
            let mut line = znode::children(&self.client, &key_dir).await?;
            line.sort_by_key(|n| sequence_of(n));
            let Some(first) = line.first() else { continue };
            let path = format!("{key_dir}/{first}");
            let (data, stat) = match self.client.get_data(&path).await {
                Ok(found) => found,
                // Released meanwhile.
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(Error::zk("read lock holder", path, e)),
            };
            out.push(LockView {
                key: unescape_key(&name),
                holder: String::from_utf8_lossy(&data).into_owned(),
                held_since_ms: stat.ctime.max(0) as u64,
                token: stat.czxid,
                waiters: line.len() as u64 - 1,
            });
        }
        Ok(out)
    }
}

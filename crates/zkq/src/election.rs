//! Leader election with an epoch as fencing token.
//!
//! # State model
//! ```text
//!  campaign ──create c-<seq> (EPHEMERAL_SEQUENTIAL)──► candidate
//!  candidate ──lowest seq, node owned by my session, epoch bumped──► leader(epoch)
//!  candidate ──not lowest──► watch the predecessor only ──it is gone──► candidate
//!  leader ──connection in doubt / candidate node gone / resign──► lost
//! ```
//!
//! Each candidate watches only the candidate just ahead of it, so a leader change wakes exactly
//! one process (no herd). The winner confirms that the lowest node's `ephemeralOwner` is its own
//! session, then bumps the epoch znode's version with a versioned `set_data`; the new version is
//! its epoch. Every leader-only write carries `check(epoch, my_epoch)` in the same `multi`
//! ([`Leadership::fence`]), so a deposed leader's writes fail as a whole once a successor has
//! bumped the epoch.
//!
//! # Failure handling
//! Leadership is lost as soon as the connection is in doubt (the session state leaves
//! `SyncConnected`), not only when the session expires: a leader cut off from ZooKeeper stops
//! acting before a successor can be elected. If the connection comes back with the session
//! intact, campaigning again re-checks the position and takes a new epoch. A candidate node is
//! deleted when its guard is dropped, so an abandoned campaign never blocks the line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::txn::Op;
use crate::znode::{self, EPHEMERAL_SEQUENTIAL};

/// A candidate in one election, identified by the directory it runs under.
#[derive(Debug, Clone)]
pub struct Election {
    client: zk::Client,
    dir: String,
    name: String,
    wakeups: Arc<AtomicU64>,
}

/// This process leads, in `epoch`, until `lost` is cancelled.
#[derive(Debug)]
pub struct Leadership {
    epoch: i32,
    epoch_path: String,
    lost: CancellationToken,
    _candidate: CandidateNode,
    _monitor: tokio::task::JoinHandle<()>,
}

/// Deletes the candidate node when dropped.
#[derive(Debug)]
struct CandidateNode {
    client: zk::Client,
    path: String,
}

impl Drop for CandidateNode {
    fn drop(&mut self) {
        // The request is sent now; whether it lands does not matter (the session would take the
        // node with it anyway).
        drop(self.client.delete(&self.path, None));
    }
}

impl Election {
    /// A candidate named `name` (stored in its node, for operators) in the election under `dir`
    /// (which holds `candidates/` and `epoch`).
    pub fn new(client: zk::Client, dir: impl Into<String>, name: impl Into<String>) -> Election {
        Election {
            client,
            dir: dir.into(),
            name: name.into(),
            wakeups: Arc::new(AtomicU64::new(0)),
        }
    }

    fn candidates(&self) -> String {
        format!("{}/candidates", self.dir)
    }

    fn epoch_path(&self) -> String {
        format!("{}/epoch", self.dir)
    }

    /// How often this candidate was woken by its predecessor's watch.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Waits until this candidate leads, and returns its leadership.
    ///
    /// # Cancellation safety
    /// Dropping the future withdraws the candidacy (its node is deleted).
    ///
    /// # Errors
    /// [`Error::SessionLost`] when the session ends while waiting; other ZooKeeper errors.
    pub async fn campaign(&self) -> Result<Leadership> {
        znode::ensure_path(&self.client, &self.candidates()).await?;
        znode::ensure_path(&self.client, &self.epoch_path()).await?;
        let prefix = format!("{}/c-", self.candidates());
        let (_, seq) = self
            .client
            .create(&prefix, self.name.as_bytes(), &EPHEMERAL_SEQUENTIAL)
            .await
            .map_err(|e| Error::zk("create candidate", &prefix, e))?;
        let me = format!("c-{seq}");
        let candidate = CandidateNode {
            client: self.client.clone(),
            path: format!("{}/{me}", self.candidates()),
        };
        let mut states = self.client.state_watcher();
        loop {
            let mut line = self
                .client
                .list_children(&self.candidates())
                .await
                .map_err(|e| Error::zk("list candidates", self.candidates(), e))?;
            line.sort_by_key(|n| {
                n.rsplit_once('-')
                    .and_then(|(_, s)| s.parse::<i64>().ok())
                    .unwrap_or(i64::MAX)
            });
            let Some(position) = line.iter().position(|n| *n == me) else {
                return Err(Error::SessionLost(zk::Error::NoNode));
            };
            if position == 0 {
                let epoch = self.take_office(&candidate.path).await?;
                info!(candidate = %self.name, epoch, "elected leader");
                let lost = CancellationToken::new();
                let monitor = tokio::spawn(watch_office(
                    self.client.clone(),
                    candidate.path.clone(),
                    lost.clone(),
                ));
                return Ok(Leadership {
                    epoch,
                    epoch_path: self.epoch_path(),
                    lost,
                    _candidate: candidate,
                    _monitor: monitor,
                });
            }
            let predecessor = format!("{}/{}", self.candidates(), line[position - 1]);
            let (stat, watcher) = self
                .client
                .check_and_watch_stat(&predecessor)
                .await
                .map_err(|e| Error::zk("watch predecessor", &predecessor, e))?;
            if stat.is_none() {
                continue;
            }
            debug!(candidate = %self.name, %predecessor, "waiting for the predecessor");
            tokio::select! {
                _ = watcher.changed() => {
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                }
                state = session_ended(&mut states) => return Err(Error::SessionLost(state)),
            }
        }
    }

    /// Confirms the lowest node is ours and bumps the epoch; returns the new epoch.
    async fn take_office(&self, my_node: &str) -> Result<i32> {
        let stat = self
            .client
            .check_stat(my_node)
            .await
            .map_err(|e| Error::zk("stat candidate", my_node, e))?
            .ok_or(Error::SessionLost(zk::Error::NoNode))?;
        if stat.ephemeral_owner != self.client.session_id().0 {
            return Err(Error::SessionLost(zk::Error::SessionMoved));
        }
        let path = self.epoch_path();
        loop {
            let (_, stat) = self
                .client
                .get_data(&path)
                .await
                .map_err(|e| Error::zk("read epoch", &path, e))?;
            match self
                .client
                .set_data(&path, self.name.as_bytes(), Some(stat.version))
                .await
            {
                Ok(stat) => return Ok(stat.version),
                // A deposed leader's late write, or a previous term of ours: read again.
                Err(zk::Error::BadVersion) => continue,
                Err(e) => return Err(Error::zk("bump epoch", &path, e)),
            }
        }
    }
}

impl Leadership {
    /// The epoch this leader holds: its fencing token.
    pub fn epoch(&self) -> i32 {
        self.epoch
    }

    /// The znode whose data version is the epoch. A guarded write adds
    /// `check(epoch_path, epoch)` to its `multi`; it fails once a newer leader was elected.
    pub fn epoch_path(&self) -> &str {
        &self.epoch_path
    }

    /// The op that makes a `multi` fail unless this epoch is still current.
    pub(crate) fn fence(&self) -> Op {
        Op::Check {
            path: self.epoch_path.clone(),
            version: self.epoch,
        }
    }

    /// Cancelled as soon as this leadership is in doubt.
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.lost.cancel();
        self._monitor.abort();
    }
}

/// Cancels `lost` when the connection leaves `SyncConnected` or the candidate node goes.
async fn watch_office(client: zk::Client, node: String, lost: CancellationToken) {
    let mut states = client.state_watcher();
    if states.peek_state() != zk::SessionState::SyncConnected {
        lost.cancel();
        return;
    }
    let node_gone = async {
        loop {
            match client.check_and_watch_stat(&node).await {
                Ok((Some(_), watcher)) => {
                    if watcher.changed().await.event_type == zk::EventType::NodeDeleted {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = node_gone => {}
        _ = async {
            loop {
                if states.changed().await != zk::SessionState::SyncConnected {
                    return;
                }
            }
        } => {}
    }
    info!(%node, "leadership lost");
    lost.cancel();
}

/// Resolves when the session ends for good.
async fn session_ended(states: &mut zk::StateWatcher) -> zk::Error {
    loop {
        let state = states.changed().await;
        if state.is_terminated() {
            return match state {
                zk::SessionState::Closed => zk::Error::ClientClosed,
                _ => zk::Error::SessionExpired,
            };
        }
    }
}

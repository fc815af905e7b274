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
//! intact, campaigning again finds the candidate node this session already holds, keeps its place
//! in line and takes a new epoch: a short disconnection does not hand leadership to anyone else
//! (nobody else can win while that node exists), and never leaves a second node of this session
//! ahead of itself. [`Leadership::resign`] and [`Election::withdraw`] delete the node and let
//! the successor in; otherwise the node goes with the session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::recipes::line::{self, Place, Waited};
use crate::store::acl::AclPolicy;
use crate::store::session;
use crate::store::txn::{self, Op};
use crate::store::znode;

/// A candidate in one election, identified by the directory it runs under.
#[derive(Debug, Clone)]
pub struct Election {
    client: zk::Client,
    dir: String,
    name: String,
    acl: AclPolicy,
    wakeups: Arc<AtomicU64>,
    /// A candidate node the look for this session's own nodes does not see (tests only: what a
    /// create whose reply was lost, committed after that look, leaves).
    unseen: Option<String>,
}

/// This process leads, in `epoch`, until `lost` is cancelled.
#[derive(Debug)]
pub struct Leadership {
    client: zk::Client,
    acl: AclPolicy,
    name: String,
    epoch: i32,
    epoch_path: String,
    node: String,
    lost: CancellationToken,
    _monitor: tokio::task::JoinHandle<()>,
}

impl Election {
    /// A candidate named `name` (stored in its node, for operators) in the election under `dir`
    /// (which holds `candidates/` and `epoch`).
    pub fn new(client: zk::Client, dir: impl Into<String>, name: impl Into<String>) -> Election {
        Election {
            client,
            dir: dir.into(),
            name: name.into(),
            acl: AclPolicy::open(),
            wakeups: Arc::new(AtomicU64::new(0)),
            unseen: None,
        }
    }

    /// This candidate, with its look for its own nodes blind to the candidate node `name`, as
    /// it is to one whose create committed after the look.
    #[cfg(feature = "testing")]
    pub fn not_seeing(self, name: &str) -> Election {
        Election {
            unseen: Some(name.to_string()),
            ..self
        }
    }

    /// This candidate, creating its znodes (and the leader's fenced writes' znodes) with `acl`
    /// instead of the open ACL.
    pub fn with_acl(self, acl: AclPolicy) -> Election {
        Election { acl, ..self }
    }

    fn candidates(&self) -> String {
        format!("{}/candidates", self.dir)
    }

    fn epoch_path(&self) -> String {
        format!("{}/epoch", self.dir)
    }

    /// How often this candidate was woken by its predecessor's watch (for tests of the herd
    /// effect).
    #[cfg(feature = "testing")]
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Waits until this candidate leads, and returns its leadership.
    ///
    /// # Cancellation safety
    /// Dropping the future keeps the candidate node in line: the next campaign on this session
    /// takes it up again. Call [`Election::withdraw`] to leave the line.
    ///
    /// # Errors
    /// [`Error::SessionLost`] when the session ends while waiting; other ZooKeeper errors.
    pub async fn campaign(&self) -> Result<Leadership> {
        loop {
            match self.try_campaign().await {
                // The connection dropped: once it is back, look again (a node created in the
                // meantime is found by its owner, so nothing is left behind).
                Err(Error::OutcomeUnknown { .. }) => session::connected(&self.client).await?,
                other => return other,
            }
        }
    }

    async fn try_campaign(&self) -> Result<Leadership> {
        znode::ensure_path(&self.client, &self.acl, &self.candidates()).await?;
        znode::ensure_path(&self.client, &self.acl, &self.epoch_path()).await?;
        let me = self.own_node().await?;
        let node = format!("{}/{me}", self.candidates());
        loop {
            let predecessor = match line::place(&self.client, &self.candidates(), &me).await? {
                Place::First => {
                    let epoch = self.take_office(&node).await?;
                    info!(candidate = %self.name, epoch, "elected leader");
                    let lost = CancellationToken::new();
                    let monitor =
                        tokio::spawn(line::watch_held(self.client.clone(), node.clone(), lost.clone()));
                    return Ok(Leadership {
                        client: self.client.clone(),
                        acl: self.acl.clone(),
                        name: self.name.clone(),
                        epoch,
                        epoch_path: self.epoch_path(),
                        node,
                        lost,
                        _monitor: monitor,
                    });
                }
                Place::Behind(predecessor) => predecessor,
            };
            if self.is_own(&predecessor).await? {
                // A create of this session's whose reply was lost, committed after the look for
                // its nodes: waiting on it would never end.
                debug!(candidate = %self.name, %predecessor, "deleting a candidate node of this session's own");
                let name = predecessor.rsplit('/').next().unwrap_or_default();
                self.delete_candidate(name).await?;
                continue;
            }
            debug!(candidate = %self.name, %predecessor, "waiting for the predecessor");
            if line::wait_for(&self.client, &predecessor, None).await? == Waited::Woken {
                self.wakeups.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Leaves the line: deletes every candidate node this session holds.
    pub async fn withdraw(&self) -> Result<()> {
        for node in self.own_nodes().await? {
            self.delete_candidate(&node).await?;
        }
        Ok(())
    }

    /// Deletes a candidate node of this session; a delete whose reply is lost with the
    /// connection is sent again once connected (a node left behind would keep a place in line
    /// for the life of the session).
    async fn delete_candidate(&self, name: &str) -> Result<()> {
        let path = format!("{}/{name}", self.candidates());
        loop {
            match self.client.delete(&path, None).await {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(e) if crate::error::outcome_unknown(&e) => session::connected(&self.client).await?,
                Err(e) => return Err(Error::zk("delete candidate", &path, e)),
            }
        }
    }

    /// The candidate node this session holds (the oldest one, if an earlier attempt left more),
    /// or a new one.
    async fn own_node(&self) -> Result<String> {
        let mine = self.own_nodes().await?;
        if let Some((first, rest)) = mine.split_first() {
            for extra in rest {
                self.delete_candidate(extra).await?;
            }
            return Ok(first.clone());
        }
        let prefix = format!("{}/c-", self.candidates());
        let (_, seq) = self
            .client
            .create(
                &prefix,
                self.name.as_bytes(),
                &self.acl.options(zk::CreateMode::EphemeralSequential),
            )
            .await
            .map_err(|e| Error::zk("create candidate", &prefix, e))?;
        Ok(format!("c-{seq}"))
    }

    /// Whether the candidate node at `path` belongs to this session.
    async fn is_own(&self, path: &str) -> Result<bool> {
        match self.client.check_stat(path).await {
            Ok(stat) => Ok(stat.is_some_and(|s| self.owns(&s))),
            Err(e) => Err(Error::zk("stat candidate", path, e)),
        }
    }

    /// Whether a node with `stat` is this session's.
    fn owns(&self, stat: &zk::Stat) -> bool {
        stat.ephemeral_owner == self.client.session_id().0
    }

    /// The candidate nodes owned by this session, oldest first.
    async fn own_nodes(&self) -> Result<Vec<String>> {
        let dir = self.candidates();
        let line = self
            .client
            .list_children(&dir)
            .await
            .map_err(|e| Error::zk("list candidates", &dir, e))?;
        let stats = futures::future::join_all(line.iter().map(|n| {
            let path = format!("{dir}/{n}");
            let client = &self.client;
            async move { client.check_stat(&path).await }
        }))
        .await;
        let mut mine: Vec<String> = line
            .into_iter()
            .zip(stats)
            .filter(|(_, stat)| matches!(stat, Ok(Some(s)) if self.owns(s)))
            .map(|(n, _)| n)
            .filter(|n| self.unseen.as_ref() != Some(n))
            .collect();
        mine.sort_by_key(|n| line::sequence_of(n));
        Ok(mine)
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

    /// Starts a new term of this leadership: bumps the epoch again, from the one this leader
    /// holds, and returns the new one. Writes fenced by the old epoch fail from now on. The
    /// batch-job runner takes a new term for every run of its command, so each run has a token
    /// of its own.
    ///
    /// # Errors
    /// [`Error::Fenced`] when another leader has bumped the epoch since.
    pub async fn next_term(&mut self) -> Result<i32> {
        match self
            .client
            .set_data(&self.epoch_path, self.name.as_bytes(), Some(self.epoch))
            .await
        {
            Ok(stat) => {
                self.epoch = stat.version;
                Ok(self.epoch)
            }
            Err(zk::Error::BadVersion) => Err(Error::Fenced { epoch: self.epoch }),
            Err(e) => Err(Error::zk("bump epoch", &self.epoch_path, e)),
        }
    }

    /// Steps down: deletes the candidate node so that the successor takes over now rather than
    /// when the session ends.
    pub async fn resign(self) {
        self.lost.cancel();
        loop {
            match self.client.delete(&self.node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => return info!(node = %self.node, "resigned"),
                // Lost with the connection: send it again once connected, or the node stays
                // first in line for the life of the session.
                Err(e) if crate::error::outcome_unknown(&e) => {
                    if session::connected(&self.client).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    return warn!(node = %self.node, error = %e, "cannot resign; the node goes with the session")
                }
            }
        }
    }

    /// The op that makes a `multi` fail unless this epoch is still current.
    pub(crate) fn epoch_check(&self) -> Op {
        Op::Check {
            path: self.epoch_path.clone(),
            version: self.epoch,
        }
    }

    /// Commits `ops` as one `multi` behind this epoch's check.
    ///
    /// # Errors
    /// [`Error::Fenced`] when a newer leader holds the epoch; the failed op's error otherwise.
    pub(crate) async fn commit_fenced(&self, what: &'static str, ops: Vec<Op>) -> Result<()> {
        let mut all = Vec::with_capacity(ops.len() + 1);
        all.push(self.epoch_check());
        all.extend(ops);
        match txn::commit(&self.client, &self.acl, &all).await {
            Ok(_) => Ok(()),
            Err(e) if e.index == Some(0) && e.source == zk::Error::BadVersion => {
                Err(Error::Fenced { epoch: self.epoch })
            }
            Err(e) => Err(e.into_error(what, &all)),
        }
    }

    /// Turns the failure of a `multi` that carried [`Leadership::fence`] into
    /// [`Error::Fenced`] when it was the fence that failed.
    pub(crate) fn fenced(&self, e: Error) -> Error {
        match &e {
            Error::Zk {
                path,
                source: zk::Error::BadVersion,
                ..
            } if *path == self.epoch_path => Error::Fenced { epoch: self.epoch },
            _ => e,
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

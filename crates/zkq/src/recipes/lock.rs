//! Distributed locks: a mutex per key, with fencing tokens.
//!
//! # Recipe
//! ```text
//!  acquire ──create <root>/locks/<key>/l-<id>-<seq> (EPHEMERAL_SEQUENTIAL)──► waiting
//!  waiting ──lowest sequence in line──► held (fencing token: the node's czxid)
//!  waiting ──not lowest──► watch the node just ahead only ──it is gone──► waiting
//!  waiting ──timeout / try-lock──► node deleted, not acquired
//!  held ──release, or the guard dropped──► node deleted: the next waiter is woken
//!  held ──connection in doubt, or node gone──► lost
//! ```
//!
//! Each waiter watches only its predecessor ([`crate::recipes::line`]), so a release wakes exactly one
//! process, however many wait (no herd effect). Each node name carries an id of its own, so
//! several waiters of one session (two jobs with the same key on one worker) never mistake each
//! other's nodes, and a create whose reply was lost with the connection is found again rather
//! than left behind. Found again after a `sync`, but a create still on its way to the leader can
//! commit after that look, which then made a second node: the first, ahead in line and unknown,
//! held the key for as long as the session lived. So a node in line that carries the caller's
//! own id is the caller's: one ahead of it is deleted, not waited for, and after such a doubt the
//! line is swept of the caller's id when it lets go. The key's directory is a CONTAINER znode:
//! the server deletes it once its last node is gone, so keys used once do not pile up under
//! `<root>/locks`.
//!
//! # Fencing token
//! The token is the zxid that created the holder's node. Every later holder of the same key
//! created its node later, so it has a larger token: a resource that remembers the largest
//! token it has seen can reject a stale holder's writes. Writes to ZooKeeper itself can be
//! guarded directly: [`LockGuard::check`] adds a check of the holder's node to a `multi`, which
//! then fails as a whole once the node is gone.
//!
//! # Connection loss and session expiry
//! The lock is held by the session: it ends when the session expires (the server deletes the
//! node) and another waiter may then take it. A holder cut off from ZooKeeper cannot know when
//! that happens, so its guard counts the lock as lost as soon as the connection leaves
//! `SyncConnected` ([`LockGuard::lost`]), even if the session later turns out to have survived:
//! work under the lock should stop then. Guarded writes stay safe either way: they fail unless
//! the node still exists. A waiter whose session ends gets [`Error::SessionLost`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::limits::MAX_KEY_BYTES;
use crate::recipes::line::{self, Place, Waited};
use crate::store::acl::AclPolicy;
use crate::store::layout::Layout;
use crate::store::session;
use crate::store::znode;

/// The mutex on one key. Cheap to clone; acquiring twice waits in line twice. Its znodes get
/// the layout's ACL.
#[derive(Debug, Clone)]
pub struct Lock {
    client: zk::Client,
    key: String,
    dir: String,
    holder: String,
    acl: AclPolicy,
    wakeups: Arc<AtomicU64>,
    /// The id of this caller's nodes, fixed instead of fresh for each try (tests only).
    node_id: Option<String>,
}

/// The lock, held. Dropping it releases the lock: the delete is sent at once without waiting
/// for its reply, and sent again after a reconnect if the connection dropped with it in flight
/// (a delete lost that way would leave the lock held for as long as the session lives).
#[derive(Debug)]
pub struct LockGuard {
    client: zk::Client,
    key: String,
    node: String,
    token: i64,
    lost: CancellationToken,
    monitor: tokio::task::JoinHandle<()>,
    released: bool,
    /// Set when a create of this caller's was in doubt: the line is swept of its id on letting go.
    leftovers: Option<Leftovers>,
}

impl Lock {
    /// The lock on `key` under `layout`, taken on `client`'s session. `holder` is stored in the
    /// lock node for operators (a worker id, a host name).
    ///
    /// # Errors
    /// [`Error::InvalidName`] for an empty key or one over [`MAX_KEY_BYTES`](crate::limits::MAX_KEY_BYTES) bytes.
    pub fn new(client: zk::Client, layout: &Layout, key: &str, holder: &str) -> Result<Lock> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidName {
                what: "lock key",
                name: key.to_string(),
                reason: "must be 1 to 256 bytes",
            });
        }
        Ok(Lock {
            client,
            key: key.to_string(),
            dir: layout.lock(key),
            holder: holder.to_string(),
            acl: layout.acl().clone(),
            wakeups: Arc::new(AtomicU64::new(0)),
            node_id: None,
        })
    }

    /// Names this caller's nodes with `id` instead of a fresh id per try, so that a test can
    /// make the node a lost create reply leaves behind.
    #[cfg(feature = "testing")]
    pub fn with_node_id(mut self, id: &str) -> Lock {
        self.node_id = Some(id.to_string());
        self
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// How often waiters on this lock (and its clones) were woken by their predecessor's watch
    /// (for tests of the herd effect).
    #[cfg(feature = "testing")]
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Takes the lock if nobody holds it or waits for it, without waiting.
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>> {
        self.acquire_until(Some(Instant::now())).await
    }

    /// Waits in line until the lock is this caller's.
    ///
    /// # Cancellation safety
    /// Dropping the future leaves the line (its node is deleted).
    pub async fn acquire(&self) -> Result<LockGuard> {
        // Without a deadline, a try ends only with the lock or an error.
        loop {
            if let Some(guard) = self.acquire_until(None).await? {
                return Ok(guard);
            }
        }
    }

    /// Waits in line for at most `timeout`; `None` if the lock was not acquired by then.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<Option<LockGuard>> {
        self.acquire_until(Some(Instant::now() + timeout)).await
    }

    async fn acquire_until(&self, deadline: Option<Instant>) -> Result<Option<LockGuard>> {
        let mut waiting = self.join().await?;
        let me = waiting.name().to_string();
        loop {
            let predecessor = match line::place(&self.client, &self.dir, &me).await? {
                Place::First => break,
                Place::Behind(predecessor) => predecessor,
            };
            if is_callers(&predecessor, &waiting.id) {
                // Left by a create whose reply was lost: nobody waits on it but this caller. Its
                // existence is the doubt: if this delete does not land, letting go sweeps it.
                waiting.doubt = true;
                debug!(key = %self.key, %predecessor, "deleting a lock node of this caller's own");
                match self.client.delete(&predecessor, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => continue,
                    Err(e) => return Err(Error::zk("delete own lock node", &predecessor, e)),
                }
            }
            if deadline.is_some_and(|at| Instant::now() >= at) {
                return Ok(None);
            }
            debug!(key = %self.key, %predecessor, "waiting for the lock");
            match line::wait_for(&self.client, &predecessor, deadline).await? {
                Waited::TimedOut => return Ok(None),
                Waited::Woken => {
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                }
                Waited::Gone => {}
            }
        }
        let leftovers = waiting.leftovers();
        let (node, token) = waiting.take();
        let lost = CancellationToken::new();
        let monitor = tokio::spawn(line::watch_held(self.client.clone(), node.clone(), lost.clone()));
        Ok(Some(LockGuard {
            client: self.client.clone(),
            key: self.key.clone(),
            node,
            token,
            lost,
            monitor,
            released: false,
            leftovers,
        }))
    }

    /// Creates this caller's node in line, and the key's directory if the server removed it.
    /// A create whose outcome was lost with the connection is looked for by its id once the
    /// connection is back.
    async fn join(&self) -> Result<Waiting> {
        let id = self
            .node_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let prefix = format!("{}/l-{id}-", self.dir);
        let mut doubt = false;
        loop {
            match self
                .client
                .create(
                    &prefix,
                    self.holder.as_bytes(),
                    &self.acl.options(zk::CreateMode::EphemeralSequential),
                )
                .await
            {
                Ok((stat, seq)) => {
                    let mut waiting = Waiting::new(&self.client, format!("{prefix}{seq}"), stat.czxid, &id);
                    waiting.doubt = doubt;
                    return Ok(waiting);
                }
                Err(zk::Error::NoNode) => self.make_dir().await?,
                Err(e) => match Error::zk("create lock node", &prefix, e) {
                    Error::OutcomeUnknown { .. } => {
                        doubt = true;
                        session::connected(&self.client).await?;
                        if let Some(mut found) = self.find(&id).await? {
                            found.doubt = true;
                            return Ok(found);
                        }
                    }
                    e => return Err(e),
                },
            }
        }
    }

    async fn make_dir(&self) -> Result<()> {
        let parent = self.dir.rsplit_once('/').map_or("/", |(p, _)| p);
        znode::ensure_path(&self.client, &self.acl, parent).await?;
        let container = self.acl.options(zk::CreateMode::Container);
        match self.client.create(&self.dir, &[], &container).await {
            Ok(_) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(Error::zk("create lock directory", &self.dir, e)),
        }
    }

    /// This caller's node with id `id`, if its create went through.
    async fn find(&self, id: &str) -> Result<Option<Waiting>> {
        // The member this session reconnected to may lag the leader: catch it up first. A
        // create still on its way may commit even later; see the module's documentation.
        if let Err(e) = self.client.sync(&self.dir).await {
            debug!(dir = %self.dir, error = %e, "sync before looking for a lock node failed");
        }
        let line = match self.client.list_children(&self.dir).await {
            Ok(line) => line,
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(Error::zk("list lock line", &self.dir, e)),
        };
        let Some(name) = line.into_iter().find(|n| is_callers(n, id)) else {
            return Ok(None);
        };
        let path = format!("{}/{name}", self.dir);
        match self.client.check_stat(&path).await {
            Ok(Some(stat)) => Ok(Some(Waiting::new(&self.client, path, stat.czxid, id))),
            Ok(None) => Ok(None),
            Err(e) => Err(Error::zk("stat lock node", &path, e)),
        }
    }
}

/// A node in line, deleted when this is dropped unless it was taken as the holder's.
struct Waiting {
    client: zk::Client,
    node: Option<(String, i64)>,
    /// The id in this caller's node names.
    id: String,
    /// Whether a create of this caller's had an unknown outcome.
    doubt: bool,
}

impl Waiting {
    fn new(client: &zk::Client, node: String, czxid: i64, id: &str) -> Waiting {
        Waiting {
            client: client.clone(),
            node: Some((node, czxid)),
            id: id.to_string(),
            doubt: false,
        }
    }

    /// What to sweep when letting go, if a create was in doubt.
    fn leftovers(&self) -> Option<Leftovers> {
        let (node, _) = self.node.as_ref()?;
        let dir = node.rsplit_once('/').map(|(d, _)| d.to_string())?;
        self.doubt.then(|| Leftovers {
            client: self.client.clone(),
            dir,
            id: self.id.clone(),
        })
    }

    fn name(&self) -> &str {
        self.node
            .as_ref()
            .and_then(|(path, _)| path.rsplit('/').next())
            .unwrap_or_default()
    }

    fn take(&mut self) -> (String, i64) {
        self.node.take().unwrap_or_default()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let leftovers = self.leftovers();
        if let Some((node, _)) = self.node.take() {
            znode::delete_surely(&self.client, node);
        }
        if let Some(leftovers) = leftovers {
            leftovers.sweep();
        }
    }
}

/// Whether the node at `path` (or the node name) carries the caller id `id` in its name.
fn is_callers(path: &str, id: &str) -> bool {
    path.rsplit('/')
        .next()
        .and_then(|name| name.strip_prefix("l-"))
        .and_then(|rest| rest.strip_prefix(id))
        .is_some_and(|rest| rest.starts_with('-'))
}

/// The line of a caller whose create was in doubt: a node of its own may have committed after
/// it looked, and nobody but the caller can delete it while its session lives.
#[derive(Debug)]
struct Leftovers {
    client: zk::Client,
    dir: String,
    id: String,
}

impl Leftovers {
    /// Deletes every node of the line that carries the caller's id, in the background.
    fn sweep(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let Ok(line) = self.client.list_children(&self.dir).await else {
                return;
            };
            for name in line {
                let path = format!("{}/{name}", self.dir);
                if is_callers(&path, &self.id) {
                    znode::delete_surely(&self.client, path);
                }
            }
        });
    }
}

impl LockGuard {
    /// The fencing token: larger for every later holder of the same key.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The holder's znode: a `multi` that checks it (version 0) fails once the lock is gone.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Cancelled as soon as holding the lock is in doubt (connection lost, node gone).
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Whether the lock is still held as far as this process can tell.
    pub fn is_held(&self) -> bool {
        !self.lost.is_cancelled()
    }

    /// Adds the check that guards a write to `multi`: the whole `multi` fails with `NoNode`
    /// unless this guard's node still exists.
    pub fn check(&self, multi: &mut zk::MultiWriter<'_>) -> Result<()> {
        multi
            .add_check_version(&self.node, 0)
            .map_err(|e| Error::zk("check lock", &self.node, e))
    }

    /// Releases the lock and waits for the server to confirm it.
    pub async fn release(mut self) -> Result<()> {
        self.released = true;
        self.lost.cancel();
        loop {
            match self.client.delete(&self.node, None).await {
                Ok(()) | Err(zk::Error::NoNode) => return Ok(()),
                Err(e) if session::is_final(&e) => return Ok(()),
                Err(e) => match Error::zk("release lock", &self.node, e) {
                    // Sent again once the connection is back: a delete lost with it would leave
                    // the lock held for as long as the session lives.
                    Error::OutcomeUnknown { .. } => {
                        if session::connected(&self.client).await.is_err() {
                            return Ok(());
                        }
                    }
                    e => return Err(e),
                },
            }
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.monitor.abort();
        if !self.released {
            self.lost.cancel();
            znode::delete_surely(&self.client, std::mem::take(&mut self.node));
        }
        if let Some(leftovers) = self.leftovers.take() {
            leftovers.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_callers;

    #[test]
    fn a_node_is_the_callers_when_its_name_carries_the_callers_id_whole() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_callers(&format!("/zkq/locks/k/l-{id}-0000000064"), id));
        assert!(!is_callers(
            "/zkq/locks/k/l-0123456789abcdef0123456789abcdee-0000000064",
            id
        ));
        assert!(!is_callers(&format!("/zkq/locks/k/l-{id}0-0000000064"), id));
        assert!(!is_callers("/zkq/locks/k/l-", id));
    }
}

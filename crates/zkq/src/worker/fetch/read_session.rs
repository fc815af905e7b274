//! The read session: a second session of the worker's that the fetcher lists, reads and
//! watches on while jobs flow, and closes when they stop.
//!
//! ZooKeeper answers a session's requests in order, so on the worker's own session a listing
//! or a job read waits for every claim and ack commit (an fsync each) sent before it. A busy
//! worker therefore opens a session of its own for the fetcher, where it waits for none: once
//! it hands out [`BUSY_JOBS`] jobs within a second, or a listing finds more jobs than it takes
//! in (a backlog). An idle worker has no commits to wait behind, and a second session would
//! cost ZooKeeper its keep-alive pings and a connection (servers cap connections per client
//! address, `maxClientCnxns`). So after [`crate::WorkerConfig::read_session_idle`] without
//! handing out a job, the fetcher goes back to the worker's own session and closes the other:
//! an idle fleet holds one session per worker.
//!
//! The fetcher's lane watches, claims watches, listings and job reads are always on one
//! session, [`Sessions::current`], so that a listing follows its lane's watch in that session's
//! order. A switch drops every watch and lists every lane again on the new session, as after a
//! reconnect. The read session holds nothing (no ephemeral node, no claim): when it ends, the
//! fetcher goes back to the worker's own session, and opens a new read session the next time
//! it is busy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client as zk;

use crate::error::Result;
use crate::store::session;

use super::AbortOnDrop;

/// Jobs handed out within a second that make a worker busy enough for a read session.
pub(super) const BUSY_JOBS: usize = 20;

/// After a read session failed to open, how long before the next try: the worker's own session
/// serves meanwhile.
const OPEN_AGAIN_AFTER: Duration = Duration::from_secs(10);

/// Opens a read session (with the worker's connection settings).
pub(crate) type Opener = Arc<dyn Fn() -> BoxFuture<'static, Result<zk::Client>> + Send + Sync>;

/// The sessions the fetcher may work on, and which one it works on now.
pub(crate) struct Sessions {
    /// The worker's own session: claims, acks, registration.
    own: zk::Client,
    open: Opener,
    read: Option<ReadSession>,
    opening: Option<JoinHandle<Result<zk::Client>>>,
    /// How long without handing out a job before the read session is closed.
    idle: Duration,
    /// When a job was last handed out.
    last_busy: Instant,
    /// No open is tried before this, after one failed.
    open_after: Option<Instant>,
    /// Jobs handed out since `window_start`, within the current second.
    window_start: Instant,
    window_jobs: usize,
}

struct ReadSession {
    client: zk::Client,
    /// Cancelled when the session ends.
    ended: CancellationToken,
    _following: AbortOnDrop,
}

impl Sessions {
    /// The fetcher's sessions: `own` (the worker's) until busy, then read sessions that `open`
    /// opens, each closed after `idle` without a job handed out.
    pub(crate) fn new(own: zk::Client, open: Opener, idle: Duration) -> Sessions {
        let now = Instant::now();
        Sessions {
            own,
            open,
            read: None,
            opening: None,
            idle,
            last_busy: now,
            open_after: None,
            window_start: now,
            window_jobs: 0,
        }
    }

    /// The session the fetcher lists, reads and watches on.
    pub(super) fn current(&self) -> &zk::Client {
        self.read.as_ref().map_or(&self.own, |r| &r.client)
    }

    /// Whether the fetcher works on the read session.
    pub(super) fn reading(&self) -> bool {
        self.read.is_some()
    }

    /// A scan handed out `jobs`: opens a read session once that makes [`BUSY_JOBS`] within a
    /// second.
    pub(super) fn handed_out(&mut self, jobs: usize) {
        if jobs == 0 {
            return;
        }
        let now = Instant::now();
        self.last_busy = now;
        if now.duration_since(self.window_start) >= Duration::from_secs(1) {
            self.window_start = now;
            self.window_jobs = 0;
        }
        self.window_jobs += jobs;
        if self.window_jobs >= BUSY_JOBS {
            self.open_read();
        }
    }

    /// A listing found more jobs than it took in: opens a read session.
    pub(super) fn backlog(&mut self) {
        self.last_busy = Instant::now();
        self.open_read();
    }

    fn open_read(&mut self) {
        if self.open_after.is_some_and(|after| Instant::now() < after) {
            return;
        }
        if self.read.is_none() && self.opening.is_none() {
            debug!("busy: opening a read session");
            self.opening = Some(tokio::spawn((self.open)()));
        }
    }

    /// Takes in what happened since the last call: a read session opened, ended, or stayed
    /// idle long enough to be closed. Returns whether [`Sessions::current`] changed.
    pub(super) fn update(&mut self) -> bool {
        if let Some(read) = &self.read {
            if read.ended.is_cancelled() {
                warn!("the read session ended; listing on the worker's own session until busy again");
                self.read = None;
                return true;
            }
            if self.last_busy.elapsed() >= self.idle {
                debug!("idle: closing the read session");
                self.close_read();
                return true;
            }
            return false;
        }
        let Some(opening) = self.opening.as_mut() else {
            return false;
        };
        let Some(opened) = opening.now_or_never() else {
            return false;
        };
        self.opening = None;
        match opened {
            Ok(Ok(client)) if self.last_busy.elapsed() >= self.idle => {
                // Idle again by the time it opened.
                close_later(client);
                false
            }
            Ok(Ok(client)) => {
                let ended = CancellationToken::new();
                let following = tokio::spawn(follow(client.clone(), ended.clone()));
                self.read = Some(ReadSession {
                    client,
                    ended,
                    _following: AbortOnDrop(following),
                });
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "cannot open a read session; listing on the worker's own session");
                self.open_after = Some(Instant::now() + OPEN_AGAIN_AFTER);
                false
            }
            Err(e) => {
                warn!(error = %e, "opening a read session failed");
                self.open_after = Some(Instant::now() + OPEN_AGAIN_AFTER);
                false
            }
        }
    }

    /// A request on the read session failed because it ended: lets go of it.
    pub(super) fn read_lost(&mut self) {
        self.read = None;
    }

    /// Resolves when the read session ends; never while there is none.
    pub(super) fn read_ended(&self) -> impl std::future::Future<Output = ()> + 'static {
        let ended = self.read.as_ref().map(|r| r.ended.clone());
        async move {
            match ended {
                Some(ended) => ended.cancelled().await,
                None => std::future::pending().await,
            }
        }
    }

    /// Closes the read session, if open, within `within`.
    pub(super) async fn close(mut self, within: Duration) {
        let read = self.read.take();
        // Lets go of the worker's own session (its closing waits for every handle) and stops
        // an opening.
        drop(self);
        if let Some(read) = read {
            session::close(read.client, within).await;
        }
    }

    fn close_read(&mut self) {
        if let Some(read) = self.read.take() {
            close_later(read.client);
        }
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        if let Some(opening) = self.opening.take() {
            opening.abort();
        }
    }
}

/// Closes a read session in the background, within 2 s.
fn close_later(client: zk::Client) {
    tokio::spawn(session::close(client, Duration::from_secs(2)));
}

/// Cancels `ended` when the session of `client` ends for good.
async fn follow(client: zk::Client, ended: CancellationToken) {
    let mut states = client.state_watcher();
    drop(client);
    crate::recipes::line::session_ended(&mut states).await;
    ended.cancel();
}

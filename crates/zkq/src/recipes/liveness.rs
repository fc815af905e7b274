//! How long a session is surely alive, from the worker's own point of view.
//!
//! The server expires a session once it has heard nothing from it for the session timeout. A
//! reply to a request sent at time `T` proves the server heard from the session after `T`, so
//! the session cannot expire before `T + timeout`. The heartbeat sends a small read every tenth
//! of the timeout and keeps `T` of the latest one answered.
//!
//! From `T` two deadlines follow:
//! - **fenced** at `T + fence_share x timeout`: the worker stops claiming and stops its running
//!   attempts, well before the server could expire the session and let another worker take its
//!   jobs. The fence lifts when a reply comes again (the session survived).
//! - **kill** at `T + KILL_SHARE x timeout`: the deadline handed to a command's watchdog, a
//!   separate process that stops the command even when the worker itself is frozen and cannot
//!   fence ([`crate::recipes::watchdog`]).
//!
//! Times are `CLOCK_MONOTONIC` nanoseconds, the clock the watchdog shares.

use std::time::Duration;

use tokio::sync::watch;
use zookeeper_client as zk;

use crate::recipes::watchdog::monotonic_ns;
use crate::telemetry::{self, Health};

/// Share of the session timeout after the last answered probe at which a command's watchdog
/// kills it: a fifth of the timeout is left as margin before the server can expire the session.
pub const KILL_SHARE: f64 = 0.8;

/// What the heartbeat knows: when the latest answered probe was sent, and whether the worker
/// is fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Beat {
    pub sent_ns: u64,
    pub fenced: bool,
}

/// A reader of the heartbeat. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Liveness {
    beats: watch::Receiver<Beat>,
    timeout: Duration,
    fence_after_ns: u64,
}

impl Liveness {
    /// Whether the worker has gone too long without a reply from ZooKeeper and must not act.
    ///
    /// Computed from the clock, not only from what the heartbeat task last published: code
    /// that resumes after the whole process was frozen sees the fence at once, before the
    /// heartbeat task has run again.
    pub fn is_fenced(&self) -> bool {
        let beat = *self.beats.borrow();
        beat.fenced || monotonic_ns() > beat.sent_ns + self.fence_after_ns
    }

    /// The monotonic time (ns) before which the session surely has not expired, less the
    /// watchdog's margin: a command still running then is killed.
    pub fn kill_at_ns(&self) -> u64 {
        self.beats.borrow().sent_ns + self.timeout.mul_f64(KILL_SHARE).as_nanos() as u64
    }

    /// The session timeout the server granted.
    pub fn session_timeout(&self) -> Duration {
        self.timeout
    }

    /// Waits for the next answered probe or fence change. Returns false once the heartbeat
    /// has ended (the session is over).
    pub async fn changed(&mut self) -> bool {
        self.beats.changed().await.is_ok()
    }

    /// Resolves once the worker is fenced; never, if the heartbeat has ended (the session is
    /// over, which the worker learns on its own).
    pub(crate) async fn fenced(&mut self) {
        loop {
            if self.is_fenced() {
                return;
            }
            let fence_at = self.beats.borrow().sent_ns + self.fence_after_ns;
            let wait = Duration::from_nanos(fence_at.saturating_sub(monotonic_ns()));
            tokio::select! {
                alive = self.beats.changed() => if alive.is_err() {
                    std::future::pending::<()>().await;
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Resolves once ZooKeeper answers again and the worker is no longer fenced; never, if the
    /// heartbeat has ended.
    pub(crate) async fn cleared(&mut self) {
        while self.is_fenced() {
            if self.beats.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Starts the heartbeat of `client`'s session, reading `probe` (any path; it need not exist).
/// The returned task runs until the session ends; drop or abort it to stop.
/// Fencing shows in `health` (not ready while fenced) and in [`telemetry::FENCED`].
pub(crate) fn start(
    client: zk::Client,
    probe: String,
    fence_share: f64,
    health: Health,
) -> (Liveness, impl std::future::Future<Output = ()> + Send) {
    let timeout = client.session_timeout();
    let (tx, rx) = watch::channel(Beat {
        sent_ns: monotonic_ns(),
        fenced: false,
    });
    let fence_after_ns = timeout.mul_f64(fence_share).as_nanos() as u64;
    let liveness = Liveness {
        beats: rx,
        timeout,
        fence_after_ns,
    };
    (liveness, beat(client, probe, timeout, fence_after_ns, tx, health))
}

async fn beat(
    client: zk::Client,
    probe: String,
    timeout: Duration,
    fence_after: u64,
    tx: watch::Sender<Beat>,
    health: Health,
) {
    let interval = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One probe in flight at a time: a reply that comes late still proves its send time.
    let mut inflight: Option<(u64, futures::future::BoxFuture<'static, bool>)> = None;
    loop {
        if client.state().is_terminated() {
            return;
        }
        let (sent, pending) = inflight.get_or_insert_with(|| {
            let (c, path) = (client.clone(), probe.clone());
            let probe: futures::future::BoxFuture<'static, bool> =
                Box::pin(async move { c.check_stat(&path).await.is_ok() });
            (monotonic_ns(), probe)
        });
        let sent = *sent;
        tokio::select! {
            answered = pending => {
                inflight = None;
                if answered {
                    tx.send_if_modified(|b| {
                        let fresh = sent > b.sent_ns;
                        if fresh {
                            b.sent_ns = sent;
                        }
                        let was = b.fenced;
                        b.fenced = false;
                        fresh || was
                    });
                    health.set_fenced(false);
                }
                tick.tick().await;
            }
            _ = tick.tick() => {}
        }
        let now = monotonic_ns();
        let fenced_now = tx.send_if_modified(|b| {
            let fence = now > b.sent_ns + fence_after;
            let changed = fence && !b.fenced;
            b.fenced |= fence;
            changed
        });
        if fenced_now {
            metrics::counter!(telemetry::FENCED).increment(1);
            health.set_fenced(true);
        }
    }
}

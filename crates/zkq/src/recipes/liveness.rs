//! How long a session is surely alive, from the worker's own point of view.
//!
//! The server expires a session once it has heard nothing from it for the session timeout. A
//! reply to a request sent at time `T` proves the server heard from the session after `T`, so
//! the session cannot expire before `T + timeout`. The heartbeat sends a small read and keeps
//! `T` of the latest one answered: every tenth of the timeout while the worker runs attempts
//! ([`Liveness::busy`]), every 2/15 while it is idle. The idle pace is just under the client's
//! own ping pace (3/20 of the session timeout, with its default connection timeout of 2/5), so
//! an idle worker's probes take the place of its pings instead of adding to them.
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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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
    /// Holders of a [`Busy`]: while there are any, the heartbeat beats at its busy pace.
    busy: Arc<AtomicUsize>,
}

/// While held, the heartbeat beats at its busy pace. See [`Liveness::busy`].
#[derive(Debug)]
pub(crate) struct Busy(Arc<AtomicUsize>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// Keeps the heartbeat at its busy pace until dropped: held by each running attempt, whose
    /// fence and watchdog deadline follow the latest answered probe.
    pub(crate) fn busy(&self) -> Busy {
        self.busy.fetch_add(1, Ordering::Relaxed);
        Busy(self.busy.clone())
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
    let busy = Arc::new(AtomicUsize::new(0));
    let liveness = Liveness {
        beats: rx,
        timeout,
        fence_after_ns,
        busy: busy.clone(),
    };
    let beating = Beating {
        client,
        probe,
        busy,
        fence_after: fence_after_ns,
        tx,
        health,
    };
    (liveness, beating.beat(timeout))
}

/// The heartbeat task's state.
struct Beating {
    client: zk::Client,
    probe: String,
    busy: Arc<AtomicUsize>,
    fence_after: u64,
    tx: watch::Sender<Beat>,
    health: Health,
}

impl Beating {
    async fn beat(self, timeout: Duration) {
        let busy_pace = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_secs(1));
        // Half the fence at most, so that an idle worker is not fenced between two probes
        // (unless the busy pace is longer already: a fence under a fifth of the timeout).
        let idle_pace = (timeout * 2 / 15)
            .min(Duration::from_nanos(self.fence_after / 2))
            .max(busy_pace);
        // Fine enough that each pace is kept to within a quarter of the idle one.
        let tick_every = busy_pace.min(idle_pace / 4);
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One probe in flight at a time: a reply that comes late still proves its send time.
        let mut inflight: Option<(u64, futures::future::BoxFuture<'static, bool>)> = None;
        let mut last_sent = 0;
        loop {
            if self.client.state().is_terminated() {
                return;
            }
            let pace = if self.busy.load(Ordering::Relaxed) > 0 {
                busy_pace
            } else {
                idle_pace
            };
            let now = monotonic_ns();
            // Half a tick early rather than a whole tick late: the ticks that follow a send
            // come a hair less than a whole number of ticks after it.
            let due = last_sent + pace.as_nanos() as u64;
            if inflight.is_none() && now + (tick_every / 2).as_nanos() as u64 >= due {
                let (c, path) = (self.client.clone(), self.probe.clone());
                let probe: futures::future::BoxFuture<'static, bool> =
                    Box::pin(async move { c.check_stat(&path).await.is_ok() });
                last_sent = now;
                inflight = Some((now, probe));
            }
            let answered = match inflight.as_mut() {
                Some((sent, pending)) => {
                    let sent = *sent;
                    tokio::select! {
                        answered = pending => {
                            inflight = None;
                            answered.then_some(sent)
                        }
                        _ = tick.tick() => None,
                    }
                }
                None => {
                    tick.tick().await;
                    None
                }
            };
            if let Some(sent) = answered {
                self.answered(sent);
            }
            self.check_fence();
        }
    }

    /// A probe sent at `sent` was answered: the session lived then.
    fn answered(&self, sent: u64) {
        self.tx.send_if_modified(|b| {
            let fresh = sent > b.sent_ns;
            if fresh {
                b.sent_ns = sent;
            }
            let was = b.fenced;
            b.fenced = false;
            fresh || was
        });
        self.health.set_fenced(false);
    }

    /// Fences the worker once the latest answered probe is too old.
    fn check_fence(&self) {
        let now = monotonic_ns();
        let fenced_now = self.tx.send_if_modified(|b| {
            let fence = now > b.sent_ns + self.fence_after;
            let changed = fence && !b.fenced;
            b.fenced |= fence;
            changed
        });
        if fenced_now {
            metrics::counter!(telemetry::FENCED).increment(1);
            self.health.set_fenced(true);
        }
    }
}

//! Metric names, and the health of a process's ZooKeeper session.
//!
//! zkq records through the `metrics` facade; a binary attaches an exporter (zkq-worker's
//! `--metrics-addr` serves Prometheus text) to publish them. Labels are given with each name.
//! [`Health`] is what an orchestrator's readiness probe asks: is the session connected, and is
//! the process not fenced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use zookeeper_client as zk;

/// Counter `{queue}`: jobs committed by producers.
pub const ENQUEUED: &str = "zkq_jobs_enqueued_total";
/// Counter `{queue, kind}`: attempts started by workers.
pub const STARTED: &str = "zkq_jobs_started_total";
/// Counter `{queue, kind, outcome}`: attempts ended, `outcome` one of `done`, `retry`, `dead`,
/// `cancelled`, `released` (put back without using an attempt: shutdown, fencing).
pub const FINISHED: &str = "zkq_jobs_finished_total";
/// Histogram `{queue, kind}`: how long attempts ran, seconds.
pub const DURATION_SECONDS: &str = "zkq_job_duration_seconds";
/// Histogram `{queue}`: from ready (enqueued, or due) to claimed, seconds.
pub const START_DELAY_SECONDS: &str = "zkq_job_start_delay_seconds";
/// Gauge `{queue}`: attempts running in this process.
pub const RUNNING: &str = "zkq_jobs_running";
/// Counter `{queue}`: claims won.
pub const CLAIMS: &str = "zkq_claims_total";
/// Counter `{queue}`: claims another worker won first.
pub const CLAIM_RACES_LOST: &str = "zkq_claim_races_lost_total";
/// Counter `{queue}`: attempts whose claim went before they could settle (the session ended);
/// the job runs again elsewhere.
pub const CLAIMS_LOST: &str = "zkq_jobs_claim_lost_total";
/// Counter `{queue}`: job znodes that could not be decoded, moved to the dead letters.
pub const UNDECODABLE: &str = "zkq_jobs_undecodable_total";
/// Gauge: 1 while the ZooKeeper session is connected.
pub const SESSION_CONNECTED: &str = "zkq_session_connected";
/// Counter: connections re-established within a session.
pub const RECONNECTS: &str = "zkq_reconnects_total";
/// Counter: sessions the server expired.
pub const SESSION_EXPIRED: &str = "zkq_session_expired_total";
/// Counter: times the process fenced itself (no reply from ZooKeeper for too long).
pub const FENCED: &str = "zkq_fenced_total";
/// Gauge: 1 while this process leads the scheduler election.
pub const SCHEDULER_LEADER: &str = "zkq_scheduler_leader";
/// Gauge: the epoch of this process's scheduler leadership.
pub const SCHEDULER_EPOCH: &str = "zkq_scheduler_epoch";
/// Counter `{queue}`: delayed jobs promoted to ready.
pub const PROMOTED: &str = "zkq_jobs_promoted_total";
/// Counter `{schedule}`: ticks fired by periodic jobs.
pub const CRON_FIRED: &str = "zkq_cron_fired_total";
/// Counter `{queue}`: partitions given a new owner.
pub const PARTITIONS_MOVED: &str = "zkq_partitions_moved_total";
/// Gauge `{name}`: 1 while this process is the singleton's master.
pub const SINGLETON_MASTER: &str = "zkq_singleton_master";
/// Counter `{name}`: runs of the singleton's command started by this process.
pub const SINGLETON_RUNS: &str = "zkq_singleton_runs_total";
/// Counter `{queue}`: dead letters removed by trimming.
pub const TRIMMED: &str = "zkq_dead_letters_trimmed_total";
/// Gauge `{queue, priority}`: ready jobs, not running (scheduler leader only).
pub const QUEUE_READY: &str = "zkq_queue_ready";
/// Gauge `{queue}`: jobs waiting for their due time (scheduler leader only).
pub const QUEUE_DELAYED: &str = "zkq_queue_delayed";
/// Gauge `{queue}`: jobs running (scheduler leader only).
pub const QUEUE_RUNNING: &str = "zkq_queue_running";
/// Gauge `{queue}`: dead letters (scheduler leader only).
pub const QUEUE_DEAD: &str = "zkq_queue_dead";
/// Gauge `{queue}`: 1 while the queue is paused (scheduler leader only).
pub const QUEUE_PAUSED: &str = "zkq_queue_paused";
/// Gauge `{queue}`: live workers serving the queue (scheduler leader only).
pub const WORKERS: &str = "zkq_workers";

/// Whether an exporter asked for the queue depth (see [`describe`]): the leader counts it only
/// then, not for nothing.
static DEPTH_WANTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn depth_wanted() -> bool {
    DEPTH_WANTED.load(Ordering::Relaxed)
}

/// Describes every metric to the installed recorder (the HELP lines of Prometheus text), shows
/// the process-wide series at 0 before their first event (so that an alert on them has a series
/// from the start), and asks the scheduler leader to count the queue depth for
/// [`depth_text`]. Call once, after installing a recorder.
pub fn describe() {
    DEPTH_WANTED.store(true, Ordering::Relaxed);
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(ENQUEUED, "Jobs committed by producers in this process.");
    describe_counter!(STARTED, "Attempts started.");
    describe_counter!(
        FINISHED,
        "Attempts ended, by outcome: done, retry, dead, cancelled, released (put back without using an attempt)."
    );
    describe_histogram!(DURATION_SECONDS, Unit::Seconds, "How long attempts ran.");
    describe_histogram!(
        START_DELAY_SECONDS,
        Unit::Seconds,
        "From ready (enqueued or due) to claimed."
    );
    describe_gauge!(RUNNING, "Attempts running in this process.");
    describe_counter!(CLAIMS, "Claims won.");
    describe_counter!(CLAIM_RACES_LOST, "Claims another worker won first.");
    describe_counter!(
        CLAIMS_LOST,
        "Attempts whose claim went with the session; the job runs again elsewhere."
    );
    describe_counter!(
        UNDECODABLE,
        "Job znodes that could not be read, moved to the dead letters."
    );
    describe_gauge!(SESSION_CONNECTED, "1 while the ZooKeeper session is connected.");
    describe_counter!(RECONNECTS, "Connections re-established within a session.");
    describe_counter!(SESSION_EXPIRED, "Sessions the server expired.");
    describe_counter!(
        FENCED,
        "Times the process fenced itself (no reply from ZooKeeper for too long)."
    );
    describe_gauge!(
        SCHEDULER_LEADER,
        "1 while this process leads the scheduler election."
    );
    describe_gauge!(
        SCHEDULER_EPOCH,
        "The epoch of this process's scheduler leadership."
    );
    describe_counter!(PROMOTED, "Delayed jobs promoted to ready.");
    describe_counter!(CRON_FIRED, "Periodic job ticks fired.");
    describe_counter!(PARTITIONS_MOVED, "Partitions given a new owner.");
    describe_gauge!(
        SINGLETON_MASTER,
        "1 while this process is the singleton's master."
    );
    describe_counter!(
        SINGLETON_RUNS,
        "Runs of the singleton's command started by this process."
    );
    describe_counter!(TRIMMED, "Dead letters removed by trimming.");
    for counter in [RECONNECTS, SESSION_EXPIRED, FENCED] {
        metrics::counter!(counter).increment(0);
    }
    metrics::gauge!(SESSION_CONNECTED).set(0.0);
    metrics::gauge!(SCHEDULER_LEADER).set(0.0);
}

/// The leader's latest queue depth, as Prometheus text; `None` where this process does not
/// lead. Kept apart from the `metrics` registry, whose gauges stay once set: a process that
/// stops leading must stop exporting depth.
static DEPTH: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The queue depth gauges to export, while this process leads the scheduler.
pub fn depth_text() -> Option<String> {
    DEPTH.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

pub(crate) fn set_depth(text: Option<String>) {
    *DEPTH.lock().unwrap_or_else(|p| p.into_inner()) = text;
}

/// The health of one process's ZooKeeper session: connected, and not fenced. Cheap to clone;
/// the session's tasks update it, a readiness probe reads it.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    connected: AtomicBool,
    fenced: AtomicBool,
}

impl Health {
    /// Whether the session is connected and the process is not fenced: it can do its work.
    pub fn is_ready(&self) -> bool {
        self.is_connected() && !self.inner.fenced.load(Ordering::Relaxed)
    }

    /// Whether the session is connected.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_fenced(&self, fenced: bool) {
        self.inner.fenced.store(fenced, Ordering::Relaxed);
    }

    fn set_connected(&self, connected: bool) {
        self.inner.connected.store(connected, Ordering::Relaxed);
        metrics::gauge!(SESSION_CONNECTED).set(if connected { 1.0 } else { 0.0 });
    }

    /// Follows `client`'s session until it ends: connected or not, reconnects, expiry.
    pub(crate) async fn follow(&self, client: zk::Client) {
        /// Not connected once following ends, however it ends (the session over, or the task
        /// aborted with it).
        struct Disconnected<'a>(&'a Health);
        impl Drop for Disconnected<'_> {
            fn drop(&mut self) {
                self.0.set_connected(false);
            }
        }
        let _disconnected = Disconnected(self);
        // A new session starts unfenced: its heartbeat fences it if need be.
        self.set_fenced(false);
        let mut states = client.state_watcher();
        drop(client);
        let mut state = states.state();
        let mut connected = state == zk::SessionState::SyncConnected;
        self.set_connected(connected);
        while !state.is_terminated() {
            state = states.changed().await;
            let now = state == zk::SessionState::SyncConnected;
            if now && !connected {
                metrics::counter!(RECONNECTS).increment(1);
            }
            if now != connected {
                self.set_connected(now);
                connected = now;
            }
        }
        if state == zk::SessionState::Expired {
            metrics::counter!(SESSION_EXPIRED).increment(1);
        }
    }
}

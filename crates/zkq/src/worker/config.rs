//! How a worker runs: [`WorkerConfig`], every field with a default.

use std::time::Duration;

use crate::queue::QueueConfig;
use crate::registry;
use crate::scheduler::SchedulerConfig;

/// How a worker runs. Every field has a default.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Worker id, unique among live workers. Defaults to `<host>-<pid>-<random>`.
    pub id: String,
    /// Queues to take jobs from. Required.
    pub queues: Vec<String>,
    /// Attempts run at once. Defaults to 10.
    pub concurrency: usize,
    /// Run time limit of an attempt, unless the job sets its own. Defaults to 30 minutes.
    pub job_timeout: Duration,
    /// After an attempt is told to stop, how long it may take before it is dropped. Defaults
    /// to 5 s.
    pub stop_grace: Duration,
    /// On shutdown, how long running attempts may take to finish. Defaults to 30 s.
    pub shutdown_grace: Duration,
    /// Longest sleep between scans when no watch fires; the lanes whose watches reported a
    /// change since their last listing are then listed again (a safety net). Defaults to 5 s.
    pub poll_interval: Duration,
    /// Whether this worker stands for election as the scheduler (which promotes due delayed
    /// jobs, assigns partitions, fires periodic jobs and trims dead letters). Defaults to true.
    pub scheduler: bool,
    /// How the scheduler paces itself, while this worker leads.
    pub scheduling: SchedulerConfig,
    /// Config for queues this worker creates because they did not exist yet.
    pub default_queue_config: QueueConfig,
    /// Share of the session timeout without a reply from ZooKeeper after which the worker
    /// stops claiming and stops its running attempts (self-fencing). Between 0.1 and 0.75, below
    /// the watchdog's [`crate::limits::KILL_SHARE`]. Defaults to 0.6.
    pub fence_share: f64,
    /// How long a worker keeps its read session after it last handed out a job. A busy worker
    /// lists and reads on a second session, where nothing waits for its claim and ack commits;
    /// an idle one closes it (at its next scan past this time) and keeps only its own. At least
    /// 1 s. Defaults to 30 s.
    pub read_session_idle: Duration,
    /// Whether each attempt's start and end are logged at info (with its queue, id, kind,
    /// attempt, and at the end its duration and outcome). Defaults to true.
    pub log_attempts: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        WorkerConfig {
            id: format!("{}-{}-{}", registry::hostname(), std::process::id(), &random[..6]),
            queues: Vec::new(),
            concurrency: 10,
            job_timeout: Duration::from_secs(30 * 60),
            stop_grace: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            scheduler: true,
            scheduling: SchedulerConfig::default(),
            default_queue_config: QueueConfig::default(),
            fence_share: 0.6,
            read_session_idle: Duration::from_secs(30),
            log_attempts: true,
        }
    }
}

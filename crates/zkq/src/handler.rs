//! What a worker runs: handlers, the context they get, and the outcome they return.
//!
//! Outcomes are about the job (done, try again, give up); infrastructure errors are
//! [`crate::Error`] and never reach a handler.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zookeeper_client as zk;

use crate::job::Job;
use crate::recipes::liveness::Liveness;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The job is done and is deleted.
    Done,
    /// The attempt failed. The job runs again after `after` (the queue's backoff when `None`),
    /// or goes to the dead letters when it has no attempts left.
    Retry { error: String, after: Option<Duration> },
    /// The job failed for good: dead letters now, whatever attempts are left.
    Dead { error: String },
}

impl Outcome {
    /// A failure retried with the queue's backoff.
    pub fn retry(error: impl Into<String>) -> Outcome {
        Outcome::Retry {
            error: error.into(),
            after: None,
        }
    }

    /// A failure retried after `after`.
    pub fn retry_after(error: impl Into<String>, after: Duration) -> Outcome {
        Outcome::Retry {
            error: error.into(),
            after: Some(after),
        }
    }

    /// A failure that should not be retried.
    pub fn dead(error: impl Into<String>) -> Outcome {
        Outcome::Dead { error: error.into() }
    }
}

/// What a handler gets for one attempt.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The job, with `attempt` already counting this run (1 for the first).
    pub job: Job,
    /// The queue the job came from.
    pub queue: String,
    /// The worker running it.
    pub worker_id: String,
    /// Cancelled when the attempt must stop (timeout, shutdown past its grace period, session
    /// lost). A handler that watches it can stop cleanly; one that does not is dropped at its
    /// next `.await` shortly after.
    pub stop: CancellationToken,
    /// This attempt's hold on the job, for effects that must not outlive it.
    pub fence: Fence,
}

/// An attempt's hold on its job: a fencing token and the checks that guard effects.
///
/// A worker frozen past its session timeout resumes without knowing that its claim is gone and
/// that another worker may be running the job. Effects guarded by the fence never interleave
/// with the next attempt's:
/// - writes to ZooKeeper: [`Fence::check`] adds checks to a `multi` (on any session) that fail
///   it unless this attempt's claim (and lock, for a job with a lock key) still stands;
/// - other resources: [`Fence::token`] grows with every claim of every job, so a resource that
///   remembers the largest token it accepted (per job, or per lock key) rejects a stale one;
/// - anything else: [`Fence::is_valid`] right before acting, which fails as soon as the worker
///   has gone a share of its session timeout without a reply from ZooKeeper (so before the
///   server can expire the session), even right after the process resumes from a freeze.
#[derive(Debug, Clone)]
pub struct Fence {
    pub(crate) token: i64,
    /// `(path, version)` pairs that hold exactly while this attempt's claim does.
    pub(crate) checks: Vec<(String, i32)>,
    pub(crate) liveness: Liveness,
    pub(crate) stop: CancellationToken,
}

impl Fence {
    /// The fencing token: the zxid of the transaction that claimed the job for this attempt.
    /// A later claim of any job has a larger one, and a job with a lock key is claimed only
    /// while its lock is held, so tokens also grow along each lock key.
    pub fn token(&self) -> i64 {
        self.token
    }

    /// Whether this attempt may still act: it was not told to stop, and the worker has heard
    /// from ZooKeeper recently enough that its session cannot have expired.
    pub fn is_valid(&self) -> bool {
        !self.stop.is_cancelled() && !self.liveness.is_fenced()
    }

    /// Adds to `multi` the checks that fail it once this attempt's claim is gone: the job's
    /// version as this claim wrote it, the claim znode, and the job's lock node if it has one.
    ///
    /// # Errors
    /// Only a bad path, which the worker never produces.
    pub fn check(&self, multi: &mut zk::MultiWriter<'_>) -> Result<(), zk::Error> {
        for (path, version) in &self.checks {
            multi.add_check_version(path, *version)?;
        }
        Ok(())
    }

    /// The session's heartbeat, for handlers that hand a deadline to another process.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }
}

/// A boxed future returned by handlers.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// Runs jobs of one kind.
///
/// Any `Fn(JobContext) -> impl Future<Output = Outcome>` is a handler.
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, ctx: JobContext) -> HandlerFuture;
}

impl<F, Fut> Handler for F
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn run(&self, ctx: JobContext) -> HandlerFuture {
        Box::pin(self(ctx))
    }
}

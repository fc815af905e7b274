//! What a worker runs: handlers, the context they get, and the outcome they return.
//!
//! Outcomes are about the job (done, try again, give up); infrastructure errors are
//! [`crate::Error`] and never reach a handler.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::job::Job;

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

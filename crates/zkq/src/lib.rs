//! zkq: a distributed work queue on Apache ZooKeeper.
//!
//! Producers enqueue jobs into durable, partitioned priority queues; a fleet of workers claims
//! and runs them. ZooKeeper is the only stateful component: jobs, claims, membership and
//! configuration all live in znodes, and a worker's claims live in its session, so a crashed
//! worker's jobs are ready again within the session timeout.
//!
//! ```no_run
//! use zkq::{NewJob, Outcome, Producer, Worker, WorkerConfig, ZkConfig};
//!
//! # async fn demo() -> zkq::Result<()> {
//! let zk = ZkConfig::new("127.0.0.1:2181");
//! let producer = Producer::connect(&zk, "/zkq").await?;
//! producer.enqueue("emails", NewJob::new("welcome", b"user-42".to_vec())).await?;
//!
//! let config = WorkerConfig { queues: vec!["emails".into()], ..WorkerConfig::default() };
//! let worker = Worker::new(zk, "/zkq", config)?.handle("welcome", |ctx: zkq::JobContext| async move {
//!     println!("welcome {}", String::from_utf8_lossy(&ctx.job.payload));
//!     Outcome::Done
//! })?;
//! worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`job`]: the job record and [`NewJob`], what producers submit.
//! - [`queue`]: queues and [`QueueConfig`], stored in the queue's znode.
//! - [`layout`]: the znode paths and the naming rules.
//! - [`codec`](crate::codec) (private): MessagePack records with a format version.
//! - [`segment`](crate::segment) (private): bounded runs of job znodes, one writer each.
//! - [`producer`]: [`Producer`], enqueue one or a batch (one `multi`).
//! - [`claim`]: claim, ack, retry, dead letter, release: the versioned `multi`s.
//! - [`fetch`](crate::fetch) (private): scanning for ready jobs, watches when idle.
//! - [`promoter`]: moving due delayed jobs to their lanes.
//! - [`scheduler`]: [`Scheduler`], the elected leader's services, fenced by its epoch.
//! - [`assignment`]: balanced, sticky partition ownership, written by the leader.
//! - [`cron`]: [`PeriodicJob`], cron schedules fired once per tick.
//! - [`trim`](crate::trim) (private): dead letters removed by count and age.
//! - [`handler`]: [`Handler`], [`JobContext`], [`Outcome`].
//! - [`exec`]: [`CommandHandler`], a shell command per job in its own process group.
//! - [`election`]: leader election with an epoch as fencing token.
//! - [`singleton`]: batch-job master failover, [`singleton::SingletonRunner`].
//! - [`watchdog`]: the dead man's switch that stops a command its frozen runner cannot stop.
//! - [`registry`]: worker registration (ephemeral znodes).
//! - [`worker`]: [`Worker`], the run loop, sessions and graceful shutdown.
//! - [`retry`]: [`RetryPolicy`], exponential backoff with jitter.
//! - [`telemetry`]: metric names.
//! - [`error`]: [`Error`], infrastructure errors.

mod assignment;
mod batcher;
mod claim;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod election;
mod error;
mod exec;
mod handler;
pub mod inspect;
mod job;
mod layout;
pub mod limits;
mod line;
mod liveness;
mod lock;
mod periodic;
mod producer;
mod queue;
mod registry;
mod retry;
mod scheduler;
mod segment;
pub mod singleton;
pub mod telemetry;
mod txn;
pub mod watchdog;
mod worker;
mod znode;

pub use election::{Election, Leadership};
pub use error::{Error, Result};
pub use exec::CommandHandler;
pub use handler::{Fence, Handler, HandlerFuture, JobContext, Outcome};
pub use job::{AttemptError, Job, JobId, NewJob};
pub use layout::Layout;
pub use liveness::Liveness;
pub use lock::{Lock, LockGuard};
pub use periodic::{CatchUp, PeriodicJob};
pub use producer::Producer;
pub use queue::QueueConfig;
pub use retry::RetryPolicy;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use worker::{Worker, WorkerConfig, WorkerSummary};
pub use znode::ZkConfig;

/// Re-export of the ZooKeeper client, for callers that share a session with zkq.
pub use zookeeper_client;

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
//! The source tree, from the bottom layer up; each layer uses only those below it.
//!
//! | path | what it holds |
//! |---|---|
//! | `store/` | talking to ZooKeeper: sessions and [`ZkConfig`] (`session`), znode helpers and batched reads (`znode`), the znode [`Layout`], MessagePack records (`codec`), transactions and the lost-race predicate (`txn`), group commit (`batcher`) |
//! | `recipes/` | ZooKeeper recipes: waiting in line (`line`), [`Election`] with an epoch, [`Lock`] with fencing tokens, the session heartbeat ([`Liveness`]), the [`watchdog`] process |
//! | `job`, `queue`, `limits` | the job record and [`NewJob`], [`QueueConfig`], every size and name limit |
//! | `producer/`, `periodic` | [`Producer`]; `placement`: where a job goes (ready, delayed, dead) and the `multi` that puts it there, for enqueue, retries, promotion and cron; `segment`: segments with one writer each; [`PeriodicJob`] records |
//! | `claim` | the claim protocol and the reference for a job's state model |
//! | `worker/` | [`Worker`]: `config`, `session` (registration to session end), `batch` (claims), `keys` (lock keys), `attempt`, `settle` (ack, retry, dead letter, release, reconciliation), `fetch/` (listing, watches, parking) |
//! | `assignment`, `registry` | partition ownership (the leader's balancer and the workers following it); worker registration |
//! | `scheduler/` | [`Scheduler`] and the elected leader's services on one loop (`service`): `promote`, `cron`, `trim`, plus `assignment` |
//! | [`singleton`] | batch-job master failover |
//! | `handler`, `exec`, `retry` | [`Handler`], [`JobContext`], [`Outcome`]; [`CommandHandler`]; [`RetryPolicy`] |
//! | [`inspect`], [`limits`], [`telemetry`], `cli` | read-only views, limits and metric names for users; flags shared by the binaries |
//!
//! A job's path from enqueue to ack: `producer` (`placement`, `segment`) → `worker::fetch` (found
//! by a listing or a lane watch, data read) → `worker::batch` with `claim` (claimed in a
//! `multi`) → `worker::attempt` (the handler runs) → `worker::settle` (acked through
//! `store::batcher`).

mod admin;
mod assignment;
mod claim;
#[cfg(feature = "cli")]
pub mod cli;
mod error;
mod exec;
mod handler;
pub mod inspect;
mod job;
pub mod limits;
mod periodic;
mod producer;
mod queue;
mod recipes;
mod registry;
mod retry;
mod scheduler;
pub mod singleton;
mod stops;
mod store;
pub mod telemetry;
mod worker;

pub use admin::{
    AclDifference, AclEntry, AclReport, Admin, Cancelled, ClaimActivity, DeadLetter, FleetStats, JobState,
    JobView, LockView, PartitionStats, Purge, QueueDetail, QueueStats, Stats, UnhandledKind, WorkerView,
};
pub use error::{Error, Permission, Result};
pub use exec::CommandHandler;
pub use handler::{Fence, Handler, HandlerFuture, JobContext, Outcome};
pub use job::{AttemptError, Job, JobId, NewJob, MAX_EARLY};
pub use periodic::{CatchUp, PeriodicJob};
pub use producer::Producer;
pub use queue::QueueConfig;
pub use recipes::election::{Election, Leadership};
pub use recipes::liveness::Liveness;
pub use recipes::lock::{Lock, LockGuard};
pub use recipes::watchdog;
pub use retry::RetryPolicy;
pub use scheduler::{Scheduler, SchedulerConfig};
pub use store::acl::{parse_acl_id, AclPolicy};
pub use store::layout::Layout;
pub use store::session::{Credentials, ZkConfig};
pub use store::tls::TlsConfig;
pub use telemetry::Health;
pub use worker::{Worker, WorkerConfig, WorkerSummary};

/// Re-export of the ZooKeeper client, for callers that share a session with zkq.
pub use zookeeper_client;

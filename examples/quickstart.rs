//! Enqueue a few jobs, run a worker until they are all done, and stop it gracefully.
//!
//! ```sh
//! ZKQ_ZK=127.0.0.1:2181 cargo run -p zkq-examples --example quickstart
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;
use zkq::{JobContext, NewJob, Outcome, Producer, QueueConfig, Worker, WorkerConfig, ZkConfig};

const JOBS: usize = 20;

#[tokio::main]
async fn main() -> zkq::Result<()> {
    let zk = ZkConfig::new(std::env::var("ZKQ_ZK").unwrap_or_else(|_| "127.0.0.1:2181".into()));
    let root = "/zkq-quickstart";

    let producer = Producer::connect(&zk, root).await?;
    producer
        .create_queue(
            "greetings",
            &QueueConfig {
                partitions: 2,
                ..QueueConfig::default()
            },
        )
        .await?;
    let jobs: Vec<NewJob> = (0..JOBS)
        .map(|i| NewJob::new("greet", format!("visitor {i}")))
        .collect();
    let ids = producer.enqueue_batch("greetings", jobs).await?;
    println!("enqueued {} jobs in one multi", ids.len());
    // A job that fails on its first attempt and succeeds on the retry.
    producer
        .enqueue("greetings", NewJob::new("flaky", "try me twice"))
        .await?;
    producer.close().await;

    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let (greet_done, greet_all) = (done.clone(), all_done.clone());
    let (flaky_done, flaky_all) = (done.clone(), all_done.clone());
    let finish = |done: &AtomicUsize, all: &Notify| {
        if done.fetch_add(1, Ordering::SeqCst) + 1 == JOBS + 1 {
            all.notify_one();
        }
    };

    let config = WorkerConfig {
        queues: vec!["greetings".into()],
        concurrency: 4,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(zk, root, config)?
        .handle("greet", move |ctx: JobContext| {
            println!("hello, {}", String::from_utf8_lossy(&ctx.job.payload));
            finish(&greet_done, &greet_all);
            async { Outcome::Done }
        })?
        .handle("flaky", move |ctx: JobContext| {
            let outcome = if ctx.job.attempt == 1 {
                println!("flaky job: attempt 1 fails");
                Outcome::retry("not yet")
            } else {
                println!("flaky job: attempt {} succeeds", ctx.job.attempt);
                finish(&flaky_done, &flaky_all);
                Outcome::Done
            };
            async move { outcome }
        })?;
    let summary = worker.run(async move { all_done.notified().await }).await?;
    println!("worker stopped: {summary:?}");
    Ok(())
}

//! zkq's own workloads: enqueue through both APIs, then drain with a fleet of workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::Notify;
use zkq::{JobContext, JobId, NewJob, Outcome, Producer, QueueConfig, Worker, WorkerConfig, ZkConfig};

use crate::progress::{rate, Progress};
use crate::Args;

const QUEUE: &str = "bench";
const ROOT: &str = "/zkq-bench";

/// The producer and settings shared by the workloads.
#[derive(Debug)]
pub struct Workloads<'a> {
    zk: ZkConfig,
    args: &'a Args,
    progress: &'a Progress,
    producer: Producer,
}

/// What a drain measured.
#[derive(Debug)]
pub struct Drain {
    pub per_s: f64,
    pub completed: u64,
    pub duplicates: u64,
}

impl<'a> Workloads<'a> {
    pub async fn new(zk: &ZkConfig, args: &'a Args, progress: &'a Progress) -> Result<Workloads<'a>, String> {
        let producer = Producer::connect(zk, ROOT).await.map_err(|e| e.to_string())?;
        let config = QueueConfig {
            partitions: args.partitions,
            ..QueueConfig::default()
        };
        producer
            .create_queue(QUEUE, &config)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Workloads {
            zk: zk.clone(),
            args,
            progress,
            producer,
        })
    }

    fn job(&self) -> NewJob {
        NewJob::new("noop", vec![b'x'; self.args.payload])
    }

    /// `n` jobs through the single-job API, `window` calls in flight on one producer.
    pub async fn enqueue_single(&self, n: usize) -> Result<f64, String> {
        let started = self.progress.phase("enqueue single");
        let mut results = futures::stream::iter(0..n)
            .map(|_| self.producer.enqueue(QUEUE, self.job()))
            .buffer_unordered(self.args.window);
        while let Some(r) = results.next().await {
            r.map_err(|e| format!("enqueue: {e}"))?;
            self.progress.add(1);
        }
        Ok(rate("enqueue single", n, started))
    }

    /// `n` jobs through the batch API, 100 per batch, 8 batches in flight.
    pub async fn enqueue_batch(&self, n: usize) -> Result<f64, String> {
        let started = self.progress.phase("enqueue batch");
        let sizes: Vec<usize> = (0..n).step_by(100).map(|i| (n - i).min(100)).collect();
        let mut results = futures::stream::iter(sizes)
            .map(|size| {
                self.producer
                    .enqueue_batch(QUEUE, (0..size).map(|_| self.job()).collect())
            })
            .buffer_unordered(8);
        while let Some(r) = results.next().await {
            self.progress
                .add(r.map_err(|e| format!("enqueue batch: {e}"))?.len() as u64);
        }
        Ok(rate("enqueue batch", n, started))
    }

    /// Drains `n` ready jobs with `workers` worker sessions and a no-op handler.
    pub async fn drain(&self, n: usize) -> Result<Drain, String> {
        let runs: Arc<Mutex<HashMap<JobId, u32>>> = Arc::new(Mutex::new(HashMap::with_capacity(n)));
        let total = Arc::new(AtomicUsize::new(0));
        let all_done = Arc::new(Notify::new());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let started = self.progress.phase("drain");
        let mut fleet = tokio::task::JoinSet::new();
        for _ in 0..self.args.workers {
            let config = WorkerConfig {
                queues: vec![QUEUE.to_string()],
                concurrency: self.args.concurrency,
                scheduler: false,
                ..WorkerConfig::default()
            };
            let (runs, total, all_done, progress) = (
                runs.clone(),
                total.clone(),
                all_done.clone(),
                self.progress.clone(),
            );
            let worker = Worker::new(self.zk.clone(), ROOT, config)
                .map_err(|e| e.to_string())?
                .handle_any(move |ctx: JobContext| {
                    *runs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(ctx.job.id)
                        .or_default() += 1;
                    progress.add(1);
                    if total.fetch_add(1, Ordering::SeqCst) + 1 == n {
                        all_done.notify_one();
                    }
                    async { Outcome::Done }
                });
            let mut stopped = stopped.clone();
            fleet.spawn(worker.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }));
        }
        all_done.notified().await;
        let per_s = rate("drain", n, started);
        let _ = stop.send(true);
        while let Some(r) = fleet.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
        let runs = runs.lock().unwrap_or_else(|p| p.into_inner());
        let completed: u64 = runs.values().map(|c| u64::from(*c)).sum();
        let duplicates = runs.values().map(|c| u64::from(c.saturating_sub(1))).sum();
        Ok(Drain {
            per_s,
            completed,
            duplicates,
        })
    }
}

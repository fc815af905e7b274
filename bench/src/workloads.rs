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

/// How late delayed jobs started, in ms past their due time.
#[derive(Debug)]
pub struct Lateness {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
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
                // As deployed: every worker a scheduler candidate, so the leader assigns each
                // worker its own partitions.
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

    /// `n` delayed jobs due over the next `spread`, run by one worker that is also the elected
    /// scheduler (promoting every 250 ms, the default): how late each starts after its due time.
    pub async fn delayed(&self, n: usize, spread: std::time::Duration) -> Result<Lateness, String> {
        let late: Arc<Mutex<Vec<u64>>> = Arc::new(Mutex::new(Vec::with_capacity(n)));
        let all_done = Arc::new(Notify::new());
        let config = WorkerConfig {
            queues: vec![QUEUE.to_string()],
            concurrency: self.args.concurrency,
            ..WorkerConfig::default()
        };
        let (recorded, done, progress) = (late.clone(), all_done.clone(), self.progress.clone());
        let worker = Worker::new(self.zk.clone(), ROOT, config)
            .map_err(|e| e.to_string())?
            .handle_any(move |ctx: JobContext| {
                let mut late = recorded.lock().unwrap_or_else(|p| p.into_inner());
                late.push(zkq::job::now_ms().saturating_sub(ctx.job.ready_at_ms));
                progress.add(1);
                if late.len() == n {
                    done.notify_one();
                }
                async { Outcome::Done }
            });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(worker.run(async move {
            let _ = stopped.await;
        }));
        let started = self.progress.phase("delayed");
        let lead = std::time::Duration::from_secs(1);
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| self.job().delay(lead + spread.mul_f64(i as f64 / n as f64)))
            .collect();
        for chunk in jobs.chunks(100) {
            self.producer
                .enqueue_batch(QUEUE, chunk.to_vec())
                .await
                .map_err(|e| format!("enqueue delayed: {e}"))?;
        }
        all_done.notified().await;
        rate("delayed", n, started);
        let _ = stop.send(());
        running
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut late = late.lock().unwrap_or_else(|p| p.into_inner()).clone();
        late.sort_unstable();
        let at = |q: f64| late[((late.len() - 1) as f64 * q).round() as usize] as f64;
        Ok(Lateness {
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        })
    }
}

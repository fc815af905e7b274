//! zkq's own workloads: enqueue through both APIs, drain with a fleet of worker processes, a
//! steady offered rate, a large backlog, and delayed jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use zkq::{Admin, JobId, NewJob, Producer, QueueConfig, ZkConfig};

use crate::fleet::{Fleet, FleetConfig, Tally};
use crate::progress::{rate, Progress};
use crate::{stamp, Args};

pub const ROOT: &str = "/zkq-bench";
/// Jobs per `enqueue_batch` call.
const BATCH: usize = 100;
/// Batches in flight when enqueueing through the batch API.
const BATCHES_IN_FLIGHT: usize = 8;

/// The producer and settings shared by the workloads.
#[derive(Debug)]
pub struct Workloads<'a> {
    pub zk: ZkConfig,
    pub args: &'a Args,
    pub progress: &'a Progress,
    pub producer: Arc<Producer>,
    /// Looks up jobs whose enqueue had an unknown outcome, and reads ownership.
    pub admin: Admin,
    /// Jobs whose enqueue had an unknown outcome (the connection dropped with it in flight),
    /// found not to have committed, since the last drain.
    lost: AtomicU64,
}

/// What a drain measured.
#[derive(Debug)]
pub struct Drain {
    pub per_s: f64,
    pub completed: u64,
    pub duplicates: u64,
}

/// Percentiles of a distribution, in ms.
#[derive(Debug)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// What the backlog workload measured.
#[derive(Debug)]
pub struct Backlog {
    pub jobs: usize,
    pub enqueue_per_s: f64,
    pub drain: Drain,
    pub max_children: u64,
    pub peak_rss_mb: f64,
}

impl<'a> Workloads<'a> {
    pub async fn new(zk: &ZkConfig, args: &'a Args, progress: &'a Progress) -> Result<Workloads<'a>, String> {
        let producer = Producer::connect(zk, ROOT).await.map_err(|e| e.to_string())?;
        let admin = Admin::with_client(producer.client().clone(), producer.layout().clone());
        Ok(Workloads {
            zk: zk.clone(),
            args,
            progress,
            producer: Arc::new(producer),
            admin,
            lost: AtomicU64::new(0),
        })
    }

    /// Takes the outcome of an enqueue of `ids`: committed, failed (an error for the bench), or
    /// unknown (the connection dropped with it in flight: an ensemble member that falls
    /// behind drops its clients). Unknown ones are noted in `unknown`, to be resolved later.
    fn outcome<T>(
        &self,
        result: zkq::Result<T>,
        ids: &[JobId],
        unknown: &Mutex<Vec<JobId>>,
    ) -> Result<bool, String> {
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.is_outcome_unknown() => {
                unknown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(ids);
                Ok(false)
            }
            Err(e) => Err(format!("enqueue: {e}")),
        }
    }

    /// Finds out which of the jobs whose enqueue had an unknown outcome committed: a job found
    /// where it is waiting, or one that `ran`, did. Counts the others as lost for the next
    /// drain, and prints the tally.
    async fn resolve(&self, unknown: Mutex<Vec<JobId>>, ran: impl Fn(JobId) -> bool) -> Result<(), String> {
        let unknown = unknown.into_inner().unwrap_or_else(|p| p.into_inner());
        if unknown.is_empty() {
            return Ok(());
        }
        let mut lost = 0;
        for id in &unknown {
            let found = loop {
                match self.admin.job(&id.to_string()).await {
                    Ok(_) => break true,
                    Err(zkq::Error::NotFound(_)) => break ran(*id),
                    // Not connected yet: ask again.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            };
            if !found {
                lost += 1;
            }
        }
        println!(
            "{} enqueues had an unknown outcome (a connection dropped): {} committed, {lost} not",
            unknown.len(),
            unknown.len() as u64 - lost
        );
        self.lost.fetch_add(lost, Ordering::Relaxed);
        Ok(())
    }

    /// Creates `queue` with the bench's partitions.
    pub async fn create_queue(&self, queue: &str) -> Result<(), String> {
        self.create_queue_with(queue, self.args.partitions).await
    }

    /// Creates `queue` with `partitions`.
    pub async fn create_queue_with(&self, queue: &str, partitions: u32) -> Result<(), String> {
        let config = QueueConfig {
            partitions,
            ..QueueConfig::default()
        };
        self.producer
            .create_queue(queue, &config)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn job(&self) -> NewJob {
        NewJob::new("noop", stamp::payload(self.args.payload))
    }

    /// A fleet of `--workers` worker processes on `queue`.
    pub fn fleet(&self, queue: &str) -> Result<Fleet, String> {
        self.fleet_with(queue, false)
    }

    /// Like [`Workloads::fleet`], its workers recording metrics when `metrics`.
    pub fn fleet_with(&self, queue: &str, metrics: bool) -> Result<Fleet, String> {
        self.fleet_of(queue, self.args.workers, metrics)
    }

    /// A fleet of `workers` worker processes on `queue`, recording metrics when `metrics`.
    pub fn fleet_of(&self, queue: &str, workers: usize, metrics: bool) -> Result<Fleet, String> {
        Fleet::start(
            &FleetConfig {
                zk: self.zk.address.clone(),
                root: ROOT.to_string(),
                queue: queue.to_string(),
                workers,
                concurrency: self.args.concurrency,
                auth: self.args.credentials.clone(),
                metrics,
                // Long enough to ride out a slow fsync of a large transaction log.
                session_timeout: Duration::from_secs(30),
            },
            self.progress,
        )
    }

    /// `n` jobs through the single-job API, `--window` calls in flight on one producer.
    pub async fn enqueue_single(&self, queue: &str, n: usize) -> Result<f64, String> {
        let started = self.progress.phase("enqueue single");
        let unknown = Mutex::new(Vec::new());
        let mut results = futures::stream::iter(0..n)
            .map(|_| {
                let job = self.job();
                let id = job.id();
                async move { (id, self.producer.enqueue(queue, job).await) }
            })
            .buffer_unordered(self.args.window);
        while let Some((id, r)) = results.next().await {
            self.outcome(r, &[id], &unknown)?;
            self.progress.add(1);
        }
        let per_s = rate("enqueue single", n, started);
        self.resolve(unknown, |_| false).await?;
        Ok(per_s)
    }

    /// `n` jobs through the batch API, [`BATCH`] per call, a few calls in flight.
    pub async fn enqueue_batch(&self, phase: &str, queue: &str, n: usize) -> Result<f64, String> {
        let started = self.progress.phase(phase);
        let sizes: Vec<usize> = (0..n).step_by(BATCH).map(|i| (n - i).min(BATCH)).collect();
        let unknown = Mutex::new(Vec::new());
        let mut results = futures::stream::iter(sizes)
            .map(|size| {
                let jobs: Vec<NewJob> = (0..size).map(|_| self.job()).collect();
                let ids: Vec<JobId> = jobs.iter().map(NewJob::id).collect();
                async move { (ids, self.producer.enqueue_batch(queue, jobs).await) }
            })
            .buffer_unordered(BATCHES_IN_FLIGHT);
        while let Some((ids, r)) = results.next().await {
            self.outcome(r, &ids, &unknown)?;
            self.progress.add(ids.len() as u64);
        }
        let per_s = rate(phase, n, started);
        // A batch is one transaction: its jobs all committed or none did.
        self.resolve(unknown, |_| false).await?;
        Ok(per_s)
    }

    /// Starts `fleet` on `n` ready jobs and waits until each has started: the rate from the
    /// first start to the last (the fleet's own start-up, connecting and electing, is not
    /// counted) and the runs per job.
    pub async fn drain(&self, phase: &str, fleet: &Fleet, n: usize) -> Result<Drain, String> {
        let started = self.progress.phase(phase);
        let n = n - self.lost.swap(0, Ordering::Relaxed) as usize;
        fleet.wait_for(n as u64).await;
        // Let a duplicate, if any, show before counting.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let tally = fleet.take();
        let secs = match (tally.first, tally.last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => started.elapsed().as_secs_f64(),
        };
        let per_s = n as f64 / secs.max(1e-9);
        println!(
            "{phase}: {n} in {secs:.2}s from first start to last = {per_s:.0}/s ({:.2}s with fleet start-up)",
            started.elapsed().as_secs_f64()
        );
        Ok(Drain {
            per_s,
            completed: tally.runs.values().map(|c| u64::from(*c)).sum(),
            duplicates: duplicates(&tally),
        })
    }

    /// Jobs offered at `rate` per second for `duration` through the single-job API while
    /// `fleet` runs: enqueue-to-start latency of each (µs), and its percentiles.
    pub async fn continuous(
        &self,
        queue: &str,
        fleet: &Fleet,
        rate: f64,
        duration: Duration,
    ) -> Result<(Percentiles, Vec<u64>), String> {
        fleet.take();
        let before = fleet.started();
        let started = self.progress.phase("continuous");
        let total = (rate * duration.as_secs_f64()).round() as usize;
        let mut sent = 0;
        let unknown = Mutex::new(Vec::new());
        let mut in_flight = tokio::task::JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while sent < total {
            tick.tick().await;
            let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
            while sent < due {
                let (producer, queue, job) = (self.producer.clone(), queue.to_string(), self.job());
                let id = job.id();
                in_flight.spawn(async move { (id, producer.enqueue(&queue, job).await) });
                sent += 1;
            }
            while let Some(done) = in_flight.try_join_next() {
                let (id, result) = done.map_err(|e| e.to_string())?;
                self.outcome(result, &[id], &unknown)?;
            }
        }
        while let Some(done) = in_flight.join_next().await {
            let (id, result) = done.map_err(|e| e.to_string())?;
            self.outcome(result, &[id], &unknown)?;
        }
        self.resolve(unknown, |id| fleet.has_run(id)).await?;
        let lost = self.lost.swap(0, Ordering::Relaxed);
        fleet.wait_for(before + total as u64 - lost).await;
        let offered = total as f64 / started.elapsed().as_secs_f64();
        let tally = fleet.take();
        print_slowest(&tally);
        let mut latency_us = tally.latency_us;
        let latency = percentiles(&mut latency_us, 1000.0);
        println!(
            "continuous: {total} jobs offered at {rate:.0}/s (achieved {offered:.0}/s); enqueue-to-start \
             p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latency.p50, latency.p95, latency.p99, latency.max
        );
        Ok((latency, latency_us))
    }

    /// `n` jobs enqueued through the batch API, the largest child count of any znode at that
    /// point, then a fresh fleet drains them: rate, runs per job, peak RSS of the workers.
    pub async fn backlog(&self, queue: &str, n: usize) -> Result<Backlog, String> {
        self.create_queue(queue).await?;
        let enqueue_per_s = self.enqueue_batch("backlog enqueue", queue, n).await?;
        self.progress.phase("backlog walk");
        let (max_children, max_children_path) = largest_child_count(self.producer.client(), ROOT).await?;
        println!("backlog: the largest child count is {max_children}, at {max_children_path}");
        let fleet = self.fleet(queue)?;
        let drain = self.drain("backlog drain", &fleet, n).await?;
        let peak_rss_mb = fleet.stop().await?;
        Ok(Backlog {
            jobs: n,
            enqueue_per_s,
            drain,
            max_children,
            peak_rss_mb,
        })
    }

    /// `n` delayed jobs due over the next `spread`, run by `fleet` (whose elected scheduler
    /// promotes them): how late each started after its due time, in ms.
    pub async fn delayed(
        &self,
        queue: &str,
        fleet: &Fleet,
        n: usize,
        spread: Duration,
    ) -> Result<Percentiles, String> {
        fleet.take();
        let before = fleet.started();
        let started = self.progress.phase("delayed");
        let lead = Duration::from_secs(1);
        let jobs: Vec<NewJob> = (0..n)
            .map(|i| self.job().delay(lead + spread.mul_f64(i as f64 / n as f64)))
            .collect();
        let unknown = Mutex::new(Vec::new());
        for chunk in jobs.chunks(BATCH) {
            let ids: Vec<JobId> = chunk.iter().map(NewJob::id).collect();
            let result = self.producer.enqueue_batch(queue, chunk.to_vec()).await;
            self.outcome(result, &ids, &unknown)?;
        }
        self.resolve(unknown, |id| fleet.has_run(id)).await?;
        let lost = self.lost.swap(0, Ordering::Relaxed);
        fleet.wait_for(before + n as u64 - lost).await;
        rate("delayed", n, started);
        let mut tally = fleet.take();
        Ok(percentiles(&mut tally.late_ms, 1.0))
    }
}

/// Slow runs whose enqueues came less than 100 ms apart.
struct Burst {
    /// The first and last enqueue, µs since the Unix epoch.
    first: u64,
    last: u64,
    runs: usize,
    /// The worst latency, µs.
    worst: u64,
    /// Runs per worker (index).
    per_worker: std::collections::BTreeMap<usize, usize>,
}

/// When the slowest 1% of the jobs were enqueued (UTC, to set against server logs), grouped
/// into bursts of enqueues less than 100 ms apart: a few bursts point at stalls, a spread at a
/// steady cost.
fn print_slowest(tally: &Tally) {
    let mut runs: Vec<(u64, u64, usize)> = tally
        .enqueued_us
        .iter()
        .zip(&tally.latency_us)
        .zip(&tally.ran_by)
        .map(|((at, latency), by)| (*at, *latency, *by))
        .collect();
    if runs.is_empty() {
        return;
    }
    runs.sort_unstable_by_key(|(_, latency, _)| std::cmp::Reverse(*latency));
    runs.truncate(runs.len().div_ceil(100));
    runs.sort_unstable();
    let mut bursts: Vec<Burst> = Vec::new();
    for (at, latency, by) in runs {
        match bursts.last_mut() {
            Some(b) if at - b.last < 100_000 => {
                b.last = at;
                b.runs += 1;
                b.worst = b.worst.max(latency);
                *b.per_worker.entry(by).or_default() += 1;
            }
            _ => bursts.push(Burst {
                first: at,
                last: at,
                runs: 1,
                worst: latency,
                per_worker: [(by, 1)].into(),
            }),
        }
    }
    let utc = |us: u64| {
        let ms = us / 1000;
        let s = ms / 1000;
        format!(
            "{:02}:{:02}:{:02}.{:03}",
            s / 3600 % 24,
            s / 60 % 60,
            s % 60,
            ms % 1000
        )
    };
    let shown: Vec<String> = bursts
        .iter()
        .take(8)
        .map(|b| {
            let per: Vec<String> = b.per_worker.iter().map(|(w, n)| format!("w{w}:{n}")).collect();
            format!(
                "{} from {} to {} (worst {} ms; {})",
                b.runs,
                utc(b.first),
                utc(b.last),
                b.worst / 1000,
                per.join(" ")
            )
        })
        .collect();
    println!(
        "continuous: the slowest 1% were enqueued in {} bursts: {}{}",
        bursts.len(),
        shown.join("; "),
        if bursts.len() > 8 { "; ..." } else { "" }
    );
}

/// Runs beyond the first, over all jobs.
fn duplicates(tally: &Tally) -> u64 {
    tally.runs.values().map(|c| u64::from(c.saturating_sub(1))).sum()
}

/// Percentiles of `values`, divided by `per_ms` to give ms.
pub fn percentiles(values: &mut [u64], per_ms: f64) -> Percentiles {
    values.sort_unstable();
    let at = |q: f64| {
        if values.is_empty() {
            return 0.0;
        }
        values[((values.len() - 1) as f64 * q).round() as usize] as f64 / per_ms
    };
    Percentiles {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

/// The largest child count of any znode under `root`, and where. Job znodes are leaves and are
/// not listed themselves.
async fn largest_child_count(
    client: &zkq::zookeeper_client::Client,
    root: &str,
) -> Result<(u64, String), String> {
    let mut largest = (0, root.to_string());
    let mut stack = vec![root.to_string()];
    while let Some(path) = stack.pop() {
        let (children, stat) = match client.get_children(&path).await {
            Ok(listed) => listed,
            Err(zkq::zookeeper_client::Error::NoNode) => continue,
            Err(e) => return Err(format!("list {path}: {e}")),
        };
        if stat.num_children as u64 > largest.0 {
            largest = (stat.num_children as u64, path.clone());
        }
        let base = if path == "/" { String::new() } else { path };
        stack.extend(
            children
                .into_iter()
                .filter(|c| !c.starts_with("j-"))
                .map(|c| format!("{base}/{c}")),
        );
    }
    Ok(largest)
}

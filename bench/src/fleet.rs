//! A fleet of worker processes, each with its own ZooKeeper session, as deployed.
//!
//! The bench runs itself again as `zkq-bench worker ...`: a process that runs a zkq worker with
//! a no-op handler and reports each attempt it starts on stdout, one line per attempt:
//! `<job id as 32 hex digits> <µs since the job's enqueue stamp> <ms since the job was due>
//! <the enqueue stamp, µs since the Unix epoch>`.
//! Its first line is `id <worker id>`. Closing its stdin stops it; its last line is
//! `rss <peak resident KiB>`. The parent counts the
//! runs of each job (duplicates), keeps the latencies, and takes the largest peak RSS.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use zkq::{JobContext, Outcome, Worker, WorkerConfig, ZkConfig};

use crate::progress::Progress;

/// What the fleet's workers reported, shared by the readers of their output.
#[derive(Debug, Default)]
pub struct Tally {
    /// Runs per job id.
    pub runs: HashMap<u128, u32>,
    /// Enqueue-to-start latency per run, µs, for jobs stamped with their enqueue time.
    pub latency_us: Vec<u64>,
    /// The enqueue stamp of each of `latency_us`, µs since the Unix epoch.
    pub enqueued_us: Vec<u64>,
    /// The worker (index) that ran each of `latency_us`.
    pub ran_by: Vec<usize>,
    /// How long after its due time each run started, ms.
    pub late_ms: Vec<u64>,
    /// When the first and the last run started.
    pub first: Option<Instant>,
    pub last: Option<Instant>,
}

/// Worker processes draining one queue.
#[derive(Debug)]
pub struct Fleet {
    children: Vec<Child>,
    readers: Vec<tokio::task::JoinHandle<Option<u64>>>,
    tally: Arc<Mutex<Tally>>,
    started: Arc<AtomicU64>,
    /// Each worker's id, once it said it.
    ids: Arc<Mutex<Vec<Option<String>>>>,
    /// Workers killed on purpose (by index), whose exit is not a failure.
    killed: Vec<usize>,
}

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub zk: String,
    pub root: String,
    pub queue: String,
    pub workers: usize,
    pub concurrency: usize,
    /// Credentials for every worker (`ZKQ_AUTH`), if any.
    pub auth: Option<String>,
    /// Whether the workers record metrics (a Prometheus recorder, rendered every 5 s).
    pub metrics: bool,
    /// The workers' session timeout.
    pub session_timeout: Duration,
}

impl Fleet {
    /// Starts `config.workers` worker processes.
    pub fn start(config: &FleetConfig, progress: &Progress) -> Result<Fleet, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench executable: {e}"))?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let started = Arc::new(AtomicU64::new(0));
        let ids = Arc::new(Mutex::new(vec![None; config.workers]));
        let mut children = Vec::new();
        let mut readers = Vec::new();
        for index in 0..config.workers {
            let mut command = Command::new(&exe);
            if let Some(auth) = &config.auth {
                command.env("ZKQ_AUTH", auth);
            }
            let mut child = command
                .args([
                    "worker",
                    "--zk",
                    &config.zk,
                    "--root",
                    &config.root,
                    "--queue",
                    &config.queue,
                ])
                .args(["--concurrency", &config.concurrency.to_string()])
                .args([
                    "--session-timeout",
                    &format!("{}ms", config.session_timeout.as_millis()),
                ])
                .args(config.metrics.then_some("--metrics"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start a worker process: {e}"))?;
            let stdout = child.stdout.take().ok_or("worker without stdout")?;
            let id = Reporter {
                index,
                ids: ids.clone(),
            };
            readers.push(tokio::spawn(read_reports(
                stdout,
                id,
                tally.clone(),
                started.clone(),
                progress.clone(),
            )));
            children.push(child);
        }
        Ok(Fleet {
            children,
            readers,
            tally,
            started,
            ids,
            killed: Vec::new(),
        })
    }

    /// The worker processes, to count their CPU time.
    pub fn processes(&self) -> crate::cpu::Processes {
        crate::cpu::Processes::new(self.children.iter().filter_map(Child::id).collect())
    }

    /// Each worker's id, by index, once it said it.
    pub fn ids(&self) -> Vec<Option<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Kills the workers at `indexes` with SIGKILL, as a crash would: their sessions stay until
    /// they expire.
    pub fn kill(&mut self, indexes: &[usize]) -> Result<(), String> {
        for &i in indexes {
            let child = self.children.get_mut(i).ok_or("no such worker")?;
            child
                .start_kill()
                .map_err(|e| format!("cannot kill a worker: {e}"))?;
            self.killed.push(i);
        }
        Ok(())
    }

    /// Runs started so far.
    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Waits until `n` runs have started in all.
    pub async fn wait_for(&self, n: u64) {
        while self.started() < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Whether job `id` has started since the last [`Fleet::take`].
    pub fn has_run(&self, id: zkq::JobId) -> bool {
        let tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.runs.contains_key(&id.0.as_u128())
    }

    /// Takes what was reported so far, leaving an empty tally.
    pub fn take(&self) -> Tally {
        std::mem::take(&mut *self.tally.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Stops every worker (gracefully) and returns the largest peak RSS among them, in MiB.
    pub async fn stop(mut self) -> Result<f64, String> {
        for child in &mut self.children {
            drop(child.stdin.take());
        }
        let mut peak_kib = 0;
        for (i, (child, reader)) in self.children.iter_mut().zip(self.readers.drain(..)).enumerate() {
            let status = child.wait().await.map_err(|e| e.to_string())?;
            if !status.success() && !self.killed.contains(&i) {
                return Err(format!("a worker process failed: {status}"));
            }
            peak_kib = peak_kib.max(reader.await.map_err(|e| e.to_string())?.unwrap_or(0));
        }
        Ok(peak_kib as f64 / 1024.0)
    }
}

/// Where one worker's id goes.
struct Reporter {
    index: usize,
    ids: Arc<Mutex<Vec<Option<String>>>>,
}

/// Reads one worker's reports until it exits; returns its peak RSS in KiB.
async fn read_reports(
    stdout: tokio::process::ChildStdout,
    reporter: Reporter,
    tally: Arc<Mutex<Tally>>,
    started: Arc<AtomicU64>,
    progress: Progress,
) -> Option<u64> {
    let mut lines = BufReader::new(stdout).lines();
    let mut rss = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let mut fields = line.split(' ');
        match (fields.next(), fields.next(), fields.next()) {
            (Some("rss"), Some(kib), None) => rss = kib.parse().ok(),
            (Some("id"), Some(id), None) => {
                reporter.ids.lock().unwrap_or_else(|p| p.into_inner())[reporter.index] = Some(id.to_string());
            }
            (Some(id), Some(latency), Some(late)) => {
                let Ok(id) = u128::from_str_radix(id, 16) else {
                    continue;
                };
                let now = Instant::now();
                let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
                *t.runs.entry(id).or_default() += 1;
                let stamp = fields.next().and_then(|s| s.parse().ok());
                if let (Ok(us), Some(stamp)) = (latency.parse(), stamp) {
                    t.latency_us.push(us);
                    t.enqueued_us.push(stamp);
                    t.ran_by.push(reporter.index);
                }
                if let Ok(ms) = late.parse() {
                    t.late_ms.push(ms);
                }
                t.first.get_or_insert(now);
                t.last = Some(now);
                drop(t);
                started.fetch_add(1, Ordering::Relaxed);
                progress.add(1);
            }
            _ => {}
        }
    }
    rss
}

/// The worker process: runs until its stdin closes.
pub async fn serve(
    zk: String,
    root: String,
    queue: String,
    concurrency: usize,
    metrics: bool,
    session_timeout: Duration,
) -> Result<(), String> {
    // Warnings (a failing scan or claim) reach the bench's stderr; RUST_LOG shows more.
    zkq::cli::init_logging(true);
    if metrics {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[0.001, 0.01, 0.1, 1.0, 10.0, 100.0])
            .and_then(|b| b.install_recorder())
            .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
        zkq::telemetry::describe();
        // A scrape every 5 s, as Prometheus would.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                recorder.run_upkeep();
                std::hint::black_box(recorder.render());
            }
        });
    }
    let zk = ZkConfig {
        session_timeout,
        auth: crate::credentials(std::env::var("ZKQ_AUTH").ok().as_deref())?,
        ..ZkConfig::new(zk)
    };
    let config = WorkerConfig {
        queues: vec![queue],
        concurrency,
        ..WorkerConfig::default()
    };
    let out = Arc::new(Mutex::new(std::io::BufWriter::with_capacity(
        64 * 1024,
        std::io::stdout(),
    )));
    let reports = out.clone();
    let worker = Worker::new(zk, &root, config)
        .map_err(|e| e.to_string())?
        .handle_any(move |ctx: JobContext| {
            let stamp = crate::stamp::read(&ctx.job.payload);
            let (latency, stamp) = match stamp {
                Some(t) => (
                    crate::stamp::now_us().saturating_sub(t).to_string(),
                    t.to_string(),
                ),
                None => ("-".into(), "-".into()),
            };
            let late = (crate::stamp::now_us() / 1000).saturating_sub(ctx.job.ready_at_ms);
            let mut out = reports.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(out, "{:032x} {latency} {late} {stamp}", ctx.job.id.0.as_u128());
            async { Outcome::Done }
        });
    {
        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(out, "id {}", worker.id());
        let _ = out.flush();
    }
    let flusher = {
        let out = out.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = out.lock().unwrap_or_else(|p| p.into_inner()).flush();
            }
        })
    };
    let summary = worker
        .run(async {
            // Stop when the parent closes stdin (or dies).
            let mut sink = Vec::new();
            let _ = tokio::io::stdin().read_to_end(&mut sink).await;
        })
        .await
        .map_err(|e| e.to_string())?;
    flusher.abort();
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    let _ = writeln!(out, "rss {}", peak_rss_kib().unwrap_or(0));
    let _ = out.flush();
    if summary.lost > 0 {
        eprintln!("worker: {} attempts lost their claim", summary.lost);
    }
    Ok(())
}

/// This process's peak resident set size (VmHWM), KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

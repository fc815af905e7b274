//! zkq-bench: ZooKeeper's raw ceiling and zkq's throughput, measured in one run.
//!
//! Starts its own standalone ZooKeeper (fsync on) unless `--zk` is given, then runs, in order:
//! raw pipelined creates, raw creates and deletes inside `multi`s of 100, zkq single and batch
//! enqueue, and a drain by `--workers` workers (each its own session) with a no-op handler,
//! counting completions per job to report duplicates; then delayed jobs due over a few seconds,
//! reporting how late each started after its due time (promotion by the elected scheduler plus
//! the claim). Prints a progress line every 2 s, a table,
//! and last a JSON line with every figure.

mod progress;
mod raw;
mod workloads;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;

use crate::progress::Progress;

/// Measure ZooKeeper's raw ceiling and zkq's enqueue and drain rates.
#[derive(Debug, Clone, Parser)]
#[command(name = "zkq-bench", version, max_term_width = 100)]
pub struct Args {
    /// Use this ZooKeeper instead of starting a fresh standalone one
    #[arg(long, value_name = "HOST:PORT")]
    zk: Option<String>,

    /// Jobs per zkq workload (and znodes per raw workload)
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,

    /// Worker sessions draining the queue
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Jobs each worker runs at once
    #[arg(long, default_value_t = 64)]
    concurrency: usize,

    /// Partitions of the benchmark queue
    #[arg(long, default_value_t = 16)]
    partitions: u32,

    /// Payload bytes per job
    #[arg(long, default_value_t = 100)]
    payload: usize,

    /// Requests in flight for pipelined single-request workloads
    #[arg(long, default_value_t = 1000)]
    window: usize,

    /// A reduced run (10,000 jobs) that finishes in well under a minute
    #[arg(long)]
    quick: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.quick {
        args.jobs = args.jobs.min(10_000);
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let (_server, address) = match &args.zk {
        Some(a) => (None, a.clone()),
        None => {
            let server = zkq_testkit::Ensemble::standalone()?;
            let address = server.connect_string();
            (Some(server), address)
        }
    };
    println!(
        "zkq-bench: {} jobs, {} B payloads, {} workers x {}, {} partitions, ZooKeeper at {address}",
        args.jobs, args.payload, args.workers, args.concurrency, args.partitions
    );
    let zk = zkq::ZkConfig {
        address,
        session_timeout: Duration::from_secs(10),
        ..zkq::ZkConfig::default()
    };
    let progress = Progress::start();
    let mut figures: BTreeMap<&'static str, f64> = BTreeMap::new();

    let client = zk.connect().await.map_err(|e| e.to_string())?;
    let raw = raw::Raw {
        client: &client,
        progress: &progress,
        payload: vec![b'x'; args.payload],
        window: args.window,
    };
    figures.insert(
        "raw_single_create_per_s",
        raw.single_creates(args.jobs.min(50_000)).await?,
    );
    let (create, delete) = raw.multi_creates_and_deletes(args.jobs).await?;
    figures.insert("raw_multi_create_per_s", create);
    figures.insert("raw_multi_delete_per_s", delete);

    let w = workloads::Workloads::new(&zk, &args, &progress).await?;
    figures.insert("enqueue_single_per_s", w.enqueue_single(args.jobs / 2).await?);
    figures.insert(
        "enqueue_batch_per_s",
        w.enqueue_batch(args.jobs - args.jobs / 2).await?,
    );
    let drain = w.drain(args.jobs).await?;
    figures.insert("drain_per_s", drain.per_s);
    figures.insert("drain_duplicates", drain.duplicates as f64);
    figures.insert("drain_jobs", drain.completed as f64);
    let late = w
        .delayed(if args.quick { 1_000 } else { 5_000 }, Duration::from_secs(4))
        .await?;
    figures.insert("delayed_start_late_p50_ms", late.p50_ms);
    figures.insert("delayed_start_late_p99_ms", late.p99_ms);
    figures.insert("delayed_start_late_max_ms", late.max_ms);
    progress.stop();

    println!("\n{:<28} {:>14}", "figure", "value");
    for (name, value) in &figures {
        println!("{name:<28} {value:>14.0}");
    }
    let json: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!((v * 10.0).round() / 10.0)))
        .collect();
    println!("{}", serde_json::Value::Object(json));
    Ok(())
}

//! zkq-bench: ZooKeeper's raw ceiling and zkq's throughput and latency, measured in one run.
//!
//! Starts its own standalone ZooKeeper (fsync on, a 4 GiB heap), or an ensemble with
//! `--ensemble N`, unless `--zk` is given, warms it up (raw creates and two drains, uncounted),
//! then runs in order:
//! 1. raw ZooKeeper: pipelined single creates; creates, then deletes, inside `multi`s of 100;
//!    the requests of a job's cycle (read, claim, settle) with no queue logic;
//! 2. enqueue through the single-job API (pipelined) and through the batch API;
//! 3. drain: `--workers` worker processes, each its own session, run the enqueued jobs with a
//!    no-op handler; runs are counted per job to report duplicates;
//! 4. continuous, two streams side by side, each at half of `--rate` per second: the raw start
//!    chain (create; a watch event; read; a claim `multi`), the floor of enqueue-to-start
//!    latency on this machine, and jobs offered through zkq while the same fleet runs;
//!    enqueue-to-start latency percentiles of each, and when zkq's slowest 1% were enqueued;
//! 5. delayed jobs due over a few seconds: how late each started after its due time, with the
//!    raw start chain at 500/s beside them (its p99 and max: the server's own stalls meanwhile);
//! 6. the cost of metrics: drains with workers recording metrics and without, alternated
//!    (`--metrics-rounds`), after one uncounted warm-up drain;
//! 7. a large fleet (`--fleet` worker processes, default session timeout) on a queue of
//!    `--fleet-partitions`: the time from the last join to balanced ownership, the idle cost
//!    (requests per second per worker, from `mntr`; watches, from `wchs`), and the time until
//!    the partitions of a killed tenth of the fleet have new owners;
//! 8. backlog: `--backlog` jobs enqueued, the largest child count of any znode, then a fresh
//!    fleet drains them; the workers' peak RSS.
//!
//! `--sweep` adds drains over partitions 1, 4, 16, 64 and worker processes 1, 2, 4, 8
//! (`--sweep-jobs` each); `--only sweep` runs the warm-up, the raw single creates, the raw job
//! cycle and the sweep alone, and `--only fleet` the large fleet. `--report DIR` writes the figures as JSON and the sweep and
//! the latency distributions as PNG charts.
//!
//! The CPU time of the servers it started (every member) is read from `/proc` around the raw
//! single creates, the raw job cycle and the counted drain (the fleet's start-up included), and
//! reported per job (see [`cpu`]; not with `--zk`); so is that of the drain's workers and of the
//! bench itself.
//!
//! Prints a progress line every 2 s, a table, and last one JSON line with every figure.

mod cpu;
mod fleet;
mod membership;
mod progress;
mod raw;
mod report;
mod stamp;
mod sweep;
mod workloads;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::progress::Progress;

/// Measure ZooKeeper's raw ceiling and zkq's enqueue, drain and latency figures.
#[derive(Debug, Clone, Parser)]
#[command(name = "zkq-bench", version, max_term_width = 100)]
pub struct Args {
    #[command(subcommand)]
    role: Option<Role>,

    /// Use this ZooKeeper instead of starting a fresh standalone one
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "ensemble")]
    zk: Option<String>,

    /// Start an ensemble of this many members (3 or 5) instead of a standalone server; the raw
    /// ceilings and the floor are measured on it, and every session is given every member, as a
    /// fleet's would be
    #[arg(long, default_value_t = 1, value_name = "N")]
    ensemble: u32,

    /// A JVM flag for the ZooKeeper the bench starts, after its defaults (-Xms1g -Xmx4g), so
    /// that a later -Xmx wins; repeat for more (e.g. --zk-jvm-opt=-XX:+UseParallelGC)
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    zk_jvm_opt: Vec<String>,

    /// A zoo.cfg line for the ZooKeeper the bench starts, overriding its defaults; `{member}`
    /// in it is replaced by the member's id (e.g. --zk-config 'dataLogDir=/fast/zk-{member}');
    /// repeat for more
    #[arg(long, value_name = "KEY=VALUE")]
    zk_config: Vec<String>,

    /// Keep the started ZooKeeper's files (config, server log, data) after the run, and say where
    #[arg(long)]
    keep_zk: bool,

    /// Jobs per enqueue and drain workload (and znodes per raw workload)
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,

    /// Jobs in the backlog workload (0 skips it)
    #[arg(long, default_value_t = 1_000_000)]
    backlog: usize,

    /// Worker processes, each with its own ZooKeeper session
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Jobs each worker runs at once
    #[arg(long, default_value_t = 512)]
    concurrency: usize,

    /// Partitions of the benchmark queues
    #[arg(long, default_value_t = 16)]
    partitions: u32,

    /// Payload bytes per job
    #[arg(long, default_value_t = 100)]
    payload: usize,

    /// Jobs per second offered in the continuous workload (half through zkq, half to the raw
    /// start chain)
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,

    /// Length of the continuous workload
    #[arg(long, value_parser = zkq::cli::parse_duration, default_value = "20s")]
    duration: Duration,

    /// Requests in flight for pipelined single-request workloads
    #[arg(long, default_value_t = 1000)]
    window: usize,

    /// A reduced run (10,000 jobs, a 20,000-job backlog, 5 s of continuous load) that finishes
    /// in under a minute
    #[arg(long)]
    quick: bool,

    /// Run zkq with ZooKeeper credentials (a digest identity made for the run), so that every
    /// znode it creates is creator-all, to compare with a run without
    #[arg(long)]
    auth: bool,

    /// Rounds of the metrics cost workload, each four drains: metrics on, off, off, on (0 skips
    /// it)
    #[arg(long, default_value_t = 2, value_name = "N")]
    metrics_rounds: usize,

    /// Worker processes of the large-fleet workload (0 skips it)
    #[arg(long, default_value_t = 100, value_name = "N")]
    fleet: usize,

    /// Partitions of the large fleet's queue
    #[arg(long, default_value_t = 128, value_name = "N")]
    fleet_partitions: u32,

    /// Session timeout of the large fleet's workers
    #[arg(long, value_parser = zkq::cli::parse_duration, default_value = "10s")]
    fleet_session_timeout: Duration,

    /// How long the idle large fleet's requests are counted
    #[arg(long, value_parser = zkq::cli::parse_duration, default_value = "30s")]
    fleet_idle: Duration,

    /// Run one workload alone
    #[arg(long, value_enum)]
    only: Option<Only>,

    /// Also drain over partitions 1, 4, 16, 64 and worker processes 1, 2, 4, 8
    #[arg(long)]
    sweep: bool,

    /// Jobs per drain of the sweep
    #[arg(long, default_value_t = 50_000, value_name = "N")]
    sweep_jobs: usize,

    /// Write the figures (figures.json) and charts (sweep.png, latency.png) into this directory
    #[arg(long, value_name = "DIR")]
    report: Option<std::path::PathBuf>,

    /// The credentials of an --auth run, given to every session and worker process.
    #[arg(skip)]
    credentials: Option<String>,
}

/// A workload that runs alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// The large fleet: balance, idle cost, loss
    Fleet,
    /// The warm-up, the raw single creates and job cycle, then the drain sweep
    Sweep,
}

#[derive(Debug, Clone, Subcommand)]
enum Role {
    /// One worker process of the bench's fleet (started by the bench itself)
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        zk: String,
        #[arg(long)]
        root: String,
        #[arg(long)]
        queue: String,
        #[arg(long)]
        concurrency: usize,
        /// Record metrics into a Prometheus recorder, rendered every 5 s as a scraper would
        #[arg(long)]
        metrics: bool,
        #[arg(long, value_parser = zkq::cli::parse_duration)]
        session_timeout: Duration,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if let Some(Role::Worker {
        zk,
        root,
        queue,
        concurrency,
        metrics,
        session_timeout,
    }) = args.role.take()
    {
        return match fleet::serve(zk, root, queue, concurrency, metrics, session_timeout).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("worker: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if args.auth {
        args.credentials = Some(format!("digest:bench:{}", zkq::JobId::new()));
    }
    if args.quick {
        args.jobs = args.jobs.min(10_000);
        args.backlog = args.backlog.min(20_000);
        args.duration = args.duration.min(Duration::from_secs(5));
        args.fleet = args.fleet.min(20);
        args.sweep_jobs = args.sweep_jobs.min(10_000);
        args.fleet_idle = args.fleet_idle.min(Duration::from_secs(10));
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
    let (server, address) = match &args.zk {
        Some(a) => (None, a.clone()),
        None => {
            let tuning = zkq_testkit::Tuning {
                jvm: args.zk_jvm_opt.clone(),
                config: args.zk_config.clone(),
            };
            let mut server = zkq_testkit::Ensemble::for_benchmark(args.ensemble.max(1), &tuning)?;
            if args.keep_zk {
                println!("ZooKeeper's files are kept in {}", server.keep_files().display());
            }
            let address = server.connect_string();
            (Some(server), address)
        }
    };
    let server_cpu = cpu::Processes::new(
        server
            .iter()
            .flat_map(|s| s.members())
            .filter_map(|m| m.pid())
            .collect(),
    );
    let shape = match (&args.zk, args.ensemble) {
        (Some(_), _) => "given".to_string(),
        (None, 0 | 1) => "standalone".to_string(),
        (None, n) => format!("{n}-member ensemble"),
    };
    println!(
        "zkq-bench: {} jobs, {}-job backlog, {} B payloads, {} worker processes x {}, {} partitions, \
         {}/s offered for {:?}, ZooKeeper ({shape}) at {address}{}",
        args.jobs,
        args.backlog,
        args.payload,
        args.workers,
        args.concurrency,
        args.partitions,
        args.rate,
        args.duration,
        if args.auth {
            ", with credentials and creator-all ACLs"
        } else {
            ""
        }
    );
    let zk = zkq::ZkConfig {
        // Long enough to ride out a slow fsync of a large transaction log.
        session_timeout: Duration::from_secs(30),
        auth: credentials(args.credentials.as_deref())?,
        ..zkq::ZkConfig::new(address)
    };
    let progress = Progress::start();
    let mut measured = report::Measured::default();
    if args.zk.is_none() {
        measured
            .figures
            .insert("zk_members", f64::from(args.ensemble.max(1)));
    }
    let ran = match args.only {
        Some(Only::Fleet) => {
            let w = workloads::Workloads::new(&zk, &args, &progress).await?;
            membership(&w, &mut measured.figures).await
        }
        Some(Only::Sweep) => {
            let client = connect(&zk).await?;
            let raw = raw::Raw {
                client: &client,
                progress: &progress,
                payload: vec![b'x'; args.payload],
                window: args.window,
                server: &server_cpu,
            };
            let w = workloads::Workloads::new(&zk, &args, &progress).await?;
            warm_up(&raw, &w, &args, &mut measured.figures).await?;
            let single = raw.single_creates(args.jobs.min(50_000)).await?;
            measured.figures.insert("raw_single_create_per_s", single.per_s);
            let cycle = raw.job_cycles(args.jobs).await?;
            measured.figures.insert("raw_job_cycle_per_s", cycle.per_s);
            let none = Others {
                workers: None,
                bench: None,
            };
            cpu_per_job(&mut measured.figures, single.server, cycle.server, None, none);
            measured.sweep = w.sweep(args.sweep_jobs).await?;
            Ok(())
        }
        None => everything(&args, &zk, &server_cpu, &progress, &mut measured).await,
    };
    progress.stop();
    ran?;
    print_figures(&measured.figures);
    if let Some(dir) = &args.report {
        for path in measured.write(dir)? {
            println!("report: wrote {path}");
        }
    }
    Ok(())
}

/// Uncounted drains before the first figure (see [`warm_up`]).
const WARM_UP_DRAINS: usize = 2;

/// Warms the server up before any figure is taken, as production servers run warm. A fresh
/// server runs its request path in the JVM's interpreter and first compiler tiers: its first
/// drains ran at 11.7k to 16.3k jobs/s against 17.8k to 21.1k/s for the later ones of the same
/// runs, and its compilation log showed a hundred methods still being optimized during the
/// second drain. So raw creates and two drains come first, uncounted: the first one's rate is
/// reported as `drain_cold_per_s`, the second's as `drain_warm_up_per_s`.
async fn warm_up(
    raw: &raw::Raw<'_>,
    w: &workloads::Workloads<'_>,
    args: &Args,
    figures: &mut BTreeMap<&'static str, f64>,
) -> Result<(), String> {
    raw.warm_up(args.jobs.min(20_000)).await?;
    for round in 0..WARM_UP_DRAINS {
        let queue = format!("bench-warm-up-{round}");
        w.create_queue(&queue).await?;
        w.enqueue_batch("enqueue (warm-up)", &queue, args.jobs).await?;
        let fleet = w.fleet(&queue)?;
        let drain = w.drain("drain, warm-up", &fleet, args.jobs).await?;
        fleet.stop().await?;
        let figure = if round == 0 {
            "drain_cold_per_s"
        } else {
            "drain_warm_up_per_s"
        };
        figures.insert(figure, drain.per_s);
    }
    Ok(())
}

/// What the drain cost the workers and the bench itself (reading the workers' reports), beside
/// the servers.
struct Others {
    workers: Option<cpu::Cost>,
    bench: Option<cpu::Cost>,
}

/// Records and prints the CPU each job cost: the servers for a raw single create, a raw job
/// cycle and a drained job, and the workers and the bench for a drained job (see [`cpu`]);
/// whatever is known (nothing of the servers with a `--zk` the bench did not start).
fn cpu_per_job(
    figures: &mut BTreeMap<&'static str, f64>,
    create: Option<cpu::Cost>,
    cycle: Option<cpu::Cost>,
    drain: Option<cpu::Cost>,
    others: Others,
) {
    let named = [
        ("zk_cpu_us_per_raw_create", create, "per raw single create"),
        ("zk_cpu_us_per_raw_cycle_job", cycle, "per raw job cycle"),
        ("zk_cpu_us_per_drained_job", drain, "per drained job"),
    ];
    let mut said = Vec::new();
    for (figure, cost, what) in named {
        if let Some(cost) = cost {
            figures.insert(figure, cost.us_per_job);
            said.push(format!(
                "{:.1} µs {what} ({:.2} cores)",
                cost.us_per_job, cost.cores
            ));
        }
    }
    if let Some(drain) = drain {
        figures.insert("zk_cores_in_drain", drain.cores);
    }
    let named = [
        (
            others.workers,
            "the workers",
            "worker_cpu_us_per_drained_job",
            "worker_cores_in_drain",
        ),
        (
            others.bench,
            "the bench",
            "bench_cpu_us_per_drained_job",
            "bench_cores_in_drain",
        ),
    ];
    for (cost, what, us, cores) in named {
        if let Some(cost) = cost {
            figures.insert(us, cost.us_per_job);
            figures.insert(cores, cost.cores);
            said.push(format!(
                "{what} {:.1} µs per drained job ({:.2} cores)",
                cost.us_per_job, cost.cores
            ));
        }
    }
    if !said.is_empty() {
        println!("CPU per job (the server's, unless said): {}", said.join(", "));
    }
}

/// Every workload in turn (see the module's documentation).
async fn everything(
    args: &Args,
    zk: &zkq::ZkConfig,
    server: &cpu::Processes,
    progress: &Progress,
    measured: &mut report::Measured,
) -> Result<(), String> {
    let figures = &mut measured.figures;

    let client = connect(zk).await?;
    let raw = raw::Raw {
        client: &client,
        progress,
        payload: vec![b'x'; args.payload],
        window: args.window,
        server,
    };
    let w = workloads::Workloads::new(zk, args, progress).await?;
    warm_up(&raw, &w, args, figures).await?;
    let single = raw.single_creates(args.jobs.min(50_000)).await?;
    figures.insert("raw_single_create_per_s", single.per_s);
    let (create, delete) = raw.multi_creates_and_deletes(args.jobs).await?;
    figures.insert("raw_multi_create_per_s", create);
    figures.insert("raw_multi_delete_per_s", delete);
    let cycle = raw.job_cycles(args.jobs).await?;
    figures.insert("raw_job_cycle_per_s", cycle.per_s);

    let queue = "bench";
    w.create_queue(queue).await?;
    figures.insert(
        "enqueue_single_per_s",
        w.enqueue_single(queue, args.jobs / 2).await?,
    );
    figures.insert(
        "enqueue_batch_per_s",
        w.enqueue_batch("enqueue batch", queue, args.jobs - args.jobs / 2)
            .await?,
    );

    let fleet = w.fleet(queue)?;
    let (workers, bench) = (fleet.processes(), cpu::Processes::new(vec![std::process::id()]));
    let (server_cpu, worker_cpu, bench_cpu) = (server.start(), workers.start(), bench.start());
    let drain = w.drain("drain", &fleet, args.jobs).await?;
    figures.insert("drain_per_s", drain.per_s);
    figures.insert("drain_duplicates", drain.duplicates as f64);
    figures.insert("drain_jobs", drain.completed as f64);
    // The fleet's start-up (sessions, election, join listings) is inside this window.
    let drained = drain.completed as usize;
    cpu_per_job(
        figures,
        single.server,
        cycle.server,
        server_cpu.per_job(drained),
        Others {
            workers: worker_cpu.per_job(drained),
            bench: bench_cpu.per_job(drained),
        },
    );
    // The floor of the continuous workload's latency, measured side by side with it, each at
    // half the rate: both meet the server at the same moments. Run in turn, a stall of the
    // server's log fsync (up to a second on this machine's disk, see docs/zookeeper.md) fell in
    // one or the other and decided the comparison.
    let (reader, claimer) = (connect(zk).await?, connect(zk).await?);
    let half = args.rate / 2.0;
    let (chain, continuous) = tokio::join!(
        raw.start_chain("chain", &reader, &claimer, half, args.duration),
        w.continuous(queue, &fleet, half, args.duration)
    );
    let (mut chain, (latency, latency_us)) = (chain?, continuous?);
    let floor = workloads::percentiles(&mut chain, 1000.0);
    println!(
        "raw start chain: {} nodes at {:.0}/s; create-to-claimed p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms",
        chain.len(),
        half,
        floor.p50,
        floor.p95,
        floor.p99,
        floor.max
    );
    figures.insert("raw_start_p50_ms", floor.p50);
    figures.insert("raw_start_p95_ms", floor.p95);
    figures.insert("raw_start_p99_ms", floor.p99);
    figures.insert("raw_start_max_ms", floor.max);
    drop((reader, claimer));
    figures.insert("latency_p50_ms", latency.p50);
    figures.insert("latency_p95_ms", latency.p95);
    figures.insert("latency_p99_ms", latency.p99);
    figures.insert("latency_max_ms", latency.max);
    // Delayed jobs, with the floor's chain beside them (500/s for their 5 s): a stall of the
    // server's log fsync delays both.
    let delayed = if args.quick { 1_000 } else { 5_000 };
    let (reader, claimer) = (connect(zk).await?, connect(zk).await?);
    let (late, beside) = tokio::join!(
        w.delayed(queue, &fleet, delayed, Duration::from_secs(4)),
        raw.start_chain("chain-delayed", &reader, &claimer, 500.0, Duration::from_secs(5))
    );
    let (late, mut beside) = (late?, beside?);
    drop((reader, claimer));
    let beside = workloads::percentiles(&mut beside, 1000.0);
    println!(
        "delayed: started after their due time p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; the floor beside \
         them p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        late.p50, late.p99, late.max, beside.p50, beside.p99, beside.max
    );
    figures.insert("delayed_start_late_p50_ms", late.p50);
    figures.insert("delayed_start_late_p99_ms", late.p99);
    figures.insert("delayed_start_late_max_ms", late.max);
    figures.insert("delayed_floor_p99_ms", beside.p99);
    figures.insert("delayed_floor_max_ms", beside.max);
    let mut peak_rss_mb = fleet.stop().await?;

    // The cost of metrics: drains, each on a queue of its own filled the same way, by workers
    // that record every metric into a Prometheus recorder rendered every 5 s (on) or not (off).
    // The first drain after the workloads above is slow whatever it does (16.7k/s against
    // 20-21k/s for the next ones, metrics on in both), so one drain warms up, uncounted. Then
    // rounds of on, off, off, on: drains also get faster through a run (a warmer server), and
    // with that order a steady trend weighs on both means alike.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let order = [true, false, false, true].repeat(args.metrics_rounds);
    let warm_up = (args.metrics_rounds > 0).then_some(None);
    let drains = warm_up.into_iter().chain(order.into_iter().map(Some));
    for (i, metrics) in drains.enumerate() {
        let queue = format!("bench-metrics-{i}");
        let phase = match metrics {
            None => "drain, warm-up".to_string(),
            Some(on) => format!("drain, metrics {}", if on { "on" } else { "off" }),
        };
        w.create_queue(&queue).await?;
        w.enqueue_batch(&format!("enqueue ({queue})"), &queue, args.jobs)
            .await?;
        let fleet = w.fleet_with(&queue, metrics.unwrap_or(false))?;
        let drain = w.drain(&phase, &fleet, args.jobs).await?;
        match metrics {
            Some(true) => on.push(drain.per_s),
            Some(false) => off.push(drain.per_s),
            None => {}
        }
        *figures.entry("drain_metrics_duplicates").or_default() += drain.duplicates as f64;
        peak_rss_mb = peak_rss_mb.max(fleet.stop().await?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    if args.metrics_rounds > 0 {
        figures.insert("drain_metrics_on_per_s", mean(&on));
        figures.insert("drain_metrics_off_per_s", mean(&off));
    }

    membership(&w, figures).await?;
    if args.sweep {
        measured.sweep = w.sweep(args.sweep_jobs).await?;
    }
    let figures = &mut measured.figures;

    if args.backlog > 0 {
        let backlog = w.backlog("backlog", args.backlog).await?;
        figures.insert("backlog_jobs", backlog.jobs as f64);
        figures.insert("backlog_enqueue_per_s", backlog.enqueue_per_s);
        figures.insert("backlog_drain_per_s", backlog.drain.per_s);
        figures.insert("backlog_duplicates", backlog.drain.duplicates as f64);
        figures.insert("backlog_max_children", backlog.max_children as f64);
        peak_rss_mb = peak_rss_mb.max(backlog.peak_rss_mb);
    }
    figures.insert("worker_peak_rss_mb", peak_rss_mb);
    measured.latency_us = Some((latency_us, chain));
    Ok(())
}

/// The large-fleet workload, unless `--fleet 0`, into `figures`.
async fn membership(
    w: &workloads::Workloads<'_>,
    figures: &mut BTreeMap<&'static str, f64>,
) -> Result<(), String> {
    if w.args.fleet == 0 {
        return Ok(());
    }
    let m = w
        .membership(
            w.args.fleet,
            w.args.fleet_partitions,
            w.args.fleet_session_timeout,
            w.args.fleet_idle,
        )
        .await?;
    figures.insert("fleet_workers", m.workers as f64);
    figures.insert("fleet_partitions", f64::from(m.partitions));
    figures.insert("fleet_session_timeout_s", m.session_timeout.as_secs_f64());
    figures.insert("fleet_join_s", m.join.as_secs_f64());
    figures.insert("fleet_balance_s", m.balance.as_secs_f64());
    if let Some(settle) = m.settle {
        figures.insert("fleet_settle_s", settle.as_secs_f64());
    }
    if let Some(cost) = m.join_requests_per_worker {
        figures.insert("fleet_join_requests_per_worker", cost);
    }
    if let Some(r) = m.idle_requests_per_worker_s {
        figures.insert("fleet_idle_requests_per_worker_s", r);
    }
    figures.insert("fleet_idle_window_s", m.idle_window.as_secs_f64());
    if let (Some(w), Some(p)) = (m.watches, m.watched_paths) {
        figures.insert("fleet_watches", w as f64);
        figures.insert("fleet_watched_paths", p as f64);
    }
    figures.insert("fleet_killed", m.killed as f64);
    figures.insert("fleet_leader_killed", f64::from(u8::from(m.leader_killed)));
    figures.insert("fleet_reown_s", m.reown.as_secs_f64());
    Ok(())
}

/// Prints `figures` as a table, then as one JSON line.
fn print_figures(figures: &BTreeMap<&'static str, f64>) {
    println!("\n{:<32} {:>14}", "figure", "value");
    for (name, value) in figures {
        println!("{name:<32} {value:>14.2}");
    }
    let json: serde_json::Map<String, serde_json::Value> = figures
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!((v * 100.0).round() / 100.0)))
        .collect();
    println!("{}", serde_json::Value::Object(json));
}

/// The parsed `credentials`, if any.
pub fn credentials(text: Option<&str>) -> Result<Vec<zkq::Credentials>, String> {
    text.map(zkq::Credentials::parse)
        .transpose()
        .map(|c| c.into_iter().collect())
        .map_err(|e| e.to_string())
}

async fn connect(zk: &zkq::ZkConfig) -> Result<zkq::zookeeper_client::Client, String> {
    zk.connect().await.map_err(|e| e.to_string())
}

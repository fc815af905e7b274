//! zkq-chaos: runs a real zkq fleet on a 3-node ZooKeeper ensemble, injects faults at random
//! (reproducibly from the seed), and checks the invariants at the end.
//!
//! The fleet: `--workers` zkq-worker processes taking jobs (each a scheduler candidate, each
//! reaching ZooKeeper through proxies the harness can cut), two `zkq-worker singleton` master
//! candidates, and producers in this process that remember every acknowledged enqueue. Every
//! job runs this executable as its command (`zkq-chaos job`), which logs its start and end to a
//! ledger; every master run (`zkq-chaos master`) does the same in another.
//!
//! After `--duration`, faults stop and are undone, the fleet drains the queue, and the checker
//! prints its findings and, as its last line,
//! `chaos: acknowledged=N completed=N lost=N duplicated=N exclusion_violations=N leader_overlaps=N dead=N faults=N`.
//! The exit status is 0 only if nothing was lost, nothing overlapped, every duplicate has a
//! fault that explains it, and the queue drained.

mod check;
mod faults;
mod fleet;
mod ledger;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use zkq::cli::parse_duration;
use zkq::zookeeper_client as zk;
use zkq::{NewJob, Producer, QueueConfig, ZkConfig};
use zkq_testkit::Ensemble;

use crate::check::Acknowledged;
use crate::fleet::{Role, Setup, Slot};

/// Fault injection against a real zkq fleet, with a checker for zkq's invariants.
#[derive(Debug, Parser)]
#[command(name = "zkq-chaos", version, max_term_width = 100)]
struct Cli {
    /// Seed of every random choice (faults, jobs)
    #[arg(long, default_value_t = 1)]
    seed: u64,

    /// How long producers enqueue and faults are injected
    #[arg(long, default_value = "300s", value_parser = parse_duration, value_name = "DURATION")]
    duration: Duration,

    /// Jobs enqueued per second, all producers together
    #[arg(long, default_value_t = 100)]
    rate: u32,

    /// Job worker processes
    #[arg(long, default_value_t = 4)]
    workers: usize,

    /// Jobs each worker runs at once
    #[arg(long, default_value_t = 8)]
    concurrency: usize,

    /// Session timeout of every process of the fleet
    #[arg(long, default_value = "4s", value_parser = parse_duration, value_name = "DURATION")]
    session_timeout: Duration,

    /// After the faults, how long the fleet may take to finish every job
    #[arg(long, default_value = "180s", value_parser = parse_duration, value_name = "DURATION")]
    drain_timeout: Duration,

    /// Keep the ledgers in this directory (default: a temporary one, removed at the end)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    #[command(subcommand)]
    role: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// (used by the fleet) run one job, logging to LEDGER
    #[command(hide = true)]
    Job { ledger: String },
    /// (used by the fleet) run as the batch master, logging to LEDGER
    #[command(hide = true)]
    Master { ledger: String },
}

/// Lock keys jobs share: few enough that jobs of one key often meet.
const KEYS: u32 = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.role {
        Some(Command::Job { ledger }) => return ExitCode::from(ledger::run_job(ledger) as u8),
        Some(Command::Master { ledger }) => return ExitCode::from(ledger::run_master(ledger) as u8),
        None => {}
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<bool, String> {
    let worker_bin = fleet::sibling("zkq-worker")?;
    let self_bin = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let temp = tempfile::Builder::new()
        .prefix("zkq-chaos-")
        .tempdir()
        .map_err(|e| format!("cannot create a temp dir: {e}"))?;
    let dir = cli.dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    eprintln!("chaos: seed {}, ledgers in {}", cli.seed, dir.display());

    let ensemble = Ensemble::quorum(3)?;
    ensemble.wait_ready(Duration::from_secs(60))?;
    let setup = Setup {
        worker_bin,
        self_bin,
        members: ensemble.members().iter().map(|m| m.address()).collect(),
        root: "/chaos".to_string(),
        session_timeout: cli.session_timeout,
        job_ledger: dir.join("jobs.ledger"),
        master_ledger: dir.join("masters.ledger"),
        concurrency: cli.concurrency,
    };
    let zk = ZkConfig {
        address: ensemble.connect_string(),
        session_timeout: cli.session_timeout,
        connect_timeout: Duration::from_secs(30),
    };
    let mut queue = QueueConfig {
        partitions: 8,
        max_attempts: 25,
        ..QueueConfig::default()
    };
    queue.retry.base_ms = 200;
    queue.retry.max_ms = 2_000;
    Producer::connect(&zk, &setup.root)
        .await
        .map_err(|e| e.to_string())?
        .create_queue("chaos", &queue)
        .await
        .map_err(|e| e.to_string())?;

    let mut slots = Vec::new();
    for i in 0..cli.workers {
        slots.push(Slot::new(Role::Worker, i, &setup).map_err(|e| format!("cannot start a proxy: {e}"))?);
    }
    for i in 0..2 {
        slots.push(Slot::new(Role::Master, i, &setup).map_err(|e| e.to_string())?);
    }
    for slot in slots.iter_mut() {
        slot.start(&setup)
            .map_err(|e| format!("cannot start {}: {e}", slot.id()))?;
    }

    let started_ns = ledger::now_ns();
    let until = Instant::now() + cli.duration;
    let acknowledged: Arc<Mutex<Acknowledged>> = Arc::default();
    let mut producers = Vec::new();
    for p in 0..2u64 {
        let rng = StdRng::seed_from_u64(cli.seed.wrapping_mul(31).wrapping_add(p));
        producers.push(tokio::spawn(produce(
            zk.clone(),
            setup.root.clone(),
            rng,
            cli.rate / 2,
            until,
            acknowledged.clone(),
        )));
    }
    let client = zk.connect().await.map_err(|e| e.to_string())?;
    let mut injector = faults::Injector::new(
        StdRng::seed_from_u64(cli.seed),
        &mut slots,
        &ensemble,
        &setup,
        client.clone(),
    );
    injector.run(until).await;
    let faults = std::mem::take(&mut injector.records);
    drop(injector);
    let mut enqueue_errors = 0;
    for p in producers {
        enqueue_errors += p.await.unwrap_or(0);
    }
    let acknowledged = acknowledged.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!(
        "chaos: faults over; {} jobs acknowledged ({enqueue_errors} enqueue calls failed); draining",
        acknowledged.len()
    );
    ensemble.wait_ready(Duration::from_secs(60))?;

    // Drain: until no job is ready, delayed or claimed.
    let client = zk.connect().await.map_err(|e| e.to_string())?;
    let drain_until = Instant::now() + cli.drain_timeout;
    let mut remaining = usize::MAX;
    let mut left = Vec::new();
    while Instant::now() < drain_until {
        match remaining_jobs(&client, &setup.root).await {
            Ok(paths) => {
                remaining = paths.len();
                left = paths;
                if remaining == 0 {
                    break;
                }
            }
            Err(e) => eprintln!("chaos: cannot count remaining jobs: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if remaining != 0 {
        eprintln!(
            "chaos: NOT DRAINED: {remaining} jobs left after {:?}",
            cli.drain_timeout
        );
        for path in left.iter().take(20) {
            eprintln!("chaos:   left: {path}");
        }
    }
    for slot in slots.iter_mut() {
        slot.stop();
    }
    let dead = dead_letters(&client, &setup.root).await?;

    let executions = check::read_executions(&setup.job_ledger);
    let report = check::check(&check::Inputs {
        executions: &executions,
        masters: &setup.master_ledger,
        acknowledged: &acknowledged,
        dead: &dead,
        remaining,
        faults: &faults,
        started_ns,
    });
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for f in &faults {
        *kinds.entry(f.kind).or_default() += 1;
    }
    let mut kinds: Vec<_> = kinds.into_iter().collect();
    kinds.sort();
    eprintln!("chaos: faults by kind: {kinds:?}");
    eprintln!(
        "chaos: {} executions, {} without a logged end, {} duplicates unexplained, {} jobs left",
        report.executions, report.unended, report.unexplained_duplicates, report.remaining
    );
    println!("{}", report.last_line());
    Ok(report.ok())
}

/// Enqueues about `rate` jobs a second in small batches until `until`; records each
/// acknowledged job. Returns how many enqueue calls failed (their jobs are not counted).
async fn produce(
    zk: ZkConfig,
    root: String,
    mut rng: StdRng,
    rate: u32,
    until: Instant,
    acknowledged: Arc<Mutex<Acknowledged>>,
) -> usize {
    let producer = loop {
        match Producer::connect(&zk, &root).await {
            Ok(p) => break p,
            Err(e) => {
                eprintln!("chaos: producer cannot connect: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let per_tick = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut failures = 0;
    while Instant::now() < until {
        tick.tick().await;
        let mut jobs = Vec::with_capacity(per_tick);
        let mut keys = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            let fail = match rng.gen_range(0..1000) {
                0..=4 => "always",
                5..=34 => "first",
                _ => "none",
            };
            let mut job = NewJob::new("work", ledger::payload(rng.gen_range(5..60), fail));
            if fail == "always" {
                job = job.max_attempts(3);
            }
            let key = rng
                .gen_bool(0.3)
                .then(|| format!("key-{}", rng.gen_range(0..KEYS)));
            if let Some(k) = &key {
                job = job.lock_key(k.clone());
            }
            jobs.push(job);
            keys.push(key);
        }
        match producer.enqueue_batch("chaos", jobs).await {
            Ok(ids) => {
                let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                for (id, key) in ids.into_iter().zip(keys) {
                    acked.insert(id.to_string(), key);
                }
            }
            Err(e) => {
                failures += 1;
                if failures % 20 == 1 {
                    eprintln!("chaos: enqueue failed ({failures} so far): {e}");
                }
            }
        }
    }
    producer.close().await;
    failures
}

/// Paths of the jobs still ready, claimed or delayed in the chaos queue.
async fn remaining_jobs(client: &zk::Client, root: &str) -> Result<Vec<String>, zk::Error> {
    let queue = format!("{root}/queues/chaos");
    let mut left = Vec::new();
    let partitions = format!("{queue}/p");
    for p in client.list_children(&partitions).await? {
        for lane in client.list_children(&format!("{partitions}/{p}")).await? {
            let lane = format!("{partitions}/{p}/{lane}");
            let children = client.list_children(&lane).await?;
            if lane.ends_with("/claims") {
                left.extend(children.into_iter().map(|c| format!("{lane}/{c}")));
                continue;
            }
            for segment in children {
                let segment = format!("{lane}/{segment}");
                match client.list_children(&segment).await {
                    Ok(jobs) => left.extend(
                        jobs.into_iter()
                            .filter(|j| j.starts_with("j-"))
                            .map(|j| format!("{segment}/{j}")),
                    ),
                    Err(zk::Error::NoNode) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let delayed = format!("{queue}/delayed");
    for bucket in client.list_children(&delayed).await? {
        let bucket = format!("{delayed}/{bucket}");
        match client.list_children(&bucket).await {
            Ok(entries) => left.extend(entries.into_iter().map(|e| format!("{bucket}/{e}"))),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(left)
}

async fn dead_letters(client: &zk::Client, root: &str) -> Result<HashSet<String>, String> {
    let path = format!("{root}/queues/chaos/dead");
    match client.list_children(&path).await {
        Ok(ids) => Ok(ids.into_iter().collect()),
        Err(zk::Error::NoNode) => Ok(HashSet::new()),
        Err(e) => Err(format!("cannot list the dead letters: {e}")),
    }
}

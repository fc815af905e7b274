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
mod produce;
mod tree;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rand::rngs::StdRng;
use rand::SeedableRng;
use zkq::cli::parse_duration;
use zkq::zookeeper_client as zk;
use zkq::{Admin, Credentials, Layout, Producer, QueueConfig, ZkConfig};
use zkq_testkit::Ensemble;

use crate::check::Acknowledged;
use crate::fleet::{Role, Setup, Slot};
use crate::produce::produce;
use crate::tree::{dead_letters, final_state, remaining_jobs, Left};

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

    /// Share of jobs whose payload comes near the queue's limit
    #[arg(long, default_value_t = 0.01, value_name = "FRACTION")]
    large: f64,

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

    /// Write the ledgers and the fleet's logs in this directory (default: a temporary one,
    /// removed at the end unless the run fails)
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,

    /// Keep the ledgers, the fleet's logs and ZooKeeper's data and logs even when the run
    /// passes (a failed run always keeps them)
    #[arg(long)]
    keep: bool,

    /// Run the fleet with ZooKeeper credentials (a digest identity made for the run), so that
    /// every znode zkq creates is creator-all. The run then also fails if any znode under the
    /// root ends with another ACL, or if a session without credentials can list the root
    #[arg(long)]
    auth: bool,

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

/// How long a fleet process may take to shut down gracefully before it counts as hung.
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// The chaos queue's payload limit (the default); large jobs come close to it.
pub(crate) const MAX_PAYLOAD: u32 = zkq::limits::DEFAULT_MAX_PAYLOAD_BYTES as u32;

/// Lock keys jobs share: few enough that jobs of one key often meet.
pub(crate) const KEYS: u32 = 16;

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

    let mut ensemble = Ensemble::quorum(3)?;
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
        logs: dir.clone(),
        auth: cli
            .auth
            .then(|| format!("digest:chaos:{}", uuid::Uuid::new_v4().simple())),
    };
    let zk = ZkConfig {
        address: ensemble.connect_string(),
        session_timeout: cli.session_timeout,
        connect_timeout: Duration::from_secs(30),
        auth: setup
            .auth
            .iter()
            .map(|a| Credentials::parse(a).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        ..ZkConfig::default()
    };
    let acl = Layout::for_config(&setup.root, &zk).map_err(|e| e.to_string())?;
    let mut queue = QueueConfig {
        partitions: 8,
        max_attempts: 25,
        ..QueueConfig::default()
    };
    queue.retry.base_ms = 200;
    queue.retry.max_ms = 2_000;
    queue.max_payload_bytes = MAX_PAYLOAD;
    let setup_producer = Producer::connect(&zk, &setup.root)
        .await
        .map_err(|e| e.to_string())?;
    setup_producer
        .create_queue("chaos", &queue)
        .await
        .map_err(|e| e.to_string())?;
    // A queue nobody serves, whose config is garbage: it must not hold up anything else. Its
    // name sorts before the chaos queue's.
    let corrupt = format!("{}/queues/a-corrupt", setup.root);
    let garbage: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
    setup_producer
        .client()
        .create(
            &corrupt,
            &garbage,
            &zk::CreateMode::Persistent.with_acls(zk::Acls::new(acl.acl().acls())),
        )
        .await
        .map_err(|e| format!("cannot create {corrupt}: {e}"))?;
    setup_producer.close().await;

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
            cli.large.clamp(0.0, 1.0),
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

    // Drain: until no job is ready, claimed or delayed, except the far-future ones, in two scans
    // in a row. A scan is not a snapshot: it can miss a job that moves between a delayed bucket
    // and its lane while it walks. It only decides when to stop the fleet; what is judged is
    // the tree after the fleet stopped, when nothing writes to it any more.
    let client = zk.connect().await.map_err(|e| e.to_string())?;
    let drain_until = Instant::now() + cli.drain_timeout;
    let due = |l: &Left| {
        !l.id
            .as_ref()
            .is_some_and(|id| acknowledged.get(id).is_some_and(|a| a.far_future))
    };
    let mut empty_scans = 0;
    while Instant::now() < drain_until && empty_scans < 2 {
        match remaining_jobs(&client, &setup.root).await {
            Ok((jobs, claims)) if !jobs.iter().any(due) && claims.is_empty() => empty_scans += 1,
            Ok(_) => empty_scans = 0,
            Err(e) => eprintln!("chaos: cannot count remaining jobs: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Shutdown grace (5 s) + a command's stop grace (1 s) + closing the sessions, with room.
    let deadline = Instant::now() + STOP_WITHIN;
    slots.iter().for_each(Slot::terminate);
    let mut hung = 0;
    for slot in slots.iter_mut() {
        if !slot.wait_exit(deadline) {
            hung += 1;
            eprintln!(
                "chaos: HUNG: {} did not exit within {STOP_WITHIN:?} of SIGTERM; killed",
                slot.id()
            );
        }
    }
    // The judged state, read after a sync: the member answering has applied every write.
    let (left, orphans) = final_state(&client, &setup.root).await?;
    let stuck: Vec<&Left> = left.iter().filter(|l| due(l)).collect();
    if !stuck.is_empty() || !orphans.is_empty() {
        eprintln!(
            "chaos: NOT DRAINED: {} jobs and {} claims without a job left after {:?}",
            stuck.len(),
            orphans.len(),
            cli.drain_timeout
        );
        for l in stuck.iter().take(20) {
            eprintln!(
                "chaos:   left: job {} at {}{}{}",
                l.id.as_deref().unwrap_or("(unreadable)"),
                l.path,
                l.claim
                    .as_ref()
                    .map(|c| format!(", claimed by {c}"))
                    .unwrap_or_default(),
                l.due_ms.map(|d| format!(", due at {d}")).unwrap_or_default(),
            );
        }
        for c in orphans.iter().take(20) {
            eprintln!("chaos:   claim without a job: {c}");
        }
    }
    let in_tree: HashSet<String> = left.iter().filter_map(|l| l.id.clone()).collect();
    let dead = dead_letters(&client, &setup.root).await?;

    let executions = check::read_executions(&setup.job_ledger);
    let report = check::check(&check::Inputs {
        executions: &executions,
        masters: &setup.master_ledger,
        acknowledged: &acknowledged,
        dead: &dead,
        in_tree: &in_tree,
        unaccounted: stuck.iter().filter(|l| l.id.is_none()).count() + orphans.len(),
        hung,
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
        "chaos: {} executions, {} without a logged end, {} duplicates unexplained, {} far-future jobs kept",
        report.executions, report.unended, report.unexplained_duplicates, report.far_future
    );
    if !report.ok() || cli.keep {
        // Everything a post-mortem needs: what each process did and logged, and ZooKeeper's
        // transaction logs (every write, with its session and zxid).
        let zookeeper = ensemble.keep_files();
        if cli.dir.is_none() {
            let _ = temp.keep();
        }
        eprintln!(
            "chaos: kept the ledgers and fleet logs in {}, ZooKeeper's data and logs in {}",
            dir.display(),
            zookeeper.display()
        );
    }
    let acls_ok = !cli.auth || acls_hold(&zk, &setup.root, &ensemble.connect_string()).await;
    println!("{}", report.last_line());
    Ok(report.ok() && acls_ok)
}

/// Whether every znode under `root` carries the ACL `zk`'s credentials give, and a session
/// without credentials is refused the root; says what it found.
async fn acls_hold(zk: &ZkConfig, root: &str, address: &str) -> bool {
    let report = match Admin::connect(zk, root).await {
        Ok(admin) => {
            let report = admin.acl_check().await;
            admin.close().await;
            report
        }
        Err(e) => Err(e),
    };
    let outsider = match zk::Client::connector().connect(address).await {
        Ok(client) => client.list_children(root).await.map(|c| c.len()),
        Err(e) => Err(e),
    };
    let refused = matches!(outsider, Err(zk::Error::NoAuth));
    match report {
        Ok(report) => {
            eprintln!(
                "chaos: ACL: {} znodes checked, {} with another ACL; a session without credentials {}",
                report.checked,
                report.differing,
                if refused {
                    "is refused".to_string()
                } else {
                    format!("got {outsider:?}")
                }
            );
            for d in report.examples.iter().take(20) {
                let acl: Vec<String> = d.acl.iter().map(ToString::to_string).collect();
                eprintln!("chaos:   ACL of {}: {}", d.path, acl.join(", "));
            }
            report.differing == 0 && refused
        }
        Err(e) => {
            eprintln!("chaos: ACL: cannot check: {e}");
            false
        }
    }
}

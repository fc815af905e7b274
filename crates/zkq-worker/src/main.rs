//! zkq-worker: join a worker fleet, claim jobs and run them as shell commands; or run only the
//! scheduler; or run a batch job on exactly one of several hosts.

mod endpoint;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tracing::{info, warn};
use zkq::cli::{parse_duration, ConnectArgs, LogArgs};
use zkq::singleton::{Restart, SingletonConfig, SingletonRunner};
use zkq::{CommandHandler, Health, Scheduler, SchedulerConfig, Worker, WorkerConfig};

/// Join a zkq worker fleet: claim jobs from queues on ZooKeeper and run them.
///
/// Each job runs `sh -c COMMAND` for its kind, with the payload on stdin and ZKQ_JOB_ID,
/// ZKQ_ATTEMPT, ZKQ_MAX_ATTEMPTS, ZKQ_QUEUE, ZKQ_KIND, ZKQ_WORKER_ID and ZKQ_FENCING_TOKEN in
/// the environment. It runs under a watchdog process that kills it before ZooKeeper could
/// expire this worker's session, even if the worker is frozen.
/// Exit status 0 marks the job done; any other status fails the attempt, which is retried with
/// backoff until the job's attempts run out and it goes to the dead letters (with the tail of
/// stderr in its error history).
///
/// SIGINT or SIGTERM shuts down gracefully: no new claims, running jobs get --shutdown-grace
/// to finish, the rest are stopped and put back without using an attempt. A second signal
/// stops at once.
///
/// Every worker stands for election as the fleet's scheduler unless --no-scheduler is given;
/// `zkq-worker scheduler` runs only that. `zkq-worker singleton` runs a command on exactly one
/// of several hosts (batch-job master failover).
#[derive(Debug, Parser)]
#[command(
    name = "zkq-worker",
    version,
    max_term_width = 100,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Log only warnings and errors
    #[arg(long, global = true)]
    quiet: bool,

    /// Serve Prometheus metrics at /metrics, and /healthz and /readyz for orchestrators, on this
    /// address (off by default; bind to localhost unless the network is trusted)
    #[arg(long, global = true, env = "ZKQ_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(flatten)]
    jobs: JobArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run only the scheduler: stand for election and, while leader, promote delayed jobs,
    /// assign partitions, fire periodic jobs and trim dead letters
    Scheduler(SchedulerArgs),
    /// Run COMMAND on exactly one of the processes started with the same --name: the elected
    /// master runs it, the others stand by and take over when the master crashes, freezes or
    /// loses ZooKeeper
    ///
    /// COMMAND gets ZKQ_FENCING_TOKEN (grows with every run, on any host), ZKQ_EPOCH_PATH (the
    /// znode whose version it must still be, for guarded writes), ZKQ_SINGLETON and
    /// ZKQ_WORKER_ID. It runs under a watchdog process that stops it (SIGTERM, then SIGKILL after
    /// --stop-grace) before ZooKeeper could expire this process's session, even if this process
    /// is frozen; it is also stopped as soon as the connection to ZooKeeper is in doubt.
    Singleton(SingletonArgs),
}

#[derive(Debug, Args)]
struct SchedulerArgs {
    /// Candidate id, shown in the election [default: HOST-PID-RANDOM]
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Longest time between looks at every queue's delayed jobs (they are promoted at their due
    /// time, known from watches; the look finds those whose event was lost with a connection)
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    promote_interval: Duration,

    /// How long before their due time delayed jobs are moved to their lanes: workers claim them
    /// at once and start them at their due time, so that the two commits do not make them late
    /// (at most 60s)
    #[arg(long, default_value = "250ms", value_parser = parse_promote_ahead, value_name = "DURATION")]
    promote_ahead: Duration,

    /// Quiet time after workers join or leave before partitions are reassigned
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    rebalance_delay: Duration,

    /// How often dead letters are trimmed (per each queue's count and age limits)
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    trim_interval: Duration,
}

#[derive(Debug, Args)]
struct SingletonArgs {
    /// Name of the singleton: processes with the same name compete to run it
    #[arg(long, value_name = "NAME")]
    name: String,

    /// Candidate id [default: HOST-PID-RANDOM]
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// When the command exits while this process is master: always restart it, restart it
    /// on-failure (exit status 0 ends the runner), or never (the runner exits with its status)
    #[arg(long, default_value = "always", value_name = "POLICY")]
    restart: Restart,

    /// Wait before a restart; doubles after each run shorter than a minute, up to a minute
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    restart_delay: Duration,

    /// Between SIGTERM and SIGKILL when the command is stopped [default: 40% of the session
    /// timeout, at most 5s]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    stop_grace: Option<Duration>,

    /// The command and its arguments, after --
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// Taking jobs (the default mode).
#[derive(Debug, Args)]
struct JobArgs {
    /// Queue to take jobs from (repeatable)
    #[arg(long, short, required = true, value_name = "QUEUE")]
    queue: Vec<String>,

    /// Jobs run at once (at most about 8,000 with short names: a session's claims must fit the
    /// transaction that ends it, within ZooKeeper's 1 MiB)
    #[arg(long, short, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    concurrency: u32,

    /// Handler for a job kind: KIND=COMMAND, run with sh -c (repeatable; KIND * matches any kind)
    #[arg(long = "exec", short = 'e', required = true, value_parser = parse_exec, value_name = "KIND=COMMAND")]
    exec: Vec<(String, String)>,

    /// Run time limit per attempt, unless the job sets its own
    #[arg(long, default_value = "30m", value_parser = parse_duration, value_name = "DURATION")]
    job_timeout: Duration,

    /// On shutdown, how long running jobs may take to finish
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    shutdown_grace: Duration,

    /// After a job is told to stop (SIGTERM to its process group), how long before SIGKILL
    #[arg(long, default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    stop_grace: Duration,

    /// Do not stand for election as the scheduler (which promotes due delayed jobs)
    #[arg(long)]
    no_scheduler: bool,

    /// Share of the session timeout without a reply from ZooKeeper after which the worker
    /// stops claiming and stops its jobs (0.1 to 0.75). Jobs are also killed by a watchdog
    /// process at 0.8, even if the worker is frozen
    #[arg(long, default_value_t = 0.6, value_name = "SHARE")]
    fence_share: f64,

    /// Do not log each job attempt's start and end (logged at info by default, with its
    /// queue, id, kind, attempt, duration and outcome)
    #[arg(long)]
    no_attempt_log: bool,

    /// Do not log the lines commands write to stdout and stderr (logged at info by default,
    /// with the job's id); stdout then goes to the worker's stdout as is
    #[arg(long)]
    no_output_log: bool,

    /// Worker id, unique in the fleet [default: HOST-PID-RANDOM]
    #[arg(long, value_name = "ID")]
    id: Option<String>,
}

fn parse_exec(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((kind, command)) if !kind.is_empty() && !command.trim().is_empty() => {
            Ok((kind.to_string(), command.to_string()))
        }
        _ => Err(format!(
            "expected KIND=COMMAND (e.g. email='./send-email.sh'), got {s:?}"
        )),
    }
}

fn main() -> ExitCode {
    // A watchdog process (started for a job's command, or by `singleton` for its command) runs
    // here and exits, before any runtime or thread exists.
    zkq::watchdog::run_if_requested();
    let cli = Cli::parse();
    cli.log.init(cli.quiet);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let metrics = cli.metrics_addr;
        match cli.command {
            None => run_jobs(&cli.connect, cli.jobs, metrics).await.map(|()| 0),
            Some(Command::Scheduler(args)) => run_scheduler(&cli.connect, args, metrics).await.map(|()| 0),
            Some(Command::Singleton(args)) => run_singleton(&cli.connect, args, metrics).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the metrics endpoint on `addr`, if given, reporting `health`.
async fn serve_metrics(addr: Option<SocketAddr>, health: Health) -> zkq::Result<()> {
    match addr {
        Some(addr) => endpoint::start(addr, health)
            .await
            .map_err(zkq::Error::InvalidConfig),
        None => Ok(()),
    }
}

async fn run_scheduler(
    connect: &ConnectArgs,
    args: SchedulerArgs,
    metrics: Option<SocketAddr>,
) -> zkq::Result<()> {
    let config = SchedulerConfig {
        promote_interval: args.promote_interval,
        promote_ahead: args.promote_ahead,
        rebalance_delay: args.rebalance_delay,
        trim_interval: args.trim_interval,
    };
    let id = args.id.unwrap_or_else(|| WorkerConfig::default().id);
    info!(%id, "scheduler-only mode: standing for election");
    let scheduler = Scheduler::new(connect.zk_config()?, &connect.root, id, config)?;
    serve_metrics(metrics, scheduler.health()).await?;
    scheduler.run(shutdown_signal()).await
}

async fn run_singleton(
    connect: &ConnectArgs,
    args: SingletonArgs,
    metrics: Option<SocketAddr>,
) -> zkq::Result<i32> {
    let id = args.id.unwrap_or_else(|| WorkerConfig::default().id);
    let config = SingletonConfig {
        restart: args.restart,
        restart_delay: args.restart_delay,
        stop_grace: args.stop_grace,
        ..SingletonConfig::new(args.name, id)
    };
    let runner = SingletonRunner::new(connect.zk_config()?, &connect.root, config, args.command)?;
    serve_metrics(metrics, runner.health()).await?;
    runner.run(shutdown_signal()).await
}

async fn run_jobs(connect: &ConnectArgs, cli: JobArgs, metrics: Option<SocketAddr>) -> zkq::Result<()> {
    let mut config = WorkerConfig {
        queues: cli.queue.clone(),
        concurrency: cli.concurrency as usize,
        job_timeout: cli.job_timeout,
        shutdown_grace: cli.shutdown_grace,
        stop_grace: cli.stop_grace,
        scheduler: !cli.no_scheduler,
        fence_share: cli.fence_share,
        log_attempts: !cli.no_attempt_log,
        ..WorkerConfig::default()
    };
    if let Some(id) = &cli.id {
        config.id = id.clone();
    }
    let mut worker = Worker::new(connect.zk_config()?, &connect.root, config)?;
    for (kind, command) in &cli.exec {
        let handler = CommandHandler::new(command.clone())
            .with_watchdog()
            .log_output(!cli.no_output_log);
        worker = if kind == "*" {
            worker.handle_any(handler)
        } else {
            worker.handle(kind, handler)?
        };
    }
    serve_metrics(metrics, worker.health()).await?;
    let summary = worker.run(shutdown_signal()).await?;
    info!(
        done = summary.done,
        retried = summary.retried,
        dead = summary.dead,
        released = summary.released,
        lost = summary.lost,
        "worker stopped"
    );
    Ok(())
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
    else {
        warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    info!("shutdown requested; finishing running jobs (signal again to stop at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        warn!("second signal: stopping now");
        std::process::exit(130);
    });
}

/// A `--promote-ahead` duration, at most [`zkq::MAX_EARLY`].
fn parse_promote_ahead(s: &str) -> Result<Duration, String> {
    let ahead = parse_duration(s)?;
    if ahead > zkq::MAX_EARLY {
        return Err(format!(
            "{s} is over the maximum of {}s, the longest a worker waits for a job's due time",
            zkq::MAX_EARLY.as_secs()
        ));
    }
    Ok(ahead)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn promote_ahead_is_at_most_a_minute() {
        assert_eq!(
            super::parse_promote_ahead("250ms"),
            Ok(std::time::Duration::from_millis(250))
        );
        let refused = super::parse_promote_ahead("61s").unwrap_err();
        assert!(refused.contains("over the maximum of 60s"), "{refused}");
    }
}

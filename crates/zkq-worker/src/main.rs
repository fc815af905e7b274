//! zkq-worker: join a worker fleet, claim jobs and run them as shell commands.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tracing::{info, warn};
use zkq::cli::{init_logging, parse_duration, ConnectArgs};
use zkq::{CommandHandler, Worker, WorkerConfig};

/// Join a zkq worker fleet: claim jobs from queues on ZooKeeper and run them.
///
/// Each job runs `sh -c COMMAND` for its kind, with the payload on stdin and ZKQ_JOB_ID,
/// ZKQ_ATTEMPT, ZKQ_MAX_ATTEMPTS, ZKQ_QUEUE, ZKQ_KIND and ZKQ_WORKER_ID in the environment.
/// Exit status 0 marks the job done; any other status fails the attempt, which is retried with
/// backoff until the job's attempts run out and it goes to the dead letters (with the tail of
/// stderr in its error history).
///
/// SIGINT or SIGTERM shuts down gracefully: no new claims, running jobs get --shutdown-grace
/// to finish, the rest are stopped and put back without using an attempt. A second signal
/// stops at once.
#[derive(Debug, Parser)]
#[command(name = "zkq-worker", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,

    /// Queue to take jobs from (repeatable)
    #[arg(long, short, required = true, value_name = "QUEUE")]
    queue: Vec<String>,

    /// Jobs run at once
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

    /// Worker id, unique in the fleet [default: HOST-PID-RANDOM]
    #[arg(long, value_name = "ID")]
    id: Option<String>,

    /// Log only warnings and errors
    #[arg(long)]
    quiet: bool,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.quiet);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut config = WorkerConfig {
        queues: cli.queue.clone(),
        concurrency: cli.concurrency as usize,
        job_timeout: cli.job_timeout,
        shutdown_grace: cli.shutdown_grace,
        stop_grace: cli.stop_grace,
        scheduler: !cli.no_scheduler,
        ..WorkerConfig::default()
    };
    if let Some(id) = &cli.id {
        config.id = id.clone();
    }
    let mut worker =
        Worker::new(cli.connect.zk_config(), &cli.connect.root, config).map_err(|e| e.to_string())?;
    for (kind, command) in &cli.exec {
        worker = if kind == "*" {
            worker.handle_any(CommandHandler::new(command.clone()))
        } else {
            worker
                .handle(kind, CommandHandler::new(command.clone()))
                .map_err(|e| e.to_string())?
        };
    }
    let summary = worker.run(shutdown_signal()).await.map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

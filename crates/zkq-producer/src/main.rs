//! zkq-producer: enqueue jobs from the shell — one, a file of many, or a stream on stdin.

mod enqueue;
mod input;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use zkq::cli::{parse_duration, ConnectArgs, LogArgs};
use zkq::{CatchUp, NewJob, PeriodicJob, Producer, QueueConfig, RetryPolicy};

use crate::enqueue::enqueue;
use crate::input::Payloads;

/// Enqueue jobs into zkq queues on ZooKeeper.
///
/// A queue is created with default settings the first time a job is sent to it, or explicitly
/// with `create-queue`. Every command returns only after ZooKeeper committed the jobs.
#[derive(Debug, Parser)]
#[command(name = "zkq-producer", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Print only errors (no progress, no summary)
    #[arg(long, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueue one job (PAYLOAD, @FILE or - for stdin) or many (--file, one JSON payload per line)
    Enqueue(EnqueueArgs),
    /// Create a queue with explicit settings (an existing queue keeps its own)
    CreateQueue(CreateQueueArgs),
    /// Periodic jobs: enqueue a job at every tick of a cron schedule, exactly once per tick
    #[command(subcommand)]
    Cron(CronCommand),
}

#[derive(Debug, Subcommand)]
enum CronCommand {
    /// Create or replace a periodic job (a replaced one keeps its last fired tick)
    ///
    /// The elected scheduler enqueues the job at every tick, once, even across scheduler
    /// failovers. Ticks missed while no scheduler ran fire per --catch-up: latest fires only the
    /// most recent one, all fires each (oldest first). Each job carries the headers zkq-cron
    /// and zkq-cron-tick (Unix ms).
    Set(CronSetArgs),
    /// Remove a periodic job
    Delete {
        /// Name of the periodic job
        name: String,
    },
    /// List periodic jobs, one JSON object per line
    List,
}

#[derive(Debug, Args)]
struct CronSetArgs {
    /// Name of the periodic job: 1-64 of A-Z a-z 0-9 _ - .
    name: String,

    /// Cron expression, seconds first, in UTC: 'SEC MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK
    /// [YEAR]', e.g. '0 */5 * * * *' for every five minutes
    #[arg(long, value_name = "EXPR")]
    cron: String,

    /// Queue to enqueue into
    #[arg(long, short)]
    queue: String,

    /// Job kind: selects the handler on the worker
    #[arg(long, short)]
    kind: String,

    /// Payload of each job: the text itself, @PATH for a file's bytes, or - for all of stdin
    #[arg(value_name = "PAYLOAD", default_value = "")]
    payload: String,

    #[command(flatten)]
    options: JobOptions,

    /// Which ticks missed while no scheduler ran fire: latest or all
    #[arg(long, default_value = "latest", value_name = "POLICY")]
    catch_up: CatchUp,
}

/// What a job asks for, whether enqueued once or at every tick of a schedule.
#[derive(Debug, Args)]
struct JobOptions {
    /// Priority level, 0 lowest; higher levels run first
    #[arg(long, short, default_value_t = 0)]
    priority: u8,

    /// Attempts before the job goes to the dead letters [default: the queue's]
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,

    /// Run time limit per attempt [default: the worker's]
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    timeout: Option<Duration>,

    /// Header for the handler, KEY=VALUE (repeatable)
    #[arg(long = "header", value_parser = parse_header, value_name = "KEY=VALUE")]
    headers: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    /// Queue to enqueue into
    #[arg(long, short)]
    queue: String,

    /// Job kind: selects the handler on the worker
    #[arg(long, short)]
    kind: String,

    /// Payload of one job: the text itself, @PATH for a file's bytes, or - for all of stdin
    #[arg(conflicts_with = "file", value_name = "PAYLOAD")]
    payload: Option<String>,

    /// Many jobs from a JSON lines file (- for stdin): each non-empty line is one job's payload
    #[arg(long, short, value_name = "PATH")]
    file: Option<String>,

    #[command(flatten)]
    options: JobOptions,

    /// Run no sooner than this from now (e.g. 30s, 5m)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    delay: Option<Duration>,

    /// Jobs with the same partition key go to the same partition and keep their order
    #[arg(long, value_name = "KEY")]
    partition_key: Option<String>,

    /// Lock key: jobs sharing it never run at the same time anywhere in the fleet
    #[arg(long, value_name = "KEY")]
    lock_key: Option<String>,

    /// Most jobs per batch (one ZooKeeper multi each) with --file
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch_size: u32,

    /// Print one JSON object per job ({"id","queue","kind"}) instead of bare ids
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CreateQueueArgs {
    /// Queue name: 1-64 of A-Z a-z 0-9 _ - .
    #[arg(long, short)]
    queue: String,

    /// Partitions (shards)
    #[arg(long, default_value_t = QueueConfig::default().partitions)]
    partitions: u32,

    /// Priority levels (job priorities 0..N-1)
    #[arg(long, default_value_t = QueueConfig::default().priorities)]
    priorities: u8,

    /// Most children per segment znode
    #[arg(long, default_value_t = QueueConfig::default().segment_size)]
    segment_size: u32,

    /// Attempts before a job goes to the dead letters, unless the job says
    #[arg(long, default_value_t = QueueConfig::default().max_attempts)]
    max_attempts: u32,

    /// First retry delay; each further retry doubles it
    #[arg(long, default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    retry_base: Duration,

    /// Longest retry delay
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    retry_max: Duration,

    /// Largest payload accepted, in bytes
    #[arg(long, default_value_t = QueueConfig::default().max_payload_bytes)]
    max_payload_bytes: u32,

    /// Dead letters kept; the scheduler removes the oldest beyond this many (0 keeps all)
    #[arg(long, default_value = "10000", value_name = "N")]
    dead_max: u32,

    /// How long dead letters are kept (0s keeps them forever)
    #[arg(long, default_value = "14days", value_parser = parse_duration, value_name = "DURATION")]
    dead_max_age: Duration,
}

/// Why a command failed. Each prints as `error: ` and its message; the exit status is 1.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// zkq or ZooKeeper refused or failed; its own message names the category (invalid job,
    /// invalid configuration, unreachable, outcome unknown, ...).
    #[error(transparent)]
    Zkq(#[from] zkq::Error),
    /// The input cannot be used (a file, stdin, a payload); nothing was sent.
    #[error("{0}")]
    Input(String),
    /// What was asked for conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// A command-line value names something that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A job of a file is refused by the queue; nothing was sent.
    #[error("job {line} of {file}: {source}; nothing was enqueued")]
    Refused {
        line: usize,
        file: String,
        source: zkq::Error,
    },
    /// Part of a file went in before a failure: the failure, and what is known of the rest.
    #[error("{source}\n{report}")]
    Partial { source: zkq::Error, report: String },
    /// The results could not be written.
    #[error("cannot write to stdout: {0}")]
    Output(#[from] std::io::Error),
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init(true);
    let result = match &cli.command {
        Command::Enqueue(args) => enqueue(&cli, args).await,
        Command::CreateQueue(args) => create_queue(&cli, args).await,
        Command::Cron(command) => cron(&cli, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::FAILURE
        }
    }
}

async fn create_queue(cli: &Cli, args: &CreateQueueArgs) -> Result<(), Failure> {
    let config = QueueConfig {
        partitions: args.partitions,
        priorities: args.priorities,
        segment_size: args.segment_size,
        max_attempts: args.max_attempts,
        retry: RetryPolicy {
            base_ms: args.retry_base.as_millis() as u64,
            max_ms: args.retry_max.as_millis() as u64,
            ..RetryPolicy::DEFAULT
        },
        max_payload_bytes: args.max_payload_bytes,
        dead_max: Some(args.dead_max).filter(|n| *n > 0),
        dead_max_age_ms: Some(args.dead_max_age.as_millis() as u64).filter(|ms| *ms > 0),
        ..QueueConfig::default()
    };
    config.validate()?;
    let producer = Producer::connect(&cli.connect.zk_config()?, &cli.connect.root).await?;
    let in_force = producer.create_queue(&args.queue, &config).await?;
    producer.close().await;
    let differences = differences(&in_force, &config);
    if !differences.is_empty() {
        return Err(Failure::Conflict(format!(
            "queue {} already exists with other settings ({}); nothing was changed. Change them \
             with `zkq-admin queue set` (partition and priority counts cannot change)",
            args.queue,
            differences.join(", ")
        )));
    }
    Ok(())
}

async fn cron(cli: &Cli, command: &CronCommand) -> Result<(), Failure> {
    // Check what can be checked before connecting.
    let periodic = match command {
        CronCommand::Set(args) => Some(periodic_job(args)?),
        _ => None,
    };
    let producer = Producer::connect(&cli.connect.zk_config()?, &cli.connect.root).await?;
    let result = match (command, periodic) {
        (CronCommand::Set(args), Some(job)) => {
            producer.schedule(&args.name, job).await.map_err(Failure::from)
        }
        (CronCommand::Delete { name }, _) => match producer.unschedule(name).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Failure::NotFound(format!("no periodic job named {name:?}"))),
            Err(e) => Err(e.into()),
        },
        (CronCommand::List, _) => producer.schedules().await.map_err(Failure::from).map(|all| {
            for (name, job) in all {
                let line = serde_json::json!({
                    "name": name,
                    "cron": job.cron,
                    "queue": job.queue,
                    "kind": job.kind,
                    "payload_bytes": job.payload.len(),
                    "priority": job.priority,
                    "catch_up": job.catch_up,
                    "last_tick_ms": job.last_tick_ms,
                });
                println!("{line}");
            }
        }),
        _ => Ok(()),
    };
    producer.close().await;
    result
}

/// The settings in which `existing` differs from `asked`, as `name existing (asked N)`.
fn differences(existing: &QueueConfig, asked: &QueueConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut differ = |name: &str, existing: String, asked: String| {
        if existing != asked {
            out.push(format!("{name} {existing} (asked {asked})"));
        }
    };
    differ(
        "partitions",
        existing.partitions.to_string(),
        asked.partitions.to_string(),
    );
    differ(
        "priorities",
        existing.priorities.to_string(),
        asked.priorities.to_string(),
    );
    differ(
        "segment size",
        existing.segment_size.to_string(),
        asked.segment_size.to_string(),
    );
    differ(
        "max attempts",
        existing.max_attempts.to_string(),
        asked.max_attempts.to_string(),
    );
    differ(
        "retry",
        format!("{:?}", existing.retry),
        format!("{:?}", asked.retry),
    );
    differ(
        "max payload bytes",
        existing.max_payload_bytes.to_string(),
        asked.max_payload_bytes.to_string(),
    );
    differ(
        "dead max",
        format!("{:?}", existing.dead_max),
        format!("{:?}", asked.dead_max),
    );
    differ(
        "dead max age ms",
        format!("{:?}", existing.dead_max_age_ms),
        format!("{:?}", asked.dead_max_age_ms),
    );
    out
}

fn periodic_job(args: &CronSetArgs) -> Result<PeriodicJob, Failure> {
    let payload = Payloads::read(Some(&args.payload), None)
        .map_err(Failure::Input)?
        .into_first();
    let job = args.options.apply(NewJob::new(args.kind.clone(), payload));
    Ok(PeriodicJob::new(args.queue.clone(), args.cron.clone(), job)?.catch_up(args.catch_up))
}

impl JobOptions {
    /// `job` with these options.
    fn apply(&self, mut job: NewJob) -> NewJob {
        job = job.priority(self.priority);
        if let Some(n) = self.max_attempts {
            job = job.max_attempts(n);
        }
        if let Some(t) = self.timeout {
            job = job.timeout(t);
        }
        for (k, v) in &self.headers {
            job = job.header(k.clone(), v.clone());
        }
        job
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

//! zkq-admin: see and steer a running zkq — queue depth, workers, jobs, dead letters — from
//! the command line or a web dashboard (`serve`).

mod serve;
mod show;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use zkq::cli::{parse_duration, ConnectArgs, LogArgs};
use zkq::{Admin, Purge};

use crate::show::{
    print_acl, print_cancelled, print_dead_letter, print_dead_letters, print_job, print_locks, print_queue,
    print_stats, print_workers,
};

/// Inspect and steer a running zkq.
///
/// Every command prints a table by default, or JSON with --json (the schema is in the README).
/// The exit status is 0 on success, 1 on an error (unknown queue or id, ZooKeeper unreachable,
/// a refused change) and 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "zkq-admin", version, max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,

    #[command(flatten)]
    log: LogArgs,

    /// Print JSON instead of a table
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Queue depth (ready per priority, delayed, running, dead) and the fleet (workers, scheduler)
    ///
    /// Counts come from child counts, never from reading every job.
    Stats {
        /// Only this queue
        #[arg(long, short)]
        queue: Option<String>,
    },
    /// Live workers: id, host, pid, queues, concurrency, jobs running, partitions owned
    Workers,
    /// Dead letters: list, show, send back to work, purge
    #[command(subcommand)]
    Dead(DeadCommand),
    /// Pause a queue: workers stop claiming its jobs within a second (running ones finish);
    /// enqueue and delayed-job promotion go on
    Pause {
        /// The queue
        queue: String,
    },
    /// Resume a paused queue
    Resume {
        /// The queue
        queue: String,
    },
    /// Queue settings
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Lock keys in use: holder, since when, fencing token, waiters
    Locks,
    /// One job by id: where it is and its record; or cancel it
    #[command(subcommand)]
    Job(JobCommand),
    /// ACLs of zkq's znodes against the configured ones (--auth, --acl-read)
    #[command(subcommand)]
    Acl(AclCommand),
    /// A web dashboard: queues, throughput, workers, jobs, dead letters, cron, locks
    ///
    /// Read-only unless --allow-actions. Listens on 127.0.0.1:8080 by default; runs until
    /// SIGINT or SIGTERM.
    Serve(serve::ServeArgs),
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// List the znodes under the root whose ACL differs from the one zkq gives new znodes;
    /// exits 1 when there are any
    ///
    /// Reads the ACL of every znode (about a minute per million znodes).
    Check,
    /// Set the configured ACL on every znode under the root whose ACL differs: for a tree made
    /// before credentials were turned on, or with other --acl-read identities
    Apply,
}

#[derive(Debug, Subcommand)]
enum JobCommand {
    /// Where a job is (ready, running on which worker, delayed until when, dead) and its record
    ///
    /// Finds the job by a fingerprint of its id in its znode's name, reading only the jobs made
    /// in the same millisecond.
    Show {
        /// The job id
        id: String,
    },
    /// Cancel a job: it becomes a dead letter with the error "cancelled" (and can be retried)
    ///
    /// A running job's attempt is stopped (its command gets SIGTERM, then SIGKILL after the
    /// worker's stop grace) and not retried; this waits up to 30 s for the worker to confirm.
    Cancel {
        /// The job id
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Change a queue's settings live: workers and producers apply them within a second
    ///
    /// Partition and priority counts cannot change (jobs already placed would have to move).
    Set(QueueSetArgs),
}

#[derive(Debug, clap::Args)]
struct QueueSetArgs {
    /// The queue
    queue: String,
    /// Attempts before a job is dead-lettered, for jobs enqueued from now on without their own
    #[arg(long)]
    max_attempts: Option<u32>,
    /// First retry backoff
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    retry_base: Option<Duration>,
    /// Longest retry backoff
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    retry_max: Option<Duration>,
    /// Largest payload accepted
    #[arg(long)]
    max_payload_bytes: Option<u32>,
    /// Dead letters kept (0: all)
    #[arg(long)]
    dead_max: Option<u32>,
    /// How long dead letters are kept (0: forever)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    dead_max_age: Option<Duration>,
    /// Refused: the partition count of a queue cannot change
    #[arg(long)]
    partitions: Option<u32>,
    /// Refused: the priority count of a queue cannot change
    #[arg(long)]
    priorities: Option<u8>,
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
    /// Dead letters, newest first, with their last error
    List {
        /// Only this queue
        #[arg(long, short)]
        queue: Option<String>,
        /// Only jobs of this kind
        #[arg(long, short)]
        kind: Option<String>,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One dead letter in full: record, headers, error history, payload preview
    Show {
        /// The job id
        id: String,
    },
    /// Send dead letters back to work: same id, attempts reset, error history kept
    ///
    /// Each job moves in one ZooKeeper transaction: it is never both dead and ready, nor
    /// neither. With ids, all of them are looked up first; if one is not found, nothing moves.
    Retry {
        /// Job ids
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,
        /// Every dead letter (of --queue, of --kind)
        #[arg(long)]
        all: bool,
        /// Only this queue (with --all)
        #[arg(long, short, requires = "all")]
        queue: Option<String>,
        /// Only jobs of this kind (with --all)
        #[arg(long, short, requires = "all")]
        kind: Option<String>,
    },
    /// Delete dead letters
    Purge {
        /// Job ids
        #[arg(required_unless_present_any = ["all", "older_than"], conflicts_with_all = ["all", "older_than"])]
        ids: Vec<String>,
        /// Every dead letter (of --queue)
        #[arg(long, conflicts_with = "older_than")]
        all: bool,
        /// Those that died longer ago than this (e.g. 7d, 12h)
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        older_than: Option<Duration>,
        /// Only this queue
        #[arg(long, short)]
        queue: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init(true);
    match run(&cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> zkq::Result<ExitCode> {
    if let Command::Serve(args) = &cli.command {
        let zk = cli.connect.zk_config()?;
        serve::serve(zk, cli.connect.root.clone(), args.clone(), shutdown_signal()).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let admin = Admin::connect(&cli.connect.zk_config()?, &cli.connect.root).await?;
    let result = command(&admin, cli).await;
    admin.close().await;
    result
}

async fn command(admin: &Admin, cli: &Cli) -> zkq::Result<ExitCode> {
    let json = cli.json;
    match &cli.command {
        Command::Acl(AclCommand::Check) => {
            let report = admin.acl_check().await?;
            print_acl(&report, false, json);
            return Ok(if report.differing == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Acl(AclCommand::Apply) => print_acl(&admin.acl_apply().await?, true, json),
        Command::Serve(_) => unreachable!("served by run"),
        Command::Stats { queue } => print_stats(&admin.stats(queue.as_deref()).await?, json),
        Command::Workers => print_workers(&admin.workers().await?, json),
        Command::Locks => print_locks(&admin.locks().await?, json),
        Command::Job(JobCommand::Show { id }) => print_job(&admin.job(id).await?, json),
        Command::Job(JobCommand::Cancel { id }) => print_cancelled(id, &admin.cancel_job(id).await?, json),
        Command::Dead(DeadCommand::List { queue, kind, limit }) => print_dead_letters(
            &admin
                .dead_letters(queue.as_deref(), kind.as_deref(), *limit)
                .await?,
            json,
        ),
        Command::Dead(DeadCommand::Show { id }) => print_dead_letter(&admin.dead_letter(id).await?, json),
        Command::Dead(DeadCommand::Retry {
            ids,
            all,
            queue,
            kind,
        }) => {
            let retried = if *all {
                admin.retry_all_dead(queue.as_deref(), kind.as_deref()).await?
            } else {
                // Every id is looked up first: if one is unknown, nothing moves. Then each moves
                // on its own, and is printed as soon as it did.
                let mut unique: Vec<&String> = Vec::new();
                for id in ids {
                    if !unique.contains(&id) {
                        admin.dead_letter(id).await?;
                        unique.push(id);
                    }
                }
                let mut retried = Vec::new();
                for id in unique {
                    let moved = admin.retry_dead(std::slice::from_ref(id)).await?;
                    if !json {
                        moved.iter().for_each(|id| println!("{id}"));
                    }
                    retried.extend(moved);
                }
                retried
            };
            let ids: Vec<String> = retried.iter().map(ToString::to_string).collect();
            if json {
                println!("{}", serde_json::json!({ "retried": ids }));
            } else {
                if *all {
                    ids.iter().for_each(|id| println!("{id}"));
                }
                eprintln!("{} jobs sent back to work", ids.len());
            }
        }
        Command::Pause { queue } => print_queue(queue, &admin.pause(queue).await?, json),
        Command::Resume { queue } => print_queue(queue, &admin.resume(queue).await?, json),
        Command::Queue(QueueCommand::Set(args)) => {
            let config = admin.update_queue(&args.queue, |c| apply(args, c)).await?;
            print_queue(&args.queue, &config, json)
        }
        Command::Dead(DeadCommand::Purge {
            ids,
            all,
            older_than,
            queue,
        }) => {
            let purge = match (all, older_than) {
                (true, _) => Purge::All,
                (false, Some(age)) => Purge::OlderThan(*age),
                (false, None) => Purge::Ids(ids.clone()),
            };
            let purged = admin.purge_dead(queue.as_deref(), purge).await?;
            if json {
                println!("{}", serde_json::json!({ "purged": purged }));
            } else {
                println!("{purged} dead letters deleted");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes at SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// `queue set`'s flags applied to `config`.
fn apply(args: &QueueSetArgs, config: &mut zkq::QueueConfig) {
    let ms = |d: &Duration| d.as_millis() as u64;
    if let Some(n) = args.max_attempts {
        config.max_attempts = n;
    }
    if let Some(d) = &args.retry_base {
        config.retry.base_ms = ms(d);
    }
    if let Some(d) = &args.retry_max {
        config.retry.max_ms = ms(d);
    }
    if let Some(n) = args.max_payload_bytes {
        config.max_payload_bytes = n;
    }
    if let Some(n) = args.dead_max {
        config.dead_max = Some(n).filter(|n| *n > 0);
    }
    if let Some(d) = &args.dead_max_age {
        config.dead_max_age_ms = Some(ms(d)).filter(|ms| *ms > 0);
    }
    if let Some(n) = args.partitions {
        config.partitions = n;
    }
    if let Some(n) = args.priorities {
        config.priorities = n;
    }
}

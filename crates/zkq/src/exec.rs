//! Command handlers: run a shell command per job, the payload on its stdin.
//!
//! The command runs in its own process group. The group is killed when the attempt ends (so
//! nothing it started outlives the job), when the attempt is stopped (timeout, shutdown, session
//! loss: SIGTERM first, then SIGKILL if the worker drops the attempt), and when the handler's
//! future is dropped for any reason.
//!
//! All of that needs the worker process to run. Under a watchdog
//! ([`CommandHandler::with_watchdog`], what `zkq-worker` does), the command's group is also
//! killed by a separate small process when the worker has not heard from ZooKeeper for
//! [`crate::recipes::liveness::KILL_SHARE`] of its session timeout, frozen or not: before the server can
//! expire the session and let another worker start the job's next attempt.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt};
use tokio::process::Command;
use tracing::{info, Instrument};

use crate::handler::{Handler, HandlerFuture, JobContext, Outcome};
use crate::recipes::liveness::KILL_SHARE;
use crate::recipes::watchdog::{self, monotonic_ns, Watchdog};

/// Bytes of stderr kept for the error history.
const STDERR_TAIL: usize = 2048;

/// Longest output line logged as is; the rest of a longer line is left out of the log.
const MAX_LOGGED_LINE: usize = 8192;

/// How long a command's output is still read after the command ended.
const OUTPUT_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Runs `sh -c <command>` per job. Exit status 0 is done; anything else is a failed attempt
/// (retried or dead-lettered per the queue's policy), with the tail of stderr as the error.
///
/// The environment carries `ZKQ_JOB_ID`, `ZKQ_ATTEMPT`, `ZKQ_MAX_ATTEMPTS`, `ZKQ_QUEUE`,
/// `ZKQ_KIND`, `ZKQ_WORKER_ID` and `ZKQ_FENCING_TOKEN` (the attempt's [`crate::Fence`] token),
/// and each header as `ZKQ_HEADER_<NAME>`. Each line of its output is logged unless
/// [`CommandHandler::log_output`] turns that off.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    command: String,
    watchdog: bool,
    log_output: bool,
}

impl CommandHandler {
    /// A handler running `command` with `sh -c`.
    pub fn new(command: impl Into<String>) -> CommandHandler {
        CommandHandler {
            command: command.into(),
            watchdog: false,
            log_output: true,
        }
    }

    /// Whether each line the command writes to stdout or stderr is logged at info, in the
    /// attempt's span (job id, queue, kind, attempt). On by default; when off, stdout goes to
    /// the worker's stdout as is, and only the tail of stderr is kept (for the error).
    pub fn log_output(mut self, log: bool) -> CommandHandler {
        self.log_output = log;
        self
    }

    /// Runs each command under a watchdog process fed by the worker's heartbeat, which kills
    /// it in time even when the worker is frozen. The watchdog is this executable started
    /// again: its `main` must call [`watchdog::run_if_requested`] first thing (zkq-worker's
    /// does).
    pub fn with_watchdog(mut self) -> CommandHandler {
        self.watchdog = true;
        self
    }
}

impl Handler for CommandHandler {
    fn run(&self, ctx: JobContext) -> HandlerFuture {
        let command = self.command.clone();
        let log = self.log_output;
        if self.watchdog {
            Box::pin(async move { run_watched(&command, log, ctx).await })
        } else {
            Box::pin(async move { run_command(&command, log, ctx).await })
        }
    }
}

/// The job's environment for the command: the `ZKQ_*` variables, and each header as
/// `ZKQ_HEADER_<NAME>` ([`header_var`]).
fn job_env(ctx: &JobContext) -> Vec<(String, String)> {
    let job = &ctx.job;
    let headers = job.headers.iter().map(|(k, v)| (header_var(k), v.clone()));
    [
        ("ZKQ_JOB_ID", job.id.to_string()),
        ("ZKQ_ATTEMPT", job.attempt.to_string()),
        ("ZKQ_MAX_ATTEMPTS", job.max_attempts.to_string()),
        ("ZKQ_QUEUE", ctx.queue.clone()),
        ("ZKQ_KIND", job.kind.clone()),
        ("ZKQ_WORKER_ID", ctx.worker_id.clone()),
        ("ZKQ_FENCING_TOKEN", ctx.fence.token().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .chain(headers)
    .collect()
}

/// The variable a header reaches a command job in: `ZKQ_HEADER_` and the header's name in upper
/// case, every character other than a letter or digit made `_` (`zkq-cron-tick` is
/// `ZKQ_HEADER_ZKQ_CRON_TICK`).
pub(crate) fn header_var(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ZKQ_HEADER_{name}")
}

/// Reads a command's `stream` to its end: logs each line at info when `log` (at most
/// [`MAX_LOGGED_LINE`] bytes of it: a line is never held whole), and returns the last
/// [`STDERR_TAIL`] bytes.
async fn read_output(stream: Option<impl AsyncRead + Unpin>, name: &'static str, log: bool) -> String {
    let Some(stream) = stream else {
        return String::new();
    };
    let mut reader = tokio::io::BufReader::new(stream);
    let mut tail = Vec::new();
    let mut line = Vec::new();
    let emit = |line: &mut Vec<u8>| {
        if log {
            info!(stream = name, "{}", String::from_utf8_lossy(line).trim_end());
        }
        line.clear();
    };
    loop {
        let (taken, ends_line) = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => {
                let (chunk, ends_line) = match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => (&buf[..=i], true),
                    None => (buf, false),
                };
                tail.extend_from_slice(chunk);
                let room = MAX_LOGGED_LINE.saturating_sub(line.len());
                line.extend_from_slice(&chunk[..chunk.len().min(room)]);
                (chunk.len(), ends_line)
            }
        };
        reader.consume(taken);
        let excess = tail.len().saturating_sub(STDERR_TAIL);
        tail.drain(..excess);
        if ends_line {
            emit(&mut line);
        }
    }
    if !line.is_empty() {
        emit(&mut line);
    }
    String::from_utf8_lossy(&tail).trim().to_string()
}

/// Reads a command's stderr and stdout in a task of their own (in the attempt's span) until
/// both end; returns the tail of stderr.
fn collect_output(
    stderr: Option<impl AsyncRead + Unpin + Send + 'static>,
    stdout: Option<impl AsyncRead + Unpin + Send + 'static>,
    log: bool,
) -> tokio::task::JoinHandle<String> {
    let read = async move {
        let (tail, _) = tokio::join!(
            read_output(stderr, "stderr", log),
            read_output(stdout, "stdout", log)
        );
        tail
    };
    tokio::spawn(read.in_current_span())
}

/// The stderr tail once the command has ended: a process that left the command's group (a
/// daemon) may hold the pipes open, so the readers get [`OUTPUT_AFTER_EXIT`] to finish and are
/// then dropped, with whatever tail they gathered lost.
async fn output_tail(mut collect: tokio::task::JoinHandle<String>) -> String {
    match tokio::time::timeout(OUTPUT_AFTER_EXIT, &mut collect).await {
        Ok(Ok(tail)) => tail,
        _ => {
            collect.abort();
            String::new()
        }
    }
}

/// The failed attempt's outcome from how the command ended and its stderr.
fn failed(how: String, tail: &str) -> Outcome {
    Outcome::retry(if tail.is_empty() {
        how
    } else {
        format!("{how}: {tail}")
    })
}

/// Payload files for commands under a watchdog: only the worker's user may read them.
///
/// They live in `<temp dir>/zkq-payloads-<uid>/<worker pid>/<job id>-<attempt>.in`: the first
/// folder private to the user (0700, refused if another user owns it), one folder per worker
/// process (0700), files 0600 created new. The watchdog deletes each file once the command has
/// it open; a worker killed before that leaves its folder, which the next worker of the user to
/// run a command removes (its process is gone).
mod payloads {
    use std::fs;
    use std::io::{self, Write};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    /// This process's folder, made (and the dead workers' folders removed) on first use.
    fn folder() -> io::Result<&'static Path> {
        static FOLDER: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        FOLDER
            .get_or_init(|| make().map_err(|e| e.to_string()))
            .as_deref()
            .map_err(|e| io::Error::other(e.clone()))
    }

    fn make() -> io::Result<PathBuf> {
        let uid = unsafe { libc::getuid() };
        let base = std::env::temp_dir().join(format!("zkq-payloads-{uid}"));
        private_dir(&base, uid)?;
        sweep(&base);
        let mine = base.join(std::process::id().to_string());
        private_dir(&mine, uid)?;
        Ok(mine)
    }

    /// Makes `dir` 0700, or checks that an existing one is `uid`'s and makes it 0700.
    fn private_dir(dir: &Path, uid: u32) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(dir)?;
                if !meta.is_dir() || meta.uid() != uid {
                    return Err(io::Error::other(format!(
                        "{} is not a folder of this user: payloads are not written there",
                        dir.display()
                    )));
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the folders of worker processes that are gone.
    fn sweep(base: &Path) {
        let Ok(entries) = fs::read_dir(base) else { return };
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let gone = pid != std::process::id() as i32
                && unsafe { libc::kill(pid, 0) } != 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
            if gone {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Writes `payload` to a new private file for attempt `attempt` of job `id`.
    pub(super) fn write(id: &str, attempt: u32, payload: &[u8]) -> io::Result<PathBuf> {
        let path = folder()?.join(format!("{id}-{attempt}.in"));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(payload)?;
        Ok(path)
    }
}

/// Runs the command under a watchdog whose kill deadline follows the session's heartbeat.
async fn run_watched(command: &str, log: bool, ctx: JobContext) -> Outcome {
    let mut liveness = ctx.fence.liveness().clone();
    let timeout = liveness.session_timeout();
    let grace = timeout
        .mul_f64(0.4)
        .min(Duration::from_secs(5))
        .min(timeout.mul_f64(KILL_SHARE) / 2);
    // The watchdog's stdin is its control pipe: the payload goes through a private file it
    // opens for the command and deletes.
    let input = match payloads::write(&ctx.job.id.to_string(), ctx.job.attempt, &ctx.job.payload) {
        Ok(path) => path,
        Err(e) => return Outcome::retry(format!("cannot write the payload: {e}")),
    };
    let mut env = job_env(&ctx);
    env.push((watchdog::STDIN_FILE.to_string(), input.display().to_string()));
    let args = ["-c".to_string(), command.to_string()];
    let mut kill_at = liveness.kill_at_ns();
    let mut dog = match Watchdog::spawn_with("sh", &args, &env, grace, kill_at, log, true) {
        Ok(dog) => dog,
        Err(e) => {
            let _ = std::fs::remove_file(&input);
            return Outcome::retry(format!("cannot start `sh -c {command}`: {e}"));
        }
    };
    let collect = collect_output(dog.stderr(), dog.stdout(), log);
    let mut stopped = false;
    let mut heartbeat = true;
    let run = async {
        loop {
            tokio::select! {
                code = dog.wait() => return code,
                alive = liveness.changed(), if heartbeat => {
                    heartbeat = alive;
                    if alive && !stopped {
                        kill_at = liveness.kill_at_ns();
                        dog.extend(kill_at).await;
                    }
                }
                _ = ctx.stop.cancelled(), if !stopped => {
                    stopped = true;
                    dog.stop().await;
                }
            }
        }
    };
    let code = run.await;
    let tail = output_tail(collect).await;
    match code {
        0 => Outcome::Done,
        _ if stopped => Outcome::retry("stopped"),
        _ if monotonic_ns() + grace.as_nanos() as u64 >= kill_at => failed(
            format!(
                "stopped by the watchdog: no reply from ZooKeeper for {KILL_SHARE} of the session timeout"
            ),
            &tail,
        ),
        watchdog::CANNOT_START => failed("cannot start the command".to_string(), &tail),
        watchdog::TOO_LATE => Outcome::retry("not started: no reply from ZooKeeper in time"),
        code if code > 128 => failed(format!("killed by signal {}", code - 128), &tail),
        code => failed(format!("exit status {code}"), &tail),
    }
}

async fn run_command(command: &str, log: bool, ctx: JobContext) -> Outcome {
    let job = &ctx.job;
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command);
    for var in crate::store::session::CREDENTIAL_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(job_env(&ctx))
        .stdin(Stdio::piped())
        .stdout(if log { Stdio::piped() } else { Stdio::inherit() })
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return Outcome::retry(format!("cannot start `sh -c {command}`: {e}")),
    };
    let Some(pgid) = child.id() else {
        return Outcome::retry("the command exited before it could be tracked");
    };
    let group = ProcessGroup(pgid as libc::pid_t);
    let payload = job.payload.clone();
    let mut stdin = child.stdin.take();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its stdin closes the pipe early: not an error.
            let _ = stdin.write_all(&payload).await;
        }
        drop(stdin);
    };
    let collect = collect_output(child.stderr.take(), child.stdout.take(), log);
    let run = async {
        let (_, status) = tokio::join!(feed, child.wait());
        status
    };
    tokio::select! {
        status = run => {
            // Whatever the command left running in its group ends with the job.
            group.signal(libc::SIGKILL);
            let tail = output_tail(collect).await;
            match status {
                Ok(s) if s.success() => Outcome::Done,
                Ok(s) => {
                    let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(code), _) => format!("exit status {code}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "failed".to_string(),
                    };
                    failed(how, &tail)
                }
                Err(e) => Outcome::retry(format!("cannot wait for the command: {e}")),
            }
        }
        _ = ctx.stop.cancelled() => {
            // Ask nicely; the group guard sends SIGKILL when the worker drops this attempt.
            group.signal(libc::SIGTERM);
            let _ = child.wait().await;
            group.signal(libc::SIGKILL);
            collect.abort();
            Outcome::retry("stopped")
        }
    }
}

/// A process group that gets SIGKILL when dropped.
#[derive(Debug)]
struct ProcessGroup(libc::pid_t);

impl ProcessGroup {
    fn signal(&self, sig: libc::c_int) {
        // SAFETY: killpg(2) has no memory effects. The id is the group we created for the
        // child; a group id stays reserved while any member lives, so after the whole group is
        // gone the call fails with ESRCH (barring pid reuse within moments, which is accepted).
        unsafe {
            libc::killpg(self.0, sig);
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

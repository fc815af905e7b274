//! Command handlers: run a shell command per job, the payload on its stdin.
//!
//! The command runs in its own process group. The group is killed when the attempt ends (so
//! nothing it started outlives the job), when the attempt is stopped (timeout, shutdown, session
//! loss: SIGTERM first, then SIGKILL if the worker drops the attempt), and when the handler's
//! future is dropped for any reason.

use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::handler::{Handler, HandlerFuture, JobContext, Outcome};

/// Bytes of stderr kept for the error history.
const STDERR_TAIL: usize = 2048;

/// Runs `sh -c <command>` per job. Exit status 0 is done; anything else is a failed attempt
/// (retried or dead-lettered per the queue's policy), with the tail of stderr as the error.
///
/// The environment carries `ZKQ_JOB_ID`, `ZKQ_ATTEMPT`, `ZKQ_MAX_ATTEMPTS`, `ZKQ_QUEUE`,
/// `ZKQ_KIND` and `ZKQ_WORKER_ID`.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    command: String,
}

impl CommandHandler {
    /// A handler running `command` with `sh -c`.
    pub fn new(command: impl Into<String>) -> CommandHandler {
        CommandHandler {
            command: command.into(),
        }
    }
}

impl Handler for CommandHandler {
    fn run(&self, ctx: JobContext) -> HandlerFuture {
        let command = self.command.clone();
        Box::pin(async move { run_command(&command, ctx).await })
    }
}

async fn run_command(command: &str, ctx: JobContext) -> Outcome {
    let job = &ctx.job;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("ZKQ_JOB_ID", job.id.to_string())
        .env("ZKQ_ATTEMPT", job.attempt.to_string())
        .env("ZKQ_MAX_ATTEMPTS", job.max_attempts.to_string())
        .env("ZKQ_QUEUE", &ctx.queue)
        .env("ZKQ_KIND", &job.kind)
        .env("ZKQ_WORKER_ID", &ctx.worker_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
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
    let mut stderr = child.stderr.take();
    let collect = async move {
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(err) = stderr.as_mut() {
            match err.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL);
                    tail.drain(..excess);
                }
            }
        }
        tail
    };
    let run = async {
        let (_, tail, status) = tokio::join!(feed, collect, child.wait());
        (tail, status)
    };
    tokio::select! {
        (tail, status) = run => {
            // Whatever the command left running in its group ends with the job.
            group.signal(libc::SIGKILL);
            let tail = String::from_utf8_lossy(&tail).trim().to_string();
            match status {
                Ok(s) if s.success() => Outcome::Done,
                Ok(s) => {
                    let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                        (Some(code), _) => format!("exit status {code}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "failed".to_string(),
                    };
                    Outcome::retry(if tail.is_empty() { how } else { format!("{how}: {tail}") })
                }
                Err(e) => Outcome::retry(format!("cannot wait for the command: {e}")),
            }
        }
        _ = ctx.stop.cancelled() => {
            // Ask nicely; the group guard sends SIGKILL when the worker drops this attempt.
            group.signal(libc::SIGTERM);
            let _ = child.wait().await;
            group.signal(libc::SIGKILL);
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

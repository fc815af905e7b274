//! A dead man's switch for commands that must not outlive a ZooKeeper session.
//!
//! A process frozen by SIGSTOP, a long GC-like pause or an overloaded host cannot stop its
//! children: it is not running. So a command that must stop when its runner loses its
//! session (a batch-job master, a job under a claim) runs under a **watchdog**: a separate,
//! small, single-threaded process that holds a deadline and kills the command's process group
//! when the deadline passes, whether or not the runner is scheduled.
//!
//! # Protocol
//! The runner starts the watchdog with the command and a first deadline, then feeds it over a
//! pipe (the watchdog's stdin), one line per message:
//!
//! - `K <ns>`: the new kill deadline, in `CLOCK_MONOTONIC` nanoseconds (a clock both
//!   processes share, so a message that arrives late is not stretched);
//! - `S`: stop now.
//!
//! The runner sends `K` only after a round trip to ZooKeeper: a reply to a request sent at
//! time `T` proves the server heard from the session after `T`, so it cannot expire the session
//! before `T + session timeout`, and the deadline is `T` plus a share of that. The watchdog
//! sends SIGTERM to the command's process group `grace` before the deadline and SIGKILL at the
//! deadline. End of input (the runner died) counts as `S`. When the command exits, the watchdog
//! kills what is left of its group and exits with the command's status (128 + signal when it
//! was killed by one), so the runner learns how the command ended from the watchdog's status.
//!
//! The watchdog is this crate's code run in a process of its own: a binary embedding zkq calls
//! [`run_if_requested`] first thing in `main`, and [`Watchdog::spawn`] starts the same
//! executable with [`ARG`].

use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};

/// The first argument that makes an executable run as a watchdog ([`run_if_requested`]).
pub const ARG: &str = "__zkq-watchdog";

/// Exit status of a watchdog whose command could not be started.
pub const CANNOT_START: i32 = 127;

/// Exit status of a watchdog that did not start its command because the kill deadline had
/// passed already (the runner's word came too late to be trusted).
pub const TOO_LATE: i32 = 125;

/// Environment variable naming a file the watchdog gives the command as its stdin, then
/// deletes (the watchdog's own stdin is its control pipe). Not passed on to the command.
pub const STDIN_FILE: &str = "ZKQ_WATCHDOG_STDIN";

/// Nanoseconds on `CLOCK_MONOTONIC`, the clock the runner and the watchdog share.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The runner's end of a watchdog process.
#[derive(Debug)]
pub struct Watchdog {
    process: tokio::process::Child,
    control: Option<tokio::process::ChildStdin>,
}

impl Watchdog {
    /// Starts `program args...` under a watchdog, with `env` added to its environment, killed
    /// at `kill_at_ns` (monotonic) unless the deadline is extended, SIGTERM `grace` before.
    ///
    /// The watchdog is the current executable run with [`ARG`]: its `main` must call
    /// [`run_if_requested`] first.
    pub fn spawn(
        program: &str,
        args: &[String],
        env: &[(String, String)],
        grace: Duration,
        kill_at_ns: u64,
    ) -> Result<Watchdog> {
        Watchdog::spawn_with(program, args, env, grace, kill_at_ns, false, false)
    }

    /// [`Watchdog::spawn`], with the command's stdout piped when `pipe_stdout` and its (and the
    /// watchdog's) stderr piped when `pipe_stderr` (read them from [`Watchdog::stdout`] and
    /// [`Watchdog::stderr`]); each is inherited otherwise.
    pub fn spawn_with(
        program: &str,
        args: &[String],
        env: &[(String, String)],
        grace: Duration,
        kill_at_ns: u64,
        pipe_stdout: bool,
        pipe_stderr: bool,
    ) -> Result<Watchdog> {
        let output = |piped: bool| if piped { Stdio::piped() } else { Stdio::inherit() };
        let exe = std::env::current_exe().map_err(|e| {
            Error::InvalidConfig(format!("cannot find this executable to run the watchdog: {e}"))
        })?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg(ARG)
            .arg(grace.as_millis().to_string())
            .arg(kill_at_ns.to_string())
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(output(pipe_stdout))
            .stderr(output(pipe_stderr))
            // Its own process group: a terminal's Ctrl-C for the runner must not kill the
            // watchdog and leave the command unwatched.
            .process_group(0)
            .kill_on_drop(false);
        let mut process = cmd
            .spawn()
            .map_err(|e| Error::InvalidConfig(format!("cannot start the watchdog {}: {e}", exe.display())))?;
        let control = process.stdin.take();
        Ok(Watchdog { process, control })
    }

    /// Moves the kill deadline to `kill_at_ns` (monotonic).
    pub async fn extend(&mut self, kill_at_ns: u64) {
        self.send(format!("K {kill_at_ns}\n")).await;
    }

    /// Tells the watchdog to stop the command: SIGTERM now, SIGKILL after the grace period.
    pub async fn stop(&mut self) {
        self.send("S\n".to_string()).await;
    }

    async fn send(&mut self, line: String) {
        if let Some(control) = self.control.as_mut() {
            // A watchdog that is gone has nothing left to watch.
            if control.write_all(line.as_bytes()).await.is_err() || control.flush().await.is_err() {
                self.control = None;
            }
        }
    }

    /// Waits for the watchdog (and so the command) to end; returns the command's status.
    pub async fn wait(&mut self) -> i32 {
        match self.process.wait().await {
            Ok(status) => exit_code(status),
            Err(_) => CANNOT_START,
        }
    }

    /// The stdout pipe of a watchdog started with its output piped, once.
    pub fn stdout(&mut self) -> Option<tokio::process::ChildStdout> {
        self.process.stdout.take()
    }

    /// The stderr pipe of a watchdog started with its output piped, once.
    pub fn stderr(&mut self) -> Option<tokio::process::ChildStderr> {
        self.process.stderr.take()
    }

    /// The watchdog's process id.
    pub fn id(&self) -> Option<u32> {
        self.process.id()
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs as a watchdog and exits, if this process was started as one (first argument
/// [`ARG`]); returns otherwise. Call it first thing in `main`, before any runtime starts.
pub fn run_if_requested() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(ARG) {
        return;
    }
    std::process::exit(watch(&args[2..]));
}

/// What the runner said.
enum Message {
    Deadline(u64),
    Stop,
}

/// The watchdog: `grace_ms kill_at_ns program args...`. Returns the exit status.
fn watch(args: &[String]) -> i32 {
    let (Some(grace), Some(kill_at), Some(program)) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
        args.get(2),
    ) else {
        eprintln!("zkq watchdog: usage: {ARG} GRACE_MS KILL_AT_NS PROGRAM [ARGS...]");
        return 2;
    };
    let grace_ns = grace * 1_000_000;
    let mut command = std::process::Command::new(program);
    command.args(&args[3..]).stdin(Stdio::null()).process_group(0);
    // The command runs a job or a singleton's work, not zkq: it gets no credentials of zkq's.
    for var in crate::store::session::CREDENTIAL_VARS {
        command.env_remove(var);
    }
    let stdin_file = std::env::var_os(STDIN_FILE);
    if monotonic_ns() >= kill_at {
        if let Some(path) = &stdin_file {
            let _ = std::fs::remove_file(path);
        }
        return TOO_LATE;
    }
    if let Some(path) = &stdin_file {
        command.env_remove(STDIN_FILE);
        match std::fs::File::open(path) {
            Ok(file) => {
                command.stdin(file);
            }
            Err(e) => {
                eprintln!("zkq watchdog: cannot open the command's input {path:?}: {e}");
                return CANNOT_START;
            }
        }
    }
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child: SIGKILL when the
    // watchdog dies, so that even a killed watchdog does not leave the command unwatched.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let spawned = command.spawn();
    if let Some(path) = &stdin_file {
        // The command has it open (or never will): nothing else needs the file.
        let _ = std::fs::remove_file(path);
    }
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zkq watchdog: cannot start {program}: {e}");
            return CANNOT_START;
        }
    };
    let group = child.id() as libc::pid_t;
    let messages = listen();
    let mut kill_at = kill_at;
    let mut termed = false;
    let mut killed = false;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            signal_group(group, libc::SIGKILL);
            return exit_code(status);
        }
        let now = monotonic_ns();
        if !killed && now >= kill_at {
            signal_group(group, libc::SIGKILL);
            killed = true;
        } else if !termed && now + grace_ns >= kill_at {
            signal_group(group, libc::SIGTERM);
            termed = true;
        }
        let next = if termed {
            kill_at
        } else {
            kill_at.saturating_sub(grace_ns)
        };
        let wait = Duration::from_nanos(next.saturating_sub(now))
            .clamp(Duration::from_millis(1), Duration::from_millis(20));
        match messages.recv_timeout(wait) {
            // A later deadline does not undo a SIGTERM already sent.
            Ok(Message::Deadline(at)) if !termed => kill_at = at,
            Ok(Message::Deadline(_)) => {}
            Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                kill_at = kill_at.min(monotonic_ns() + grace_ns);
                if !termed {
                    signal_group(group, libc::SIGTERM);
                    termed = true;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Reads the runner's messages on a thread; the channel closes at end of input.
fn listen() -> mpsc::Receiver<Message> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let message = match line.split_once(' ') {
                Some(("K", ns)) => match ns.trim().parse() {
                    Ok(ns) => Message::Deadline(ns),
                    Err(_) => continue,
                },
                _ if line.trim() == "S" => Message::Stop,
                _ => continue,
            };
            if tx.send(message).is_err() {
                break;
            }
        }
    });
    rx
}

fn signal_group(group: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-group, signal);
    }
}

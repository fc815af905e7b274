//! The ledgers: append-only text files where every job execution and every master run writes
//! what it did, from inside the process that did it.
//!
//! Job ledger lines (one `write` each, `O_APPEND`, so concurrent writers never interleave):
//! - `S <job> <attempt> <worker> <token> <pid> <ns>`: the job's command started;
//! - `E <job> <attempt> <worker> <token> <pid> <ns> <status>`: it ended on its own;
//! - `T <job> <attempt> <worker> <token> <pid> <ns>`: it was stopped (SIGTERM, from its
//!   worker or its watchdog) and ended then.
//!
//! Master ledger lines: `M <start|end> <token> <runner> <ns>`.
//!
//! Times are wall-clock nanoseconds: every process runs on this one machine.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn trap_term() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
}

pub fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn append(path: &str, line: &str) {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
    match file {
        Ok(mut f) => {
            if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
                eprintln!("zkq-chaos: cannot write the ledger {path}: {e}");
            }
        }
        Err(e) => eprintln!("zkq-chaos: cannot open the ledger {path}: {e}"),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| "-".to_string())
}

/// What a job asks its command to do, as its payload says: `<work ms> <fail>` where fail is
/// `none`, `first` (the first attempt fails) or `always`.
pub fn payload(work_ms: u64, fail: &str) -> String {
    format!("{work_ms} {fail}")
}

/// The job command: runs as a job's command under zkq-worker. Returns the exit status.
pub fn run_job(ledger: &str) -> i32 {
    trap_term();
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let mut parts = input.split_whitespace();
    let work_ms: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let fail = parts.next().unwrap_or("none");
    let attempt: u32 = env("ZKQ_ATTEMPT").parse().unwrap_or(0);
    let who = format!(
        "{} {} {} {} {}",
        env("ZKQ_JOB_ID"),
        attempt,
        env("ZKQ_WORKER_ID"),
        env("ZKQ_FENCING_TOKEN"),
        std::process::id()
    );
    append(ledger, &format!("S {who} {}", now_ns()));
    let until = std::time::Instant::now() + Duration::from_millis(work_ms);
    while std::time::Instant::now() < until {
        if STOP.load(Ordering::SeqCst) {
            append(ledger, &format!("T {who} {}", now_ns()));
            return 143;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = match fail {
        "always" => 1,
        "first" if attempt <= 1 => 1,
        _ => 0,
    };
    append(ledger, &format!("E {who} {} {status}", now_ns()));
    status
}

/// The master command: runs under `zkq-worker singleton` until told to stop.
pub fn run_master(ledger: &str) -> i32 {
    trap_term();
    let who = format!("{} {}", env("ZKQ_FENCING_TOKEN"), env("ZKQ_WORKER_ID"));
    append(ledger, &format!("M start {who} {}", now_ns()));
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    append(ledger, &format!("M end {who} {}", now_ns()));
    0
}

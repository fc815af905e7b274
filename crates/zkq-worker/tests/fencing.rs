//! A worker process frozen (SIGSTOP) in the middle of a command job, past its session timeout:
//! the command's watchdog must have stopped it before the job's next attempt starts elsewhere.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};
use zkq_testkit::signal;

/// The job's command: logs its start, and its end when told to stop (SIGTERM); the first
/// attempt runs until stopped, later ones end at once.
fn ledger_command(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "echo \"start $ZKQ_ATTEMPT $$ $ZKQ_WORKER_ID $(date +%s%N)\" >> {l}; \
         trap 'echo \"end $ZKQ_ATTEMPT $$ $ZKQ_WORKER_ID $(date +%s%N)\" >> {l}; exit 1' TERM; \
         if [ \"$ZKQ_ATTEMPT\" -gt 1 ]; then echo \"end $ZKQ_ATTEMPT $$ $ZKQ_WORKER_ID $(date +%s%N)\" >> {l}; exit 0; fi; \
         while :; do sleep 0.05; done 2>/dev/null"
    )
}

fn worker(zk: &str, root: &str, id: &str, ledger: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", zk, "--root", root, "--session-timeout", "2s", "--quiet"])
        .args(["--queue", "q", "--id", id, "--no-scheduler"])
        .args(["--exec", &format!("j={}", ledger_command(ledger))])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("zkq-worker starts")
}

/// One ledger line: `start|end attempt pid worker time_ns`.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    what: String,
    attempt: u32,
    pid: u32,
    worker: String,
    at_ns: u128,
}

fn read_ledger(path: &Path) -> Vec<Line> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let p: Vec<&str> = line.split_whitespace().collect();
            let [what, attempt, pid, worker, at] = p[..] else {
                panic!("bad ledger line {line:?}");
            };
            Line {
                what: what.to_string(),
                attempt: attempt.parse().unwrap(),
                pid: pid.parse().unwrap(),
                worker: worker.to_string(),
                at_ns: at.parse().unwrap(),
            }
        })
        .collect()
}

fn wait_for(ledger: &Path, what: &str, attempt: u32, within: Duration) -> Line {
    let deadline = Instant::now() + within;
    loop {
        if let Some(l) = read_ledger(ledger)
            .into_iter()
            .find(|l| l.what == what && l.attempt == attempt)
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} of attempt {attempt} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn a_frozen_workers_command_is_stopped_before_the_next_attempt_starts() {
    let zk = zkq_testkit::shared().connect_string();
    let root = zkq_testkit::unique_root("frozen-command");
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let producer = zkq::Producer::connect(&zkq::ZkConfig::new(zk.clone()), &root)
            .await
            .unwrap();
        let config = zkq::QueueConfig {
            partitions: 1,
            ..Default::default()
        };
        producer.create_queue("q", &config).await.unwrap();
        producer.enqueue("q", zkq::NewJob::new("j", "x")).await.unwrap();
        producer.close().await;
    });

    let mut frozen = worker(&zk, &root, "frozen", &ledger);
    let first = wait_for(&ledger, "start", 1, Duration::from_secs(30));
    assert_eq!(first.worker, "frozen");
    // The worker process only: its watchdog and the command run on.
    signal(frozen.id(), libc::SIGSTOP);
    let frozen_at = Instant::now();
    let mut other = worker(&zk, &root, "other", &ledger);

    let second = wait_for(&ledger, "start", 2, Duration::from_secs(30));
    assert_eq!(second.worker, "other");
    let stopped = wait_for(&ledger, "end", 1, Duration::ZERO);
    assert!(
        stopped.at_ns < second.at_ns,
        "the frozen attempt was stopped {} ms after the next attempt started",
        (stopped.at_ns - second.at_ns) / 1_000_000
    );
    assert!(!alive(first.pid), "the frozen attempt's command is still running");
    // Still frozen: only the watchdog can have stopped the command.
    assert!(frozen_at.elapsed() < Duration::from_secs(30));
    eprintln!(
        "attempt 1 stopped {} ms before attempt 2 started",
        (second.at_ns - stopped.at_ns) / 1_000_000
    );
    wait_for(&ledger, "end", 2, Duration::from_secs(30));

    signal(frozen.id(), libc::SIGCONT);
    for w in [&mut frozen, &mut other] {
        signal(w.id(), libc::SIGTERM);
        let status = w.wait().unwrap();
        assert!(status.success(), "worker exit: {status}");
    }
    let runs = read_ledger(&ledger);
    assert_eq!(runs.iter().filter(|l| l.what == "start").count(), 2, "{runs:?}");
}

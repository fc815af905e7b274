//! `zkq-worker singleton`: batch-job master failover between real processes on a 3-node
//! ensemble, with the master frozen (SIGSTOP) past its session timeout, again and again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zkq_testkit::{signal, Ensemble};

/// A run of the command, as the command itself wrote it to the ledger.
#[derive(Debug)]
struct Run {
    token: i64,
    runner: String,
    start: u128,
    end: Option<u128>,
}

/// The command every candidate runs: it writes start and end (on SIGTERM) with its token.
fn ledger_command(ledger: &Path) -> String {
    let l = ledger.display();
    format!(
        "echo \"start $ZKQ_FENCING_TOKEN $ZKQ_WORKER_ID $(date +%s%N)\" >> {l}; \
         trap 'echo \"end $ZKQ_FENCING_TOKEN $ZKQ_WORKER_ID $(date +%s%N)\" >> {l}; exit 0' TERM; \
         while :; do sleep 0.05; done 2>/dev/null"
    )
}

fn runner(zk: &str, root: &str, id: &str, ledger: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", zk, "--root", root, "--session-timeout", "2s", "--quiet"])
        .args([
            "singleton",
            "--name",
            "nightly",
            "--id",
            id,
            "--restart-delay",
            "200ms",
        ])
        .args(["--", "sh", "-c", &ledger_command(ledger)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("zkq-worker starts")
}

fn read_ledger(path: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: Vec<Run> = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [what, token, runner, at] = parts[..] else {
            panic!("bad ledger line {line:?}");
        };
        let (token, at) = (token.parse().unwrap(), at.parse().unwrap());
        match what {
            "start" => runs.push(Run {
                token,
                runner: runner.to_string(),
                start: at,
                end: None,
            }),
            "end" => {
                let run = runs
                    .iter_mut()
                    .find(|r| r.token == token && r.runner == runner)
                    .unwrap_or_else(|| panic!("end without start: {line:?}"));
                run.end = Some(at);
            }
            _ => panic!("bad ledger line {line:?}"),
        }
    }
    runs
}

/// Waits until the ledger shows a run started by someone other than `not`.
fn wait_for_master(ledger: &Path, not: Option<&str>, within: Duration) -> Run {
    let deadline = Instant::now() + within;
    loop {
        if let Some(last) = read_ledger(ledger).pop() {
            if Some(last.runner.as_str()) != not {
                return last;
            }
        }
        assert!(Instant::now() < deadline, "no new master within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_frozen_master_is_replaced_and_runs_never_overlap() {
    let ensemble = Ensemble::quorum(3).unwrap();
    let zk = ensemble.connect_string();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let ids = ["p0", "p1", "p2"];
    let mut runners: Vec<Child> = ids.iter().map(|id| runner(&zk, "/zkq", id, &ledger)).collect();

    let mut master = wait_for_master(&ledger, None, Duration::from_secs(30));
    for _ in 0..3 {
        // Freeze the master's zkq process only (not its watchdog, not the command) for well
        // past the 2 s session timeout.
        let index = ids.iter().position(|id| *id == master.runner).unwrap();
        let pid = runners[index].id();
        signal(pid, libc::SIGSTOP);
        let next = wait_for_master(&ledger, Some(&master.runner), Duration::from_secs(30));
        std::thread::sleep(Duration::from_secs(1));
        // Resumed, the old master finds its session gone and must never act again.
        signal(pid, libc::SIGCONT);
        std::thread::sleep(Duration::from_secs(2));
        master = next;
    }
    for r in &runners {
        signal(r.id(), libc::SIGTERM);
    }
    for r in runners.iter_mut() {
        let status = r.wait().unwrap();
        assert!(status.success(), "runner exit: {status}");
    }

    let runs = read_ledger(&ledger);
    for pair in runs.windows(2) {
        if let (Some(end), true) = (pair[0].end, pair[0].runner != pair[1].runner) {
            eprintln!(
                "{} (token {}) stopped {} ms before {} (token {}) started",
                pair[0].runner,
                pair[0].token,
                (pair[1].start as i128 - end as i128) / 1_000_000,
                pair[1].runner,
                pair[1].token
            );
        }
    }
    assert!(runs.len() >= 4, "a first master and three takeovers: {runs:?}");
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let a_end = a
            .end
            .unwrap_or_else(|| panic!("run {a:?} never ended, yet {b:?} started"));
        assert!(a_end < b.start, "runs overlap: {a:?} and {b:?}");
        assert!(a.token < b.token, "tokens must grow strictly: {a:?} then {b:?}");
    }
    assert!(
        runs.last().unwrap().end.is_some(),
        "the last run was stopped on shutdown"
    );
    // Each of the three takeovers went to another process than the frozen one: the master
    // changes process at least three times along the ledger.
    let changes = runs.windows(2).filter(|p| p[0].runner != p[1].runner).count();
    assert!(changes >= 3, "{changes} changes of master process: {runs:?}");
}

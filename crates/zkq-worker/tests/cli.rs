//! zkq-worker driven as a user would, against a real ZooKeeper.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zkq::{NewJob, Producer, QueueConfig, ZkConfig};

fn zk() -> ZkConfig {
    ZkConfig::new(zkq_testkit::shared().connect_string())
}

fn worker(root: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args([
            "--zk",
            &zkq_testkit::shared().connect_string(),
            "--root",
            root,
            "--session-timeout",
            "2s",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zkq-worker starts")
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

/// Waits until `path` holds `lines` lines, watching the file system by polling it (the
/// writer is another process); bounded by a generous deadline.
async fn wait_for_lines(path: &std::path::Path, lines: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let got: Vec<String> = text.lines().map(str::to_string).collect();
        if got.len() >= lines {
            return got;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {lines} lines in {}",
            got.len(),
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_runs_jobs_as_commands_and_stops_gracefully_on_sigterm() {
    let root = zkq_testkit::unique_root("cli-worker");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer
        .create_queue(
            "q",
            &QueueConfig {
                partitions: 2,
                ..QueueConfig::default()
            },
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let exec = format!(
        "echo=echo \"$(cat) $ZKQ_ATTEMPT\" >> {}; echo said $ZKQ_JOB_ID; echo warned >&2",
        out.display()
    );
    let mut child = worker(&root, &["--queue", "q", "--concurrency", "4", "--exec", &exec]);
    for i in 0..20 {
        producer
            .enqueue("q", NewJob::new("echo", format!("job-{i}")))
            .await
            .unwrap();
    }
    let mut lines = wait_for_lines(&out, 20).await;
    lines.sort();
    let mut expected: Vec<String> = (0..20).map(|i| format!("job-{i} 1")).collect();
    expected.sort();
    assert_eq!(lines, expected);

    signal(&child, libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        (status, err)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "{}", status.1);
    assert!(
        status.1.contains("worker stopped") && status.1.contains("done=20"),
        "{}",
        status.1
    );
    // Each attempt's start and end are logged at info, with the job's kind and the outcome.
    let logged = |what: &str| {
        status
            .1
            .lines()
            .filter(|l| l.contains(what) && l.contains("kind=echo"))
            .count()
    };
    assert_eq!(logged("attempt started"), 20, "{}", status.1);
    assert_eq!(logged("attempt ended"), 20, "{}", status.1);
    assert!(
        status.1.contains("outcome=\"done\"") || status.1.contains("outcome=done"),
        "{}",
        status.1
    );
    // Each line a command writes is logged with its job's span (the id is in both).
    let said: Vec<&str> = status.1.lines().filter(|l| l.contains("said ")).collect();
    assert_eq!(said.len(), 20, "{}", status.1);
    assert!(
        said.iter()
            .all(|l| l.contains("stream=\"stdout\"") || l.contains("stream=stdout")),
        "{said:?}"
    );
    for line in &said {
        let id = line
            .rsplit("said ")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default();
        assert!(line.contains(&format!("id={id}")), "{line}");
    }
    assert_eq!(
        status.1.lines().filter(|l| l.contains("warned")).count(),
        20,
        "{}",
        status.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_job_runs_again_on_another_with_the_attempt_counted() {
    let root = zkq_testkit::unique_root("cli-kill");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    // The first attempt hangs; later attempts finish.
    let exec = format!(
        "k=echo $ZKQ_ATTEMPT >> {log}; if [ $ZKQ_ATTEMPT = 1 ]; then sleep 600; fi",
        log = log.display()
    );
    let mut first = worker(&root, &["-q", "q", "-e", &exec, "--id", "first"]);
    producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();
    assert_eq!(wait_for_lines(&log, 1).await, vec!["1"]);
    signal(&first, libc::SIGKILL);
    first.wait().unwrap();

    let mut second = worker(&root, &["-q", "q", "-e", &exec, "--id", "second"]);
    assert_eq!(wait_for_lines(&log, 2).await, vec!["1", "2"]);
    signal(&second, libc::SIGTERM);
    assert!(second.wait().unwrap().success());
}

#[test]
fn bad_flags_and_an_unreachable_zookeeper_give_clear_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["-q", "q"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--exec <KIND=COMMAND>"));

    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["-q", "q", "-e", "nocommand="])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected KIND=COMMAND"));

    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["-q", "bad name", "-e", "k=true", "--zk", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid queue name \"bad name\""));

    // A session holding more claims than ZooKeeper can list in the transaction that ends it.
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["-q", "q", "-e", "k=true", "-c", "9000", "--zk", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("concurrency 9000 is too high") && err.contains("jute.maxbuffer"),
        "{err}"
    );

    let port = zkq_testkit::server::free_port().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args([
            "-q",
            "q",
            "-e",
            "k=true",
            "--connect-timeout",
            "1s",
            "--zk",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("error: cannot reach ZooKeeper at 127.0.0.1:{port}")));
}

#[test]
fn help_lists_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--zk",
        "ZKQ_ZK",
        "--root",
        "--queue",
        "--concurrency",
        "--exec",
        "--job-timeout",
        "--shutdown-grace",
        "--stop-grace",
        "--no-scheduler",
        "--id",
        "--session-timeout",
        "ZKQ_JOB_ID",
        "ZKQ_ATTEMPT",
        "SIGTERM",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
}

#[test]
fn subcommands_explain_themselves_and_refuse_bad_input() {
    let help = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let top = help(&["--help"]);
    assert!(top.contains("scheduler") && top.contains("singleton"), "{top}");
    let singleton = help(&["singleton", "--help"]);
    for flag in [
        "--name",
        "--restart",
        "--restart-delay",
        "--stop-grace",
        "ZKQ_FENCING_TOKEN",
        "--zk",
    ] {
        assert!(singleton.contains(flag), "singleton --help lacks {flag}");
    }
    let scheduler = help(&["scheduler", "--help"]);
    for flag in [
        "--promote-interval",
        "--rebalance-delay",
        "--trim-interval",
        "--id",
    ] {
        assert!(scheduler.contains(flag), "scheduler --help lacks {flag}");
    }

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
            .args(args)
            .output()
            .unwrap()
    };
    // No command after --.
    let out = run(&["singleton", "--name", "n"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("<COMMAND>"));
    // A bad restart policy.
    let out = run(&["singleton", "--name", "n", "--restart", "sometimes", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected always, on-failure or never"));
    // A bad singleton name, before any connection is tried.
    let out = run(&["--zk", "127.0.0.1:1", "singleton", "--name", "a/b", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid singleton name \"a/b\""));
}

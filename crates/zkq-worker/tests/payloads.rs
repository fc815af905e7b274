//! A command job's payload reaches only its command: the file it passes through is private to
//! the worker's user, and a killed worker's files are removed by the next worker. The worker's
//! ZooKeeper credentials do not reach the command.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use zkq::{NewJob, Producer, QueueConfig, ZkConfig};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Polls `probe` until it gives something, at most 60 s.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_files_are_private_a_killed_workers_files_are_removed_and_credentials_stay_with_the_worker() {
    let root = zkq_testkit::unique_root("payloads");
    let tmp = tempfile::tempdir().unwrap();
    let uid = unsafe { libc::getuid() };
    let base = tmp.path().join(format!("zkq-payloads-{uid}"));
    // A worker that was killed with an attempt's payload file still there.
    let dead_pid = {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let dead = base.join(dead_pid.to_string());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dead)
        .unwrap();
    std::fs::write(dead.join("left-1.in"), b"secret").unwrap();

    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let producer = Producer::connect(&zk, &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    // The command reports the mode of the file its stdin is (already deleted by the watchdog
    // by then: the open file is still there), and what it reads.
    let report = tmp.path().join("report");
    let command = format!(
        "k=stat -L -c %a /dev/stdin > {r}.mode; echo \"${{ZKQ_AUTH-unset}} ${{ZKQ_AUTH_FILE-unset}}\" > {r}.env; cat > {r}.payload",
        r = report.display()
    );
    let mut worker = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", &zkq_testkit::shared().connect_string(), "--root", &root])
        .args(["--queue", "q", "--exec", &command])
        .env("TMPDIR", tmp.path())
        // The worker's credentials, which its commands must not see.
        .env("ZKQ_AUTH", "digest:zkq:pw-of-the-worker")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mine = base.join(worker.id().to_string());
    producer
        .enqueue("q", NewJob::new("k", "the payload"))
        .await
        .unwrap();

    let payload_of = report.with_extension("payload");
    let payload = eventually("the command's report", || {
        std::fs::read_to_string(&payload_of)
            .ok()
            .filter(|p| !p.is_empty())
    })
    .await;
    assert_eq!(payload, "the payload");
    let file_mode = std::fs::read_to_string(report.with_extension("mode")).unwrap();
    assert_eq!(file_mode.trim(), "600", "the payload file is the user's alone");
    let env = std::fs::read_to_string(report.with_extension("env")).unwrap();
    assert_eq!(
        env.trim(),
        "unset unset",
        "a command never sees the worker's credentials"
    );
    assert_eq!(mode(&base), 0o700);
    assert_eq!(mode(&mine), 0o700);
    assert!(!dead.exists(), "the killed worker's folder is removed");
    let left: Vec<_> = std::fs::read_dir(&mine).unwrap().flatten().collect();
    assert!(left.is_empty(), "the watchdog deleted the payload file: {left:?}");
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    worker.wait().unwrap();
    producer.close().await;
}

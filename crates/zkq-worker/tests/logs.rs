//! `--log-format json`: one JSON object per line, an attempt's lines carrying its job id,
//! queue, kind and attempt.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use zkq::{NewJob, Producer, QueueConfig, ZkConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_the_jobs_fields() {
    let root = zkq_testkit::unique_root("json-logs");
    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let producer = Producer::connect(&zk, &root).await.unwrap();
    let config = QueueConfig {
        max_attempts: 1,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &config).await.unwrap();
    let failing = producer.enqueue("q", NewJob::new("f", "x")).await.unwrap();
    let id = producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", &zk.address, "--root", &root, "--queue", "q"])
        .args(["--exec", "k=true", "--exec", "f=false", "--concurrency", "1"])
        .env("ZKQ_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = worker.stderr.take().unwrap();
    // Every line is read, to the end: the reader stays until the worker exits.
    let all = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let mut done = Some(done);
    let seen = all.clone();
    // Both jobs settled, in either order: the two are in different partitions (round robin),
    // and the scan may come to either first.
    let reader = std::thread::spawn(move || {
        let (mut ended, mut dead) = (false, false);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            ended |= line.contains("attempt ended") && line.contains("\"outcome\":\"done\"");
            dead |= line.contains("job dead-lettered");
            seen.lock().unwrap().push(line);
            if ended && dead {
                if let Some(done) = done.take() {
                    let _ = done.send(());
                }
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(60), ended).await;
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let _ = worker.wait();
    reader.join().unwrap();
    let lines = all.lock().unwrap().clone();
    assert!(!lines.is_empty());
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ended = objects
        .iter()
        .find(|o| o["fields"]["message"] == "attempt ended" && o["fields"]["outcome"] == "done")
        .unwrap_or_else(|| panic!("no attempt ended done in {lines:#?}"));
    assert_eq!(ended["level"], "INFO");
    assert_eq!(ended["fields"]["outcome"], "done");
    let span = &ended["span"];
    assert_eq!(span["id"], id.to_string(), "{ended}");
    assert_eq!(span["queue"], "q");
    assert_eq!(span["kind"], "k");
    assert_eq!(span["attempt"], 1);
    // A line of an inner step (settling the failed job) carries the job's fields too, in the
    // list of enclosing spans.
    let dead = objects
        .iter()
        .find(|o| o["fields"]["message"] == "job dead-lettered")
        .unwrap_or_else(|| panic!("no dead-letter line in {lines:#?}"));
    let job = dead["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "job"))
        .unwrap_or_else(|| panic!("no job span in {dead}"));
    assert_eq!(job["id"], failing.to_string(), "{dead}");
    assert_eq!(
        (job["queue"].as_str(), job["kind"].as_str()),
        (Some("q"), Some("f"))
    );
    producer.close().await;
}

/// A worker whose stderr reader went away (a log shipper restarted, `| head`) keeps working
/// and still shuts down on SIGTERM: a log line it cannot write is dropped, not a panic in the
/// task that logged it (which left the shutdown signal unheard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_log_reader_is_gone_still_runs_jobs_and_shuts_down() {
    let root = zkq_testkit::unique_root("closed-stderr");
    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let producer = Producer::connect(&zk, &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    let mut worker = Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args([
            "--zk",
            &zk.address,
            "--root",
            &root,
            "--queue",
            "q",
            "--exec",
            "k=true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read up to the registration, then close the pipe.
    let stderr = worker.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("worker registered") {
            break;
        }
    }
    drop(lines);
    for n in 0..3 {
        producer
            .enqueue("q", NewJob::new("k", format!("{n}")))
            .await
            .unwrap();
    }
    let admin = zkq::Admin::connect(&zk, &root).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stats = admin.stats(Some("q")).await.unwrap();
        let q = &stats.queues[0];
        if q.ready.iter().sum::<u64>() == 0 && q.running == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the jobs ran within 60 s: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = worker.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let status = status.expect("the worker exits within 30 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    admin.close().await;
    producer.close().await;
}

//! zkq-admin through its binary, against a real ZooKeeper: stats, workers and the dead-letter
//! commands, their JSON and their errors.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Semaphore};
use zkq::{JobContext, NewJob, Outcome, Producer, QueueConfig, Worker, WorkerConfig};

mod support;

use support::{admin, admin_json, text, zk, PATIENCE};

/// A worker on `queue` whose handler for kind `k` is `handler`; stopped by the sender.
fn spawn_worker<F, Fut>(
    root: &str,
    queue: &str,
    concurrency: usize,
    handler: F,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>)
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let config = WorkerConfig {
        queues: vec![queue.to_string()],
        concurrency,
        poll_interval: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(zk(), root, config)
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, handle)
}

/// Polls `zkq-admin stats --json` until `done` holds for `queue`'s entry.
async fn until_stats(root: &str, queue: &str, done: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let stats = admin_json(root, &["stats", "--queue", queue]);
            if done(&stats["queues"][0]) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("stats reached the expected state")
}

/// Sends `n` jobs of `queue` to the dead letters through a worker whose handler gives up.
async fn kill_jobs(root: &str, producer: &Producer, queue: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            producer
                .enqueue(queue, NewJob::new("k", format!("job {i}")))
                .await
                .unwrap()
                .to_string(),
        );
    }
    let (stop, handle) = spawn_worker(root, queue, 4, |ctx: JobContext| async move {
        Outcome::dead(format!("boom: {}", String::from_utf8_lossy(&ctx.job.payload)))
    });
    until_stats(root, queue, |q| q["dead"] == n).await;
    let _ = stop.send(());
    handle.await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_and_workers_count_ready_delayed_running_and_dead_jobs() {
    let root = zkq_testkit::unique_root("admin-stats");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let config = QueueConfig {
        partitions: 2,
        priorities: 3,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &config).await.unwrap();
    kill_jobs(&root, &producer, "q", 2).await;
    for i in 0..5 {
        producer
            .enqueue("q", NewJob::new("k", format!("low {i}")))
            .await
            .unwrap();
    }
    for i in 0..3 {
        producer
            .enqueue("q", NewJob::new("k", format!("high {i}")).priority(2))
            .await
            .unwrap();
    }
    for i in 0..2 {
        producer
            .enqueue(
                "q",
                NewJob::new("k", format!("later {i}")).delay(Duration::from_secs(3600)),
            )
            .await
            .unwrap();
    }
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    let q = &stats["queues"][0];
    assert_eq!(q["queue"], "q");
    assert_eq!(q["partitions"], 2);
    assert_eq!(q["ready"], serde_json::json!([5, 0, 3]));
    assert_eq!(q["delayed"], 2);
    assert_eq!(q["running"], 0);
    assert_eq!(q["dead"], 2);
    assert_eq!(stats["fleet"]["workers"], 0);

    // A worker holding one job: it counts as running, not ready, and the worker shows it.
    let gate = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let g = gate.clone();
    let (stop, handle) = spawn_worker(&root, "q", 1, move |_ctx: JobContext| {
        let (gate, started) = (g.clone(), started_tx.clone());
        async move {
            let _ = started.send(());
            gate.acquire().await.unwrap().forget();
            Outcome::Done
        }
    });
    tokio::time::timeout(PATIENCE, started.recv()).await.unwrap();
    let stats = until_stats(&root, "q", |q| q["running"] == 1).await;
    let ready: u64 = stats["queues"][0]["ready"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(ready, 7);
    assert_eq!(stats["fleet"]["workers"], 1);
    let workers = admin_json(&root, &["workers"]);
    assert_eq!(workers.as_array().unwrap().len(), 1);
    assert_eq!(workers[0]["queues"], serde_json::json!(["q"]));
    assert_eq!(workers[0]["kinds"], serde_json::json!(["k"]));
    assert_eq!(workers[0]["running"], 1);
    assert_eq!(workers[0]["concurrency"], 1);
    assert_eq!(workers[0]["pid"], std::process::id());

    let table = text(&admin(&root, &["stats"]).stdout);
    assert!(table.starts_with("QUEUE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("q ")), "{table}");
    assert!(table.contains("workers: 1"), "{table}");
    gate.add_permits(100);
    let _ = stop.send(());
    handle.await.unwrap();
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_shown_retried_with_their_id_and_purged() {
    let root = zkq_testkit::unique_root("admin-dead");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let ids = kill_jobs(&root, &producer, "q", 3).await;

    let list = admin_json(&root, &["dead", "list"]);
    let listed = list.as_array().unwrap();
    assert_eq!(listed.len(), 3);
    let died: Vec<u64> = listed.iter().map(|l| l["died_at_ms"].as_u64().unwrap()).collect();
    assert!(died.windows(2).all(|w| w[0] >= w[1]), "newest first: {died:?}");
    for l in listed {
        assert!(ids.contains(&l["id"].as_str().unwrap().to_string()));
        assert!(l["last_error"].as_str().unwrap().starts_with("boom: job "), "{l}");
        assert_eq!(l["queue"], "q");
    }
    assert_eq!(
        admin_json(&root, &["dead", "list", "--kind", "other"]),
        serde_json::json!([])
    );

    let shown = admin_json(&root, &["dead", "show", &ids[0]]);
    assert_eq!(shown["id"], ids[0].as_str());
    assert_eq!(shown["payload_preview"], "job 0");
    assert_eq!(shown["errors"][0]["message"], "boom: job 0");
    assert_eq!(shown["attempts"], 1);

    // Back to work with the same id; it runs again as its first attempt.
    let retried = admin_json(&root, &["dead", "retry", &ids[0]]);
    assert_eq!(retried["retried"], serde_json::json!([ids[0]]));
    let (runs_tx, mut runs) = mpsc::unbounded_channel();
    let (stop, handle) = spawn_worker(&root, "q", 2, move |ctx: JobContext| {
        let runs = runs_tx.clone();
        async move {
            let _ = runs.send((ctx.job.id.to_string(), ctx.job.attempt, ctx.job.errors.len()));
            Outcome::Done
        }
    });
    let run = tokio::time::timeout(PATIENCE, runs.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run, (ids[0].clone(), 1, 1), "same id, attempt 1, history kept");
    let _ = stop.send(());
    handle.await.unwrap();

    let out = admin(&root, &["dead", "retry", "no-such-id", &ids[1]]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no dead letter with id \"no-such-id\""),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        admin_json(&root, &["dead", "list"]).as_array().unwrap().len(),
        2,
        "nothing moved"
    );

    // An id given twice moves once.
    let twice = admin_json(&root, &["dead", "retry", &ids[2], &ids[2]]);
    assert_eq!(twice["retried"], serde_json::json!([ids[2]]));

    assert_eq!(
        admin_json(&root, &["dead", "purge", "--older-than", "1d"])["purged"],
        0
    );
    assert_eq!(admin_json(&root, &["dead", "purge", &ids[1]])["purged"], 1);
    assert_eq!(
        admin_json(&root, &["dead", "purge", "--all", "--queue", "q"])["purged"],
        0
    );
    assert_eq!(admin_json(&root, &["dead", "list"]), serde_json::json!([]));
    producer.close().await;
}

#[test]
fn bad_input_and_an_unreachable_zookeeper_give_clear_errors() {
    let root = zkq_testkit::unique_root("admin-errors");
    let out = admin(&root, &["stats", "--queue", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no queue named \"nope\""),
        "{}",
        text(&out.stderr)
    );

    let out = admin(&root, &["dead", "show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no dead letter with id \"nope\""),
        "{}",
        text(&out.stderr)
    );

    let out = admin(&root, &["dead", "retry"]);
    assert_eq!(out.status.code(), Some(2), "ids or --all are required");
    let out = admin(&root, &["dead", "purge", "--older-than", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--older-than"),
        "{}",
        text(&out.stderr)
    );

    let port = zkq_testkit::server::free_port().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-admin"))
        .args([
            "--zk",
            &format!("127.0.0.1:{port}"),
            "--connect-timeout",
            "1s",
            "stats",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach ZooKeeper"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_queue_starts_no_job_a_second_after_pause_and_resume_runs_each_once() {
    let root = zkq_testkit::unique_root("admin-pause");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let config = QueueConfig {
        partitions: 4,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &config).await.unwrap();
    for chunk in 0..10 {
        let jobs = (0..100)
            .map(|i| NewJob::new("k", format!("{chunk}-{i}")))
            .collect();
        producer.enqueue_batch("q", jobs).await.unwrap();
    }
    let (runs_tx, mut runs) = mpsc::unbounded_channel();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let runs_tx = runs_tx.clone();
            spawn_worker(&root, "q", 4, move |ctx: JobContext| {
                let runs = runs_tx.clone();
                async move {
                    let _ = runs.send((ctx.job.id.to_string(), std::time::Instant::now()));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Outcome::Done
                }
            })
        })
        .collect();
    let mut started = Vec::new();
    while started.len() < 100 {
        started.push(
            tokio::time::timeout(PATIENCE, runs.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }

    let out = admin(&root, &["pause", "q"]);
    let paused_at = std::time::Instant::now();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(run) = runs.try_recv() {
        started.push(run);
    }
    let late: Vec<_> = started
        .iter()
        .filter(|(_, at)| *at > paused_at + Duration::from_secs(1))
        .collect();
    assert!(
        late.is_empty(),
        "{} jobs started over 1 s after the pause",
        late.len()
    );
    assert!(started.len() < 1000, "the pause stopped the drain");
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    assert_eq!(stats["queues"][0]["paused"], true);
    let table = text(&admin(&root, &["stats"]).stdout);
    assert!(table.contains("PAUSED"), "{table}");

    let resumed = admin_json(&root, &["resume", "q"]);
    assert_eq!(resumed["config"]["paused"], false);
    while started.len() < 1000 {
        started.push(
            tokio::time::timeout(PATIENCE, runs.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let ids: std::collections::HashSet<&String> = started.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1000, "every job ran exactly once");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(runs.try_recv().is_err(), "no job ran twice");
    for (stop, handle) in workers {
        let _ = stop.send(());
        handle.await.unwrap();
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_settings_change_live_and_moves_are_refused() {
    let root = zkq_testkit::unique_root("admin-queue-set");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    let before = producer.enqueue("q", NewJob::new("k", "before")).await.unwrap();

    let set = admin_json(
        &root,
        &[
            "queue",
            "set",
            "q",
            "--max-attempts",
            "7",
            "--retry-base",
            "50ms",
            "--dead-max",
            "0",
        ],
    );
    assert_eq!(set["config"]["max_attempts"], 7);
    assert_eq!(set["config"]["retry"]["base_ms"], 50);
    assert_eq!(set["config"]["dead_max"], Value::Null);

    // A producer that read the config before the change applies it within a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = producer.enqueue("q", NewJob::new("k", "after")).await.unwrap();
    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let (stop, handle) = spawn_worker(&root, "q", 2, move |ctx: JobContext| {
        let tx = attempts_tx.clone();
        async move {
            let _ = tx.send((ctx.job.id, ctx.job.max_attempts));
            Outcome::Done
        }
    });
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let (id, max) = tokio::time::timeout(PATIENCE, attempts.recv())
            .await
            .unwrap()
            .unwrap();
        seen.insert(id, max);
    }
    assert_eq!(seen[&before], 5);
    assert_eq!(seen[&after], 7);
    let _ = stop.send(());
    handle.await.unwrap();

    for (args, message) in [
        (
            vec!["queue", "set", "q", "--partitions", "4"],
            "the partition count cannot change (8 to 4)",
        ),
        (
            vec!["queue", "set", "q", "--priorities", "5"],
            "the priority count cannot change",
        ),
        (
            vec!["queue", "set", "q", "--max-attempts", "0"],
            "invalid configuration",
        ),
        (
            vec!["queue", "set", "nope", "--max-attempts", "3"],
            "no queue named \"nope\"",
        ),
        (vec!["pause", "nope"], "no queue named \"nope\""),
    ] {
        let out = admin(&root, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).contains(message),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    assert_eq!(stats["queues"][0]["partitions"], 8, "nothing changed");
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_show_each_key_its_holder_and_its_waiters() {
    let root = zkq_testkit::unique_root("admin-locks");
    let layout = zkq::Layout::new(&root).unwrap();
    let holder_session = zk().connect().await.unwrap();
    let waiter_session = zk().connect().await.unwrap();
    let held = zkq::Lock::new(holder_session.clone(), &layout, "invoice/42", "worker-a").unwrap();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let guard = held.acquire().await.unwrap();
    let locks = admin_json(&root, &["locks"]);
    assert_eq!(locks.as_array().unwrap().len(), 1);
    assert_eq!(locks[0]["key"], "invoice/42", "the key, unescaped");
    assert_eq!(locks[0]["holder"], "worker-a");
    assert_eq!(locks[0]["token"], guard.token());
    assert_eq!(locks[0]["waiters"], 0);
    let since = locks[0]["held_since_ms"].as_u64().unwrap();
    assert!(since + 1000 >= before, "held since {since}, asked at {before}");

    // A second process waits in line behind the holder.
    let waiting = zkq::Lock::new(waiter_session.clone(), &layout, "invoice/42", "worker-b").unwrap();
    let waiter = tokio::spawn(async move { waiting.acquire_timeout(PATIENCE).await.unwrap() });
    let locks = tokio::time::timeout(PATIENCE, async {
        loop {
            let locks = admin_json(&root, &["locks"]);
            if locks[0]["waiters"] == 1 {
                return locks;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(locks[0]["holder"], "worker-a");
    let table = text(&admin(&root, &["locks"]).stdout);
    assert!(
        table.contains("invoice/42") && table.contains("worker-a"),
        "{table}"
    );

    guard.release().await.unwrap();
    let next = waiter.await.unwrap().expect("the waiter gets the lock");
    let locks = admin_json(&root, &["locks"]);
    assert_eq!(locks[0]["holder"], "worker-b");
    assert_eq!(locks[0]["waiters"], 0);
    next.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_check_lists_znodes_open_to_everyone_and_acl_apply_closes_them() {
    let root = zkq_testkit::unique_root("admin-acl");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();
    producer.close().await;
    let with_auth = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_zkq-admin"))
            .args(["--zk", &zkq_testkit::shared().connect_string(), "--root", &root])
            .args(args)
            .env("ZKQ_AUTH", "digest:zkq:pw-admin")
            .output()
            .expect("zkq-admin runs")
    };

    let check = with_auth(&["acl", "check"]);
    assert_eq!(
        check.status.code(),
        Some(1),
        "differences exit 1: {}",
        text(&check.stderr)
    );
    let out = text(&check.stdout);
    assert!(
        out.contains(&format!("{root} ")) && out.contains("world:anyone:cdrwa"),
        "{out}"
    );
    assert!(out.contains("zkq-admin acl apply"), "{out}");
    assert!(!out.contains("pw-admin"), "the password is never printed: {out}");

    let apply = with_auth(&["acl", "apply", "--acl-read", "world:anyone", "--json"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply.stderr));
    let report: Value = serde_json::from_slice(&apply.stdout).unwrap();
    assert!(report["fixed"].as_u64().unwrap() >= 10, "{report}");
    let expected: Vec<String> = report["expected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["scheme"].as_str().unwrap(),
                e["perms"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(expected, ["digest:cdrwa", "world:r"], "{report}");

    // Without --acl-read, world:anyone's read entry is now one too many.
    let check = with_auth(&["acl", "check", "--json"]);
    assert_eq!(check.status.code(), Some(1));
    let again = with_auth(&["acl", "check", "--acl-read", "world:anyone"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stdout));
    assert!(text(&again.stdout).contains("all with the expected ACL"));
    // Still readable without credentials (world:anyone may read), but only that.
    let stats = admin(&root, &["stats"]);
    assert_eq!(stats.status.code(), Some(0), "{}", text(&stats.stderr));
    let pause = admin(&root, &["pause", "q"]);
    assert_eq!(pause.status.code(), Some(1));
    let err = text(&pause.stderr);
    assert!(err.contains("not authorized") && err.contains("WRITE"), "{err}");

    // A password where a digest id is expected is refused without being repeated.
    let bad = with_auth(&["acl", "check", "--acl-read", "digest:monitor:secret-pw"]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains("digest:USER:HASH") && !err.contains("secret-pw"),
        "{err}"
    );
}

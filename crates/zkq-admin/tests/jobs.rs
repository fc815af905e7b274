//! zkq-admin's `job show` and `job cancel` through the binary, and jobs of kinds a worker does
//! not run, against a real ZooKeeper.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use zkq::{CommandHandler, JobContext, NewJob, Outcome, Producer, QueueConfig, Worker, WorkerConfig};

mod support;

use support::{admin, admin_json, text, zk, PATIENCE};

/// Runs `worker` until the returned sender fires.
fn spawn(worker: Worker) -> (oneshot::Sender<()>, tokio::task::JoinHandle<zkq::WorkerSummary>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap()
    });
    (stop, handle)
}

fn config(queue: &str) -> WorkerConfig {
    WorkerConfig {
        queues: vec![queue.to_string()],
        concurrency: 4,
        poll_interval: Duration::from_millis(200),
        stop_grace: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(found) = probe() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} within {PATIENCE:?}"))
}

/// Whether process `pid` exists (signal 0 checks without sending anything).
fn alive(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_show_finds_a_job_ready_running_delayed_and_dead_and_refuses_unknown_ids() {
    let root = zkq_testkit::unique_root("admin-job-show");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let queue = QueueConfig {
        partitions: 4,
        priorities: 2,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &queue).await.unwrap();
    // Many neighbours, so that finding one means telling it from others by name.
    let batch: Vec<NewJob> = (0..500).map(|i| NewJob::new("other", format!("n{i}"))).collect();
    producer.enqueue_batch("q", batch).await.unwrap();
    let ready = producer
        .enqueue(
            "q",
            NewJob::new("report", "the payload")
                .priority(1)
                .header("team", "ops")
                .lock_key("acct-1"),
        )
        .await
        .unwrap()
        .to_string();
    let delayed = producer
        .enqueue(
            "q",
            NewJob::new("report", "later").delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap()
        .to_string();

    let shown = admin_json(&root, &["job", "show", &ready]);
    assert_eq!(shown["state"], "ready");
    assert_eq!(shown["queue"], "q");
    assert_eq!(shown["kind"], "report");
    assert_eq!(shown["priority"], 1);
    assert_eq!(shown["attempts"], 0);
    assert_eq!(shown["headers"]["team"], "ops");
    assert_eq!(shown["lock_key"], "acct-1");
    assert_eq!(shown["payload_preview"], "the payload");
    let human = admin(&root, &["job", "show", &ready]);
    assert_eq!(human.status.code(), Some(0));
    assert!(
        text(&human.stdout).contains("state:         ready"),
        "{}",
        text(&human.stdout)
    );

    // Two jobs whose ids share the fingerprint in their znode names: each is told by its record.
    let twins = [
        "67e55044-0000-4000-8000-000000000001",
        "67e55044-0000-4000-8000-000000000002",
    ];
    for (i, twin) in twins.iter().enumerate() {
        let id = zkq::JobId(twin.parse().unwrap());
        producer
            .enqueue("q", NewJob::new("other", format!("twin {i}")).with_id(id))
            .await
            .unwrap();
    }
    for (i, twin) in twins.iter().enumerate() {
        let shown = admin_json(&root, &["job", "show", twin]);
        assert_eq!(shown["id"], *twin);
        assert_eq!(shown["payload_preview"], format!("twin {i}"));
    }

    let shown = admin_json(&root, &["job", "show", &delayed]);
    assert_eq!(shown["state"], "delayed");
    let due = shown["due_at_ms"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        due > now + 3_500_000 && due < now + 3_700_000,
        "due {due}, now {now}"
    );

    // Running: a worker holds it while its handler waits.
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let worker = Worker::new(zk(), &root, config("q"))
        .unwrap()
        .handle("report", move |ctx: JobContext| {
            let started = started_tx.clone();
            let mut release = release.clone();
            async move {
                let _ = started.send(ctx.job.id.to_string());
                let _ = release.wait_for(|r| *r).await;
                Outcome::dead("given up")
            }
        })
        .unwrap()
        .handle("other", |_ctx: JobContext| async { Outcome::Done })
        .unwrap();
    let worker_id = worker.id().to_string();
    let (stop, handle) = spawn(worker);
    let first = tokio::time::timeout(PATIENCE, started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ready);
    let shown = admin_json(&root, &["job", "show", &ready]);
    assert_eq!(shown["state"], "running", "{shown}");
    assert_eq!(shown["worker"], worker_id.as_str());
    assert_eq!(shown["running_attempt"], 1);

    // Dead, once the handler gives up.
    release_tx.send(true).unwrap();
    let shown = eventually("the job dead", || {
        let shown = admin_json(&root, &["job", "show", &ready]);
        (shown["state"] == "dead").then_some(shown)
    })
    .await;
    assert_eq!(shown["errors"][0]["message"], "given up");
    let _ = stop.send(());
    handle.await.unwrap();

    // Unknown ids: a UUID no queue holds, and something that is no id at all.
    let unknown = uuid_like();
    for id in [unknown.as_str(), "not-a-job-id"] {
        let out = admin(&root, &["job", "show", id]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains("no job with id"),
            "{}",
            text(&out.stderr)
        );
        let out = admin(&root, &["job", "cancel", id]);
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out.stderr).contains("no job with id"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = admin(&root, &["job", "show"]);
    assert_eq!(out.status.code(), Some(2), "a missing id is a usage error");
    producer.close().await;
}

/// A fresh id that no job has.
fn uuid_like() -> String {
    zkq::JobId::new().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_ready_and_delayed_jobs_makes_dead_letters_that_retry_runs_again() {
    let root = zkq_testkit::unique_root("admin-job-cancel-waiting");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    let ready = producer
        .enqueue("q", NewJob::new("k", "r"))
        .await
        .unwrap()
        .to_string();
    let delayed = producer
        .enqueue("q", NewJob::new("k", "d").delay(Duration::from_secs(3600)))
        .await
        .unwrap()
        .to_string();
    for id in [&ready, &delayed] {
        let out = admin_json(&root, &["job", "cancel", id]);
        assert_eq!(out["result"], "cancelled", "{out}");
        let shown = admin_json(&root, &["job", "show", id]);
        assert_eq!(shown["state"], "dead");
        assert_eq!(shown["errors"][0]["message"], "cancelled");
    }
    let again = admin_json(&root, &["job", "cancel", &ready]);
    assert_eq!(again["result"], "already dead");
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    assert_eq!(stats["queues"][0]["ready"][0], 0);
    assert_eq!(stats["queues"][0]["delayed"], 0);
    assert_eq!(stats["queues"][0]["dead"], 2);

    // Retried, they run: same ids, first attempt.
    admin_json(&root, &["dead", "retry", &ready, &delayed]);
    let (runs_tx, mut runs) = mpsc::unbounded_channel();
    let worker = Worker::new(zk(), &root, config("q"))
        .unwrap()
        .handle("k", move |ctx: JobContext| {
            let runs = runs_tx.clone();
            async move {
                let _ = runs.send((ctx.job.id.to_string(), ctx.job.attempt));
                Outcome::Done
            }
        })
        .unwrap();
    let (stop, handle) = spawn(worker);
    let mut ran = Vec::new();
    for _ in 0..2 {
        ran.push(
            tokio::time::timeout(PATIENCE, runs.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    ran.sort();
    let mut expected = vec![(ready.clone(), 1), (delayed.clone(), 1)];
    expected.sort();
    assert_eq!(ran, expected);
    let _ = stop.send(());
    handle.await.unwrap();
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_command_job_stops_its_process_and_it_is_not_retried() {
    let root = zkq_testkit::unique_root("admin-job-cancel-running");
    let tempdir = tempfile::tempdir().unwrap();
    let dir = tempdir.path();
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    let id = producer
        .enqueue("q", NewJob::new("k", "x").max_attempts(5))
        .await
        .unwrap()
        .to_string();
    // Each start appends a line; the command's pid goes to a file; then it sleeps and ignores
    // SIGTERM, so that only the SIGKILL after the stop grace ends it.
    let command = format!(
        "echo start >> {d}/runs; echo $$ > {d}/pid; trap '' TERM; sleep 600 & wait",
        d = dir.display()
    );
    let worker = Worker::new(zk(), &root, config("q"))
        .unwrap()
        .handle("k", CommandHandler::new(command))
        .unwrap();
    let (stop, handle) = spawn(worker);
    let pid: i32 = eventually("the command started", || {
        std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()
    })
    .await;
    assert!(alive(pid));
    assert_eq!(admin_json(&root, &["job", "show", &id])["state"], "running");

    let cancelled = admin_json(&root, &["job", "cancel", &id]);
    assert_eq!(cancelled["result"], "cancelled", "{cancelled}");
    assert_eq!(
        cancelled["stopped"], true,
        "the worker confirmed the stop: {cancelled}"
    );
    assert!(
        !alive(pid),
        "the command's process {pid} is gone once cancel returns"
    );

    let shown = admin_json(&root, &["job", "show", &id]);
    assert_eq!(shown["state"], "dead");
    assert_eq!(shown["attempts"], 1);
    let errors = shown["errors"].as_array().unwrap();
    assert_eq!(errors.last().unwrap()["message"], "cancelled");
    // Not retried: with attempts left and a worker idle, it does not run again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = std::fs::read_to_string(dir.join("runs")).unwrap();
    assert_eq!(runs.lines().count(), 1, "ran once: {runs:?}");
    assert_eq!(admin_json(&root, &["job", "show", &id])["state"], "dead");
    let _ = stop.send(());
    let summary = handle.await.unwrap();
    assert_eq!(summary.cancelled, 1, "{summary:?}");
    assert_eq!(
        (summary.retried, summary.dead, summary.done),
        (0, 0, 0),
        "{summary:?}"
    );
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_kind_a_worker_does_not_run_are_left_to_workers_that_do_and_stats_counts_the_orphans() {
    let root = zkq_testkit::unique_root("admin-kinds");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let queue = QueueConfig {
        partitions: 4,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &queue).await.unwrap();
    let (runs_tx, mut runs) = mpsc::unbounded_channel();
    let mut stops = Vec::new();
    for kind in ["a", "b"] {
        let runs_tx = runs_tx.clone();
        let worker = Worker::new(zk(), &root, config("q"))
            .unwrap()
            .handle(kind, move |ctx: JobContext| {
                let runs = runs_tx.clone();
                let me = kind;
                async move {
                    let _ = runs.send((me, ctx.job.kind.clone(), ctx.job.attempt, ctx.job.id));
                    Outcome::Done
                }
            })
            .unwrap();
        stops.push(spawn(worker));
    }
    // Both workers own partitions before jobs arrive: each sees jobs of the other's kind.
    let workers = eventually("two workers own partitions", || {
        let w = admin_json(&root, &["workers"]);
        let owning = w
            .as_array()?
            .iter()
            .filter(|w| w["partitions"]["q"].as_array().is_some_and(|p| p.len() == 4))
            .count();
        (owning == 2).then_some(w)
    })
    .await;
    assert_eq!(workers.as_array().unwrap().len(), 2);

    let mut jobs = Vec::new();
    for i in 0..40 {
        jobs.push(NewJob::new(if i % 2 == 0 { "a" } else { "b" }, format!("{i}")));
    }
    for i in 0..7 {
        jobs.push(NewJob::new("c", format!("orphan {i}")));
    }
    producer.enqueue_batch("q", jobs).await.unwrap();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..40 {
        let (worker, kind, attempt, id) = tokio::time::timeout(PATIENCE, runs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            worker,
            kind.as_str(),
            "a job of kind {kind} ran on the {worker} worker"
        );
        assert_eq!(attempt, 1);
        assert!(seen.insert(id), "{id} ran twice");
    }
    // The orphans wait, no attempt used, counted by stats under their kind.
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    let q = &stats["queues"][0];
    assert_eq!(q["dead"], 0, "{stats}");
    assert_eq!(q["ready"][0], 7, "{stats}");
    assert_eq!(
        q["unhandled"],
        serde_json::json!([{ "kind": "c", "ready": 7 }]),
        "{stats}"
    );
    let human = admin(&root, &["stats"]);
    assert!(
        text(&human.stdout).contains("q: 7 ready jobs of kind \"c\", which no live worker runs"),
        "{}",
        text(&human.stdout)
    );
    let c_jobs = admin_json(&root, &["dead", "list"]);
    assert_eq!(c_jobs, serde_json::json!([]));
    assert!(runs.try_recv().is_err(), "nothing else ran");

    // A worker that runs every kind takes them: nothing is unhandled any more.
    let catch_all = Worker::new(zk(), &root, config("q"))
        .unwrap()
        .handle_any(move |ctx: JobContext| {
            let runs = runs_tx.clone();
            async move {
                let _ = runs.send(("*", ctx.job.kind.clone(), ctx.job.attempt, ctx.job.id));
                Outcome::Done
            }
        });
    stops.push(spawn(catch_all));
    for _ in 0..7 {
        let (worker, kind, attempt, _) = tokio::time::timeout(PATIENCE, runs.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((worker, kind.as_str(), attempt), ("*", "c", 1));
    }
    let stats = admin_json(&root, &["stats", "--queue", "q"]);
    assert_eq!(stats["queues"][0]["unhandled"], serde_json::json!([]));
    for (stop, handle) in stops {
        let _ = stop.send(());
        handle.await.unwrap();
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_cancelled_attempt_is_still_stopping_is_not_retried() {
    use zkq::zookeeper_client as zk;
    let root = zkq_testkit::unique_root("admin-job-stopping");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    producer.create_queue("q", &QueueConfig::default()).await.unwrap();
    let stopping = producer
        .enqueue("q", NewJob::new("k", "s"))
        .await
        .unwrap()
        .to_string();
    let other = producer
        .enqueue("q", NewJob::new("k", "o"))
        .await
        .unwrap()
        .to_string();
    for id in [&stopping, &other] {
        assert_eq!(admin_json(&root, &["job", "cancel", id])["result"], "cancelled");
    }
    // A stop notice its worker has not taken yet, as `job cancel` leaves for a running job.
    let client = zk::Client::connect(&zkq_testkit::shared().connect_string())
        .await
        .unwrap();
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let _ = client.create(&format!("{root}/stops"), b"", &options).await;
    let notice = format!("{root}/stops/{stopping}-0000000001");
    client.create(&notice, b"", &options).await.unwrap();

    let out = admin(&root, &["dead", "retry", &stopping]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("has not confirmed the attempt stopped"),
        "{}",
        text(&out.stderr)
    );
    let all = admin_json(&root, &["dead", "retry", "--all"]);
    assert_eq!(
        all["retried"],
        serde_json::json!([other]),
        "only the other job moves"
    );
    assert_eq!(admin_json(&root, &["job", "show", &stopping])["state"], "dead");

    // Once the worker took the notice, it can be retried.
    client.delete(&notice, None).await.unwrap();
    let retried = admin_json(&root, &["dead", "retry", &stopping]);
    assert_eq!(retried["retried"], serde_json::json!([stopping]));
    producer.close().await;
}

//! The job lifecycle: delayed jobs, retries, dead letters, timeouts.

use std::time::Duration;

use zkq::{CommandHandler, Job, NewJob, Outcome, QueueConfig};
use zkq_tests::{count_ready, recording, small_queue, spawn_worker, take, wait_for_node, within, Env};

async fn read_dead(env: &Env, queue: &str, id: zkq::JobId) -> Job {
    let client = env.client().await;
    let path = format!("{}/queues/{queue}/dead/{id}", env.root);
    wait_for_node(&client, &path).await;
    let (data, _) = client.get_data(&path).await.unwrap();
    Job::decode(&path, &data).expect("dead letter is a job record")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_does_not_run_before_its_time() {
    let env = Env::new("delayed");
    let producer = env.producer_for("later", &small_queue()).await;
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("later", 2))
            .handle("k", handler)
            .unwrap(),
    );

    let delay = Duration::from_millis(1500);
    let before = zkq_tests::now_ms();
    producer
        .enqueue("later", NewJob::new("k", "delayed").delay(delay))
        .await
        .unwrap();
    producer.enqueue("later", NewJob::new("k", "now")).await.unwrap();
    let runs = take(&mut runs, 2).await;
    assert_eq!(
        runs[0].text(),
        "now",
        "the immediate job is not held back by the delayed one"
    );
    assert_eq!(runs[1].text(), "delayed");
    let waited = runs[1].started_ms - before;
    assert!(
        waited >= delay.as_millis() as u64,
        "ran after {waited} ms, before its delay of {delay:?}"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_and_retries_are_promoted_at_their_due_time_not_at_the_next_look() {
    // The leader looks at every queue only every 10 minutes here: after its first look, jobs can
    // be promoted on time only from what its watches tell it.
    let env = Env::new("due");
    let producer = env.producer_for("q", &small_queue()).await;
    let (handler, mut runs) = recording(|run| {
        if run.text() == "flaky" && run.attempt == 1 {
            Outcome::retry("once")
        } else {
            Outcome::Done
        }
    });
    let mut config = env.worker_config("q", 2);
    config.queues.push("q2".into());
    config.scheduling.promote_interval = Duration::from_secs(600);
    let (stop, _h) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    producer.enqueue("q", NewJob::new("k", "started")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "started");
    // The leader's first look is over once the fleet runs jobs: wait a little more for it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let delay = Duration::from_millis(1500);
    let before = zkq_tests::now_ms();
    producer
        .enqueue("q", NewJob::new("k", "delayed").delay(delay))
        .await
        .unwrap();
    // A retry: the worker writes the delayed entry (20 ms of backoff).
    producer.enqueue("q", NewJob::new("k", "flaky")).await.unwrap();
    // A queue made after the first look (the queues folder is watched too).
    producer
        .enqueue("q2", NewJob::new("k", "new queue").delay(delay))
        .await
        .unwrap();
    let mut seen = take(&mut runs, 4).await;
    seen.sort_by_key(|r| (r.text(), r.attempt));
    let described: Vec<(String, u32)> = seen.iter().map(|r| (r.text(), r.attempt)).collect();
    assert_eq!(
        described,
        vec![
            ("delayed".to_string(), 1),
            ("flaky".to_string(), 1),
            ("flaky".to_string(), 2),
            ("new queue".to_string(), 1)
        ]
    );
    for run in seen.iter().filter(|r| r.text() != "flaky") {
        let waited = run.started_ms - before;
        assert!(
            waited >= delay.as_millis() as u64,
            "{} ran {waited} ms after enqueue",
            run.text()
        );
    }
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_job_is_claimed_ahead_of_its_due_time_and_started_at_it() {
    // Promoted 2 s ahead here (250 ms by default): its move and its claim are over well before
    // its due time, and the worker holds it, claimed, until then.
    let env = Env::new("ahead");
    let producer = env.producer_for("q", &small_queue()).await;
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let mut config = env.worker_config("q", 2);
    config.scheduling.promote_ahead = Duration::from_secs(2);
    let (stop, _h) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    producer.enqueue("q", NewJob::new("k", "started")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "started");

    let admin = zkq::Admin::connect(&env.zk, &env.root).await.unwrap();
    let delay = Duration::from_secs(4);
    let before = zkq_tests::now_ms();
    producer
        .enqueue("q", NewJob::new("k", "delayed").delay(delay))
        .await
        .unwrap();
    // Its claim is looked for until it runs.
    let (claimed_at, run) = within(async {
        let mut claimed_at = None;
        loop {
            if let Ok(run) = runs.try_recv() {
                return (claimed_at, run);
            }
            if claimed_at.is_none() && admin.stats(Some("q")).await.unwrap().queues[0].running > 0 {
                claimed_at = Some(zkq_tests::now_ms());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let claimed_at = claimed_at.expect("no claim seen before it ran");
    assert_eq!(run.text(), "delayed");
    assert!(run.ready_at_ms >= before + delay.as_millis() as u64);
    assert!(
        claimed_at < run.ready_at_ms,
        "claimed {} ms after its due time",
        claimed_at - run.ready_at_ms
    );
    assert!(
        run.started_ms >= run.ready_at_ms,
        "started {} ms before its due time",
        run.ready_at_ms - run.started_ms
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_jobs_are_promoted_on_time_after_the_leader_reconnects() {
    // The client does not set persistent watches again after a reconnect (zookeeper-client
    // 0.11.2). A lost connection ends the leader's term, and the next term watches afresh;
    // without that, new delayed jobs would wait for the next look (10 minutes here).
    let env = Env::new("due-reconnect");
    let producer = env.producer_for("q", &small_queue()).await;
    let proxy = zkq_testkit::Proxy::start(&env.zk.address).unwrap();
    let mut through_proxy = env.zk.clone();
    through_proxy.address = proxy.address();
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let mut config = env.worker_config("q", 2);
    config.scheduling.promote_interval = Duration::from_secs(600);
    let worker = zkq::Worker::new(through_proxy, &env.root, config)
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, _h) = spawn_worker(worker);
    producer.enqueue("q", NewJob::new("k", "started")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "started");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The connection drops; the session lives on. A job run after it shows the worker is back.
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer.enqueue("q", NewJob::new("k", "back")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "back");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let delay = Duration::from_millis(1000);
    let before = zkq_tests::now_ms();
    producer
        .enqueue("q", NewJob::new("k", "delayed").delay(delay))
        .await
        .unwrap();
    let run = take(&mut runs, 1).await.remove(0);
    assert_eq!(run.text(), "delayed");
    assert!(run.started_ms - before >= delay.as_millis() as u64);
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_is_retried_and_succeeds_with_its_attempts_counted() {
    let env = Env::new("retry");
    let producer = env.producer_for("flaky", &small_queue()).await;
    let (handler, mut runs) = recording(|run| {
        if run.attempt < 3 {
            Outcome::retry(format!("fail {}", run.attempt))
        } else {
            Outcome::Done
        }
    });
    let (stop, handle) = spawn_worker(
        env.worker(env.worker_config("flaky", 2))
            .handle("k", handler)
            .unwrap(),
    );
    let id = producer.enqueue("flaky", NewJob::new("k", "x")).await.unwrap();
    let runs = take(&mut runs, 3).await;
    assert!(runs.iter().all(|r| r.id == id));
    assert_eq!(runs.iter().map(|r| r.attempt).collect::<Vec<_>>(), vec![1, 2, 3]);
    // Retries wait their backoff: never sooner than the policy's base delay after the failure.
    assert!(runs[1].started_ms >= runs[0].started_ms + small_queue().retry.base_ms * 8 / 10);
    drop(stop);
    let summary = handle.await.unwrap().unwrap();
    assert_eq!((summary.done, summary.retried, summary.dead), (1, 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_dead_lettered_after_max_attempts_with_its_error_history() {
    let env = Env::new("dead");
    let config = QueueConfig {
        max_attempts: 3,
        ..small_queue()
    };
    let producer = env.producer_for("doomed", &config).await;
    let (handler, mut runs) = recording(|run| Outcome::retry(format!("boom {}", run.attempt)));
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("doomed", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let id = producer
        .enqueue("doomed", NewJob::new("k", "payload"))
        .await
        .unwrap();
    assert_eq!(
        take(&mut runs, 3)
            .await
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let dead = read_dead(&env, "doomed", id).await;
    assert_eq!(dead.id, id);
    assert_eq!(dead.payload, b"payload");
    assert_eq!(dead.attempt, 3);
    let history: Vec<(u32, &str)> = dead
        .errors
        .iter()
        .map(|e| (e.attempt, e.message.as_str()))
        .collect();
    assert_eq!(history, vec![(1, "boom 1"), (2, "boom 2"), (3, "boom 3")]);
    // No fourth run.
    assert!(runs.try_recv().is_err());
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_outcome_skips_the_remaining_attempts() {
    let env = Env::new("dead-now");
    let producer = env.producer_for("q", &small_queue()).await;
    let (handler, mut runs) = recording(|_| Outcome::dead("bad input"));
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("q", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let id = producer
        .enqueue("q", NewJob::new("k", "x").max_attempts(10))
        .await
        .unwrap();
    take(&mut runs, 1).await;
    let dead = read_dead(&env, "q", id).await;
    assert_eq!((dead.attempt, dead.errors.len()), (1, 1));
    drop(stop);
}

/// Whether a process with this pid exists.
fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_its_timeout_is_stopped_and_retried() {
    let env = Env::new("timeout");
    let config = QueueConfig {
        max_attempts: 2,
        ..small_queue()
    };
    let producer = env.producer_for("slow", &config).await;
    let dir = tempfile::tempdir().unwrap();
    // Each attempt records its pid and its attempt number, then outlives its timeout by far,
    // in a child process of the shell (so the whole process group must be stopped).
    let script = format!(
        "echo $ZKQ_ATTEMPT >> {d}/attempts; sleep 60 & echo $! > {d}/pid-$ZKQ_ATTEMPT; wait; touch {d}/finished",
        d = dir.path().display()
    );
    let mut wc = env.worker_config("slow", 1);
    wc.stop_grace = Duration::from_millis(300);
    let worker = env
        .worker(wc)
        .handle("sleepy", CommandHandler::new(script))
        .unwrap();
    let (stop, _h) = spawn_worker(worker);
    let id = producer
        .enqueue(
            "slow",
            NewJob::new("sleepy", "").timeout(Duration::from_millis(700)),
        )
        .await
        .unwrap();
    let dead = read_dead(&env, "slow", id).await;
    assert_eq!(dead.attempt, 2, "timed out twice, then dead-lettered");
    assert!(
        dead.errors
            .iter()
            .all(|e| e.message.starts_with("timed out after 700ms")),
        "{:?}",
        dead.errors
    );
    let attempts = std::fs::read_to_string(dir.path().join("attempts")).unwrap();
    assert_eq!(attempts, "1\n2\n");
    for attempt in [1, 2] {
        let pid: i32 = std::fs::read_to_string(dir.path().join(format!("pid-{attempt}")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        within(async {
            while alive(pid) {
                tokio::task::yield_now().await;
            }
        })
        .await;
    }
    assert!(!dir.path().join("finished").exists());
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_gets_its_payload_and_environment_and_its_exit_status_decides() {
    let env = Env::new("exec");
    let config = QueueConfig {
        max_attempts: 1,
        ..small_queue()
    };
    let producer = env.producer_for("cmd", &config).await;
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "cat > {d}/$ZKQ_JOB_ID.in; echo \"$ZKQ_QUEUE $ZKQ_KIND $ZKQ_ATTEMPT $ZKQ_HEADER_TRACE_ID\" > {d}/$ZKQ_JOB_ID.env; \
         test \"$(cat {d}/$ZKQ_JOB_ID.in)\" = ok || {{ echo 'not ok, giving up' >&2; exit 3; }}",
        d = dir.path().display()
    );
    // One at a time, in FIFO order: the good job has finished once the bad one is dead.
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("cmd", 1))
            .handle("sh", CommandHandler::new(script))
            .unwrap(),
    );
    let good = producer
        .enqueue("cmd", NewJob::new("sh", "ok").header("trace-id", "abc-1"))
        .await
        .unwrap();
    let bad = producer.enqueue("cmd", NewJob::new("sh", "nope")).await.unwrap();
    let dead = read_dead(&env, "cmd", bad).await;
    assert_eq!(dead.errors[0].message, "exit status 3: not ok, giving up");
    let envs = std::fs::read_to_string(dir.path().join(format!("{good}.env"))).unwrap();
    assert_eq!(
        envs, "cmd sh 1 abc-1\n",
        "queue, kind, attempt and the trace-id header"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(format!("{good}.in"))).unwrap(),
        "ok"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_leaves_a_process_holding_its_output_still_ends_its_attempt() {
    let env = Env::new("exec-daemon");
    let producer = env.producer_for("cmd", &small_queue()).await;
    let dir = tempfile::tempdir().unwrap();
    // The command exits at once, but leaves a process of its own session (out of its process
    // group) holding its stdout and stderr open for ten minutes.
    let script = format!(
        "setsid sleep 600 & echo $! > {d}/daemon; echo started",
        d = dir.path().display()
    );
    let (stop, handle) = spawn_worker(
        env.worker(env.worker_config("cmd", 1))
            .handle("sh", CommandHandler::new(script))
            .unwrap(),
    );
    producer.enqueue("cmd", NewJob::new("sh", "x")).await.unwrap();
    let client = env.client().await;
    within(async {
        while count_ready(&client, &env.root, "cmd").await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(stop);
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.done, 1, "the attempt ended as done: {summary:?}");
    if let Ok(pid) = std::fs::read_to_string(dir.path().join("daemon")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: kill(2) on the daemon this test's command started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

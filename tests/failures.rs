//! Failures on purpose: a worker whose session ends mid-job, shutdown with jobs in flight,
//! garbage in a job znode.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use zkq::zookeeper_client as zk;
use zkq::{Handler, JobContext, NewJob, Outcome};
use zkq_tests::{count_ready, recording, small_queue, spawn_worker, take, wait_for_node, within, Env, Run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_worker_session_ends_mid_job_runs_again_elsewhere_with_the_attempt_counted() {
    let env = Env::new("session-lost");
    let producer = env.producer_for("q", &small_queue()).await;
    let id = producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();

    // Worker A takes the job and hangs in it; then it "crashes": its task is dropped and its
    // session is left to expire (a detached session is not closed on drop).
    let (started_tx, mut started) = mpsc::unbounded_channel::<(String, u32)>();
    let hang = move |ctx: JobContext| {
        let _ = started_tx.send((ctx.worker_id.clone(), ctx.job.attempt));
        std::future::pending::<Outcome>()
    };
    let a = env
        .worker(env.worker_config("q", 1))
        .detached()
        .handle("k", hang)
        .unwrap();
    let a_id = a.id().to_string();
    let (_stop_a, handle_a) = spawn_worker(a);
    let (worker, attempt) = within(started.recv()).await.unwrap();
    assert_eq!((worker.as_str(), attempt), (a_id.as_str(), 1));
    handle_a.abort();

    // Worker B gets it once A's session has expired and its claim vanished.
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let b = env
        .worker(env.worker_config("q", 1))
        .handle("k", handler)
        .unwrap();
    let b_id = b.id().to_string();
    let (stop_b, handle_b) = spawn_worker(b);
    let run = take(&mut runs, 1).await.remove(0);
    assert_eq!((run.id, run.attempt, run.worker), (id, 2, b_id));
    drop(stop_b);
    assert_eq!(handle_b.await.unwrap().unwrap().done, 1);
    assert_eq!(count_ready(&env.client().await, &env.root, "q").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_running_jobs_and_loses_none() {
    let env = Env::new("graceful");
    let producer = env.producer_for("q", &small_queue()).await;
    let batch: Vec<NewJob> = (0..20).map(|i| NewJob::new("k", format!("{i}"))).collect();
    producer.enqueue_batch("q", batch).await.unwrap();

    // Each job waits for a go signal, so that shutdown surely lands while 4 are running.
    let go = Arc::new(Semaphore::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel::<String>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<String>();
    let gate = go.clone();
    let handler = move |ctx: JobContext| {
        let (gate, started_tx, done_tx) = (gate.clone(), started_tx.clone(), done_tx.clone());
        async move {
            let name = String::from_utf8_lossy(&ctx.job.payload).into_owned();
            let _ = started_tx.send(name.clone());
            gate.acquire().await.expect("gate open").forget();
            let _ = done_tx.send(name);
            Outcome::Done
        }
    };
    let mut config = env.worker_config("q", 4);
    config.shutdown_grace = Duration::from_secs(30);
    let (stop, handle) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    let mut running = Vec::new();
    for _ in 0..4 {
        running.push(within(started.recv()).await.unwrap());
    }
    // The worker stands for scheduler election; it gives up its candidacy once its claim loop
    // has ended on shutdown. Only then are the running jobs let go, so that none of the slots
    // they free can start another job.
    let client = env.client().await;
    let candidates = format!("{}/scheduler/candidates", env.root);
    let candidacy = |present: bool| {
        let (client, candidates) = (&client, &candidates);
        async move {
            while client
                .list_children(candidates)
                .await
                .unwrap_or_default()
                .is_empty()
                == present
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    within(candidacy(true)).await;
    stop.send(()).unwrap();
    within(candidacy(false)).await;
    go.add_permits(100);
    let summary = within(handle).await.unwrap().unwrap();
    assert_eq!(summary.done, 4, "{summary:?}");
    let mut finished = Vec::new();
    while let Ok(name) = done.try_recv() {
        finished.push(name);
    }
    running.sort();
    finished.sort();
    assert_eq!(finished, running, "every job running at shutdown finished");
    assert!(started.try_recv().is_err(), "no job started after shutdown began");

    // Nothing lost: the other 16 are still ready, and a new worker runs them once each.
    assert_eq!(count_ready(&client, &env.root, "q").await, 16);
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("q", 4))
            .handle("k", handler)
            .unwrap(),
    );
    let mut rest: Vec<String> = take(&mut runs, 16).await.iter().map(Run::text).collect();
    rest.extend(finished);
    rest.sort_by_key(|s| s.parse::<u32>().unwrap());
    assert_eq!(rest, (0..20).map(|i| i.to_string()).collect::<Vec<_>>());
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_running_after_the_grace_period_is_released_without_using_an_attempt() {
    let env = Env::new("release");
    let producer = env.producer_for("q", &small_queue()).await;
    let id = producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel::<u32>();
    let stuck = move |ctx: JobContext| {
        let _ = started_tx.send(ctx.job.attempt);
        std::future::pending::<Outcome>()
    };
    let mut config = env.worker_config("q", 1);
    config.shutdown_grace = Duration::from_millis(300);
    config.stop_grace = Duration::from_millis(100);
    let (stop, handle) = spawn_worker(env.worker(config).handle("k", stuck).unwrap());
    assert_eq!(within(started.recv()).await, Some(1));
    stop.send(()).unwrap();
    let summary = within(handle).await.unwrap().unwrap();
    assert_eq!((summary.released, summary.done), (1, 0));

    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("q", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let run = take(&mut runs, 1).await.remove(0);
    assert_eq!(
        (run.id, run.attempt),
        (id, 1),
        "the interrupted attempt was not counted"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_job_znode_is_dead_lettered_and_the_worker_keeps_going() {
    let env = Env::new("garbage");
    let producer = env.producer_for("q", &small_queue()).await;
    producer.enqueue("q", NewJob::new("k", "before")).await.unwrap();
    // Someone writes junk into the lane with a plain ZooKeeper client.
    let client = env.client().await;
    let lane = format!("{}/queues/q/p/0/l0", env.root);
    let seq = zkq::zookeeper_client::CreateMode::PersistentSequential
        .with_acls(zkq::zookeeper_client::Acls::anyone_all());
    let (_, s) = client.create(&format!("{lane}/s-"), &[], &seq).await.unwrap();
    client
        .create(&format!("{lane}/s-{s}/j-"), b"\xc1 definitely not a job", &seq)
        .await
        .unwrap();
    producer.enqueue("q", NewJob::new("k", "after")).await.unwrap();

    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _h) = spawn_worker(
        env.worker(env.worker_config("q", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let texts: Vec<String> = take(&mut runs, 2).await.iter().map(Run::text).collect();
    assert_eq!(texts, vec!["before", "after"]);

    let dead_dir = format!("{}/queues/q/dead", env.root);
    let dead = within(async {
        loop {
            let (names, _, watcher) = client.get_and_watch_children(&dead_dir).await.unwrap();
            if let Some(name) = names.first() {
                return name.clone();
            }
            watcher.changed().await;
        }
    })
    .await;
    let path = format!("{dead_dir}/{dead}");
    wait_for_node(&client, &path).await;
    let (data, _) = client.get_data(&path).await.unwrap();
    let job = zkq::Job::decode(&path, &data).unwrap();
    assert_eq!(job.kind, "zkq.undecodable");
    assert_eq!(job.payload, b"\xc1 definitely not a job");
    assert!(
        job.errors[0].message.contains("cannot decode job"),
        "{:?}",
        job.errors
    );
    drop(stop);
}

type Running = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<zkq::Result<zkq::WorkerSummary>>,
);

/// Starts a worker on queue `q` and returns once it has run a job, so it is surely registered.
async fn start_registered(env: &Env, config: zkq::WorkerConfig) -> Running {
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let running = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    env.producer()
        .await
        .enqueue("q", NewJob::new("k", "x"))
        .await
        .unwrap();
    take(&mut runs, 1).await;
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_with_a_live_workers_id_is_refused_with_a_clear_error() {
    let env = Env::new("dup-id");
    let mut config = env.worker_config("q", 1);
    config.id = "twin".into();
    let (stop, _h) = start_registered(&env, config.clone()).await;

    let (handler, _runs) = recording(|_| Outcome::Done);
    let second = env.worker(config).handle("k", handler).unwrap();
    let err = within(second.run(std::future::pending())).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("worker id \"twin\" is already registered by a live worker"),
        "{err}"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_is_registered_and_its_registration_goes_with_it() {
    let env = Env::new("registry");
    let config = env.worker_config("q", 3);
    let id = config.id.clone();
    let (stop, handle) = start_registered(&env, config).await;

    let client = env.client().await;
    let layout = zkq::Layout::new(&env.root).unwrap();
    let workers = zkq::inspect::workers(&client, &layout).await.unwrap();
    assert_eq!(workers.len(), 1);
    let me = &workers[0];
    assert_eq!(
        (me.id.as_str(), me.queues.as_slice(), me.concurrency),
        (id.as_str(), &["q".to_string()][..], 3)
    );
    assert_eq!(me.pid, std::process::id());
    assert!(!me.host.is_empty() && !me.version.is_empty() && me.started_at_ms > 0);
    let (_, stat) = client.get_data(&layout.worker(&id)).await.unwrap();
    assert_ne!(stat.ephemeral_owner, 0, "registration is ephemeral");

    drop(stop);
    within(handle).await.unwrap().unwrap();
    assert!(zkq::inspect::workers(&client, &layout).await.unwrap().is_empty());
}

/// Lane watches are persistent watches, which the client does not set again on a new connection.
/// After ZooKeeper restarts under a running worker, a job enqueued later is still found by a
/// watch: the poll fallback is two minutes here, far beyond the wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_zookeeper_restarts_new_jobs_are_still_found_by_watch() {
    let server = zkq_testkit::Ensemble::standalone().expect("zookeeper starts");
    let mut env = Env::on(&server, "zk-restart");
    // Sessions outlive the restart.
    env.zk.session_timeout = Duration::from_secs(20);
    let producer = env.producer_for("q", &small_queue()).await;
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let config = zkq::WorkerConfig {
        poll_interval: Duration::from_secs(120),
        ..env.worker_config("q", 4)
    };
    let (stop, handle) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    producer.enqueue("q", NewJob::new("k", "before")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "before");

    server.member(0).restart().expect("zookeeper restarts");
    server
        .wait_ready(Duration::from_secs(30))
        .expect("zookeeper serves");
    // Once the worker has run a job enqueued after the restart, it has reconnected and listed
    // its lanes again; from then on only a watch can tell it about a new job in time.
    enqueue_until_accepted(&producer, "probe").await;
    let probe = take(&mut runs, 1).await.remove(0);
    assert_eq!(probe.text(), "probe");
    enqueue_until_accepted(&producer, "after").await;
    let after = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let run = take(&mut runs, 1).await.remove(0);
            if run.text() == "after" {
                return run;
            }
        }
    })
    .await
    .expect("the job enqueued after the restart ran within 20 s, by watch");
    assert_eq!(after.attempt, 1);
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// Enqueues a job, trying again while the producer's session reconnects. A try whose outcome was
/// unknown may have enqueued it too.
async fn enqueue_until_accepted(producer: &zkq::Producer, payload: &str) {
    within(async {
        while let Err(e) = producer.enqueue("q", NewJob::new("k", payload)).await {
            eprintln!("enqueue {payload}: {e}; trying again");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_effect_guarded_by_its_fence_is_rejected_once_its_session_is_lost() {
    let env = Env::new("fenced-effect");
    let producer = env.producer_for("q", &small_queue()).await;
    producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();
    let client = env.client().await;
    let effect = format!("{}/effect", env.root);
    client
        .create(
            &effect,
            b"none",
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();
    // The guarded effect: write the token into `effect`, only while the fence holds.
    let write = |fence: zkq::Fence| {
        let (client, effect) = (client.clone(), effect.clone());
        async move {
            let mut multi = client.new_multi_writer();
            fence.check(&mut multi).unwrap();
            multi
                .add_set_data(&effect, fence.token().to_string().as_bytes(), None)
                .unwrap();
            multi.commit().await
        }
    };

    // Worker A reaches ZooKeeper through a proxy the test can cut. Its handler hands its fence
    // out and hangs, like a handler whose process froze.
    let proxy = zkq_testkit::Proxy::start(&env.zk.address).unwrap();
    let (fences_tx, mut fences) = mpsc::unbounded_channel::<zkq::Fence>();
    let hand_out = move |ctx: JobContext| {
        let _ = fences_tx.send(ctx.fence.clone());
        std::future::pending::<Outcome>()
    };
    let mut through_proxy = env.zk.clone();
    through_proxy.address = proxy.address();
    let a = zkq::Worker::new(through_proxy, &env.root, env.worker_config("q", 1))
        .unwrap()
        .handle("k", hand_out)
        .unwrap();
    let (_stop_a, _handle_a) = spawn_worker(a);
    let fence = within(fences.recv()).await.unwrap();
    assert!(fence.is_valid());
    write(fence.clone())
        .await
        .expect("a guarded write succeeds while the claim stands");

    proxy.partition();
    within(async {
        while fence.is_valid() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // The session expires; worker B runs the job's next attempt.
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (tokens_tx, mut tokens) = mpsc::unbounded_channel::<i64>();
    let b = env
        .worker(env.worker_config("q", 1))
        .handle("k", move |ctx: JobContext| {
            let _ = tokens_tx.send(ctx.fence.token());
            handler.run(ctx)
        })
        .unwrap();
    let (stop_b, handle_b) = spawn_worker(b);
    let run = take(&mut runs, 1).await.remove(0);
    assert_eq!(run.attempt, 2);
    let next_token = within(tokens.recv()).await.unwrap();
    assert!(
        next_token > fence.token(),
        "tokens grow: {next_token} after {}",
        fence.token()
    );

    // The first attempt's effect, attempted now, is rejected, and changes nothing.
    let stale = write(fence.clone()).await;
    assert!(stale.is_err(), "a stale attempt's guarded write went through");
    let (data, _) = client.get_data(&effect).await.unwrap();
    assert_eq!(data, fence.token().to_string().as_bytes());
    proxy.heal();
    let _ = stop_b.send(());
    handle_b.await.unwrap().unwrap();
}

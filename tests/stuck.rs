//! No job lost or stuck: lost replies, jobs near the size limits, far-future delays and a
//! corrupt queue must neither strand a job nor hold up the others.

use std::collections::HashSet;
use std::time::Duration;

use zkq::limits::{MAX_DELAY, MAX_ERROR_MESSAGE_BYTES, MAX_PAYLOAD_BYTES};
use zkq::zookeeper_client as zk;
use zkq::{NewJob, Outcome, QueueConfig, ZkConfig};
use zkq_testkit::Proxy;
use zkq_tests::{count_ready, recording, small_queue, spawn_worker, take, within, Env, Run};

/// Receives runs until every one of `ids` ran at least once.
async fn until_all_ran(runs: &mut tokio::sync::mpsc::UnboundedReceiver<Run>, ids: &HashSet<zkq::JobId>) {
    let mut seen = HashSet::new();
    while seen.len() < ids.len() {
        match tokio::time::timeout(zkq_tests::PATIENCE, runs.recv()).await {
            Ok(Some(run)) => {
                seen.insert(run.id);
            }
            _ => panic!("only {} of {} jobs ran", seen.len(), ids.len()),
        }
    }
}

/// A test queue that takes the largest payload any queue can.
fn largest_payloads() -> QueueConfig {
    QueueConfig {
        max_payload_bytes: MAX_PAYLOAD_BYTES as u32,
        ..small_queue()
    }
}

/// Creates a persistent znode by hand, as an operator or another tool could.
async fn create_persistent(client: &zk::Client, path: &str, data: &[u8]) {
    client
        .create(
            path,
            data,
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
        .unwrap();
}

async fn claims_left(client: &zk::Client, root: &str, queue: &str, partitions: u32) -> Vec<String> {
    let mut left = Vec::new();
    for p in 0..partitions {
        let dir = format!("{root}/queues/{queue}/p/{p}/claims");
        left.extend(client.list_children(&dir).await.unwrap_or_default());
    }
    left
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_and_acks_whose_replies_are_lost_with_the_connection_strand_no_job() {
    let env = Env::new("cut-claims");
    let producer = env.producer_for("q", &small_queue()).await;
    let mut ids = HashSet::new();
    for _ in 0..6 {
        let batch: Vec<NewJob> = (0..500).map(|i| NewJob::new("k", format!("{i}"))).collect();
        ids.extend(producer.enqueue_batch("q", batch).await.unwrap());
    }

    // The worker reaches ZooKeeper through a proxy that drops its connections every 150 ms:
    // its session survives each cut, and whatever claim or ack was in flight loses its reply.
    let proxy = std::sync::Arc::new(Proxy::start(&env.zk.address).unwrap());
    let zk = ZkConfig {
        address: proxy.address(),
        ..env.zk.clone()
    };
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = zkq::Worker::new(zk, &env.root, env.worker_config("q", 32))
        .unwrap()
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    let cuts = proxy.clone();
    let cutter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(150)).await;
            cuts.cut();
        }
    });
    until_all_ran(&mut runs, &ids).await;
    cutter.abort();

    let client = env.client().await;
    within(async {
        while count_ready(&client, &env.root, "q").await > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert_eq!(
        claims_left(&client, &env.root, "q", 1).await,
        Vec::<String>::new()
    );
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// Three jobs of 400 KB: together far over one request, each well within the queue's limit.
fn large_jobs(delay: Option<Duration>) -> Vec<NewJob> {
    (0..3u8)
        .map(|i| {
            let job = NewJob::new("k", vec![i; 400 * 1024]);
            match delay {
                Some(d) => job.delay(d),
                None => job,
            }
        })
        .collect()
}

/// Enqueues [`large_jobs`] one by one on a fresh root and waits until a worker ran all three.
async fn run_large_jobs(name: &str, delay: Option<Duration>) {
    let env = Env::new(name);
    let producer = env.producer_for("q", &small_queue()).await;
    let mut ids = HashSet::new();
    for job in large_jobs(delay) {
        ids.insert(producer.enqueue("q", job).await.unwrap());
    }
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = env
        .worker(env.worker_config("q", 8))
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    until_all_ran(&mut runs, &ids).await;
    drop(stop);
    assert_eq!(handle.await.unwrap().unwrap().done, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_jobs_are_claimed_in_requests_that_fit() {
    run_large_jobs("large-claims", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_delayed_jobs_are_promoted_in_requests_that_fit() {
    run_large_jobs("large-promotions", Some(Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_a_queue_accepts_is_retried_and_dead_lettered_with_its_history() {
    let env = Env::new("largest");
    let producer = env.producer_for("q", &largest_payloads()).await;
    // Payloads at the queue's limit, with ever larger headers: those the queue accepts must
    // live their whole life (claims, retries with their error history, a dead letter).
    let mut accepted = Vec::new();
    for kib in [4, 16, 50] {
        let job = NewJob::new("k", vec![7u8; MAX_PAYLOAD_BYTES])
            .max_attempts(3)
            .header("trace", "t".repeat(kib * 1024 - 16));
        match producer.enqueue("q", job).await {
            Ok(id) => accepted.push(id),
            Err(e) => assert!(e.to_string().contains("headers"), "{e}"),
        }
    }
    assert!(accepted.len() >= 2, "a job with 16 KiB of headers is refused");

    // Every attempt fails with the longest error message kept.
    let error = "e".repeat(MAX_ERROR_MESSAGE_BYTES);
    let (handler, mut runs) = recording(move |_| Outcome::retry(error.clone()));
    let worker = env
        .worker(env.worker_config("q", 2))
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    let runs = take(&mut runs, 3 * accepted.len()).await;
    for id in &accepted {
        let attempts: Vec<u32> = runs.iter().filter(|r| r.id == *id).map(|r| r.attempt).collect();
        assert_eq!(attempts, [1, 2, 3], "{id}");
    }
    let client = env.client().await;
    for id in &accepted {
        let path = format!("{}/queues/q/dead/{id}", env.root);
        zkq_tests::wait_for_node(&client, &path).await;
        let (data, _) = client.get_data(&path).await.unwrap();
        let dead = zkq::Job::decode(&path, &data).unwrap();
        assert_eq!(dead.payload.len(), MAX_PAYLOAD_BYTES);
        assert_eq!(dead.errors.len(), 3);
    }
    assert!(claims_left(&client, &env.root, "q", 1).await.is_empty());
    drop(stop);
    let summary = handle.await.unwrap().unwrap();
    assert_eq!(summary.dead as usize, accepted.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_over_the_maximum_is_refused_and_a_far_future_bucket_holds_up_nothing() {
    let env = Env::new("far-future");
    let producer = env.producer_for("q", &small_queue()).await;
    for delay in [
        MAX_DELAY + Duration::from_secs(86_400),
        Duration::from_secs(600_000_000 * 365 * 86_400),
    ] {
        let err = producer
            .enqueue("q", NewJob::new("k", "x").delay(delay))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("over the maximum"), "{err}");
    }
    producer
        .enqueue("q", NewJob::new("k", "far").delay(MAX_DELAY))
        .await
        .unwrap();

    // A bucket whose start has more digits than the name's padding (past the year 2286), as an
    // older producer could write: it must not stop promotion of the buckets due before it.
    let client = env.client().await;
    let far = format!("{}/queues/q/delayed/b-99999999960000", env.root);
    create_persistent(&client, &far, &[]).await;
    let soon = producer
        .enqueue("q", NewJob::new("k", "soon").delay(Duration::from_secs(1)))
        .await
        .unwrap();
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = env
        .worker(env.worker_config("q", 2))
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    assert_eq!(take(&mut runs, 1).await[0].id, soon);
    drop(stop);
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_queue_config_holds_up_no_other_queues_rebalancing() {
    let env = Env::new("corrupt-config");
    let config = QueueConfig {
        partitions: 4,
        ..small_queue()
    };
    let producer = env.producer_for("q", &config).await;
    let client = env.client().await;

    // Worker A will crash; B must get its partitions.
    let (handler_a, _runs_a) = recording(|_| Outcome::Done);
    let a = env
        .worker(env.worker_config("q", 4))
        .detached()
        .handle("k", handler_a)
        .unwrap();
    let a_id = a.id().to_string();
    let (_stop_a, handle_a) = spawn_worker(a);
    let (handler_b, mut runs) = recording(|_| Outcome::Done);
    let b = env
        .worker(env.worker_config("q", 4))
        .handle("k", handler_b)
        .unwrap();
    let b_id = b.id().to_string();
    let (stop_b, handle_b) = spawn_worker(b);
    let assignment = format!("{}/scheduler/assignment/q", env.root);
    within(async {
        loop {
            if let Ok((data, _)) = client.get_data(&assignment).await {
                let text = String::from_utf8_lossy(&data);
                if text.contains(&a_id) && text.contains(&b_id) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;

    // A queue whose config is garbage, sorting before q, then A crashes.
    let garbage = format!("{}/queues/gbad", env.root);
    create_persistent(&client, &garbage, b"\xc1\x00garbage").await;
    handle_a.abort();
    let mut ids = HashSet::new();
    let batch: Vec<NewJob> = (0..40).map(|i| NewJob::new("k", format!("{i}"))).collect();
    ids.extend(producer.enqueue_batch("q", batch).await.unwrap());
    until_all_ran(&mut runs, &ids).await;
    drop(stop_b);
    handle_b.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_node_among_the_claims_is_removed_and_its_job_runs() {
    let env = Env::new("stray-claim");
    let producer = env.producer_for("q", &small_queue()).await;
    let id = producer.enqueue("q", NewJob::new("k", "blocked")).await.unwrap();

    // A persistent node with the name of the job's claim, as a hand-made or foreign write
    // would leave: no session's end will ever remove it.
    let client = env.client().await;
    let lane = format!("{}/queues/q/p/0/l0", env.root);
    let segment = client.list_children(&lane).await.unwrap().remove(0);
    let node = client
        .list_children(&format!("{lane}/{segment}"))
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.starts_with("j-"))
        .unwrap();
    let stray = format!("{}/queues/q/p/0/claims/l0.{segment}.{node}", env.root);
    create_persistent(&client, &stray, b"").await;

    let mut config = env.worker_config("q", 2);
    config.scheduling.trim_interval = Duration::from_millis(200);
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = env.worker(config).handle("k", handler).unwrap();
    let (stop, handle) = spawn_worker(worker);
    assert_eq!(take(&mut runs, 1).await[0].id, id);
    // Once acknowledged, nothing is left at the claim's path: not the stray, not the claim.
    within(async {
        while client.check_stat(&stray).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(stop);
    handle.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_ticks_of_a_large_periodic_job_all_fire_in_requests_that_fit() {
    let env = Env::new("cron-large");
    let producer = env.producer_for("q", &largest_payloads()).await;

    // Refused up front: the schedule holds the payload too, and both must fit one request.
    let too_large = zkq::PeriodicJob::new("q", "* * * * * *", NewJob::new("k", vec![b'x'; 600_000])).unwrap();
    let err = producer.schedule("too-large", too_large).await.unwrap_err();
    assert!(err.to_string().contains("does not fit one request"), "{err}");

    // 30 missed ticks of a 100 KB job: about 3 MB, three times what one request holds.
    let mut periodic = zkq::PeriodicJob::new("q", "* * * * * *", NewJob::new("k", vec![b'x'; 100_000]))
        .unwrap()
        .catch_up(zkq::CatchUp::All);
    periodic.created_at_ms = zkq_tests::now_ms() - 30_500;
    producer.schedule("big", periodic).await.unwrap();

    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = env
        .worker(env.worker_config("q", 8))
        .handle("k", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    let ran: HashSet<zkq::JobId> = take(&mut runs, 30).await.into_iter().map(|r| r.id).collect();
    assert_eq!(ran.len(), 30);
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// A job handed out to be claimed and let go without any write (here its claim `multi` fails
/// with `NoAuth`: the partition's claims folder refuses creates) produces no watch event. It is
/// found again at the next poll interval, not at the 5-minute resync, once claims are allowed
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_claim_failed_without_a_lost_race_is_found_again_at_the_poll_interval() {
    let env = Env::new("claim-refused");
    let producer = env.producer_for("q", &small_queue()).await;
    let client = env.client().await;
    let claims = zkq::Layout::new(&env.root).unwrap().claims("q", 0);
    match client
        .create(
            &claims,
            &[],
            &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
        )
        .await
    {
        Ok(_) | Err(zk::Error::NodeExists) => {}
        Err(e) => panic!("create {claims}: {e}"),
    }
    let no_create =
        zk::Permission::READ | zk::Permission::WRITE | zk::Permission::DELETE | zk::Permission::ADMIN;
    let refuse = [zk::Acl::new(no_create, zk::AuthId::anyone())];
    client.set_acl(&claims, &refuse, None).await.unwrap();

    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, handle) = spawn_worker(
        env.worker(env.worker_config("q", 4))
            .handle("k", handler)
            .unwrap(),
    );
    producer
        .enqueue("q", NewJob::new("k", "refused first"))
        .await
        .unwrap();
    // Claims refused for a while: the job is handed out and let go, again and again.
    let early = tokio::time::timeout(Duration::from_secs(2), runs.recv()).await;
    assert!(early.is_err(), "ran although its claim could not be created");

    client
        .set_acl(&claims, &zk::Acls::anyone_all(), None)
        .await
        .unwrap();
    let ran = take(&mut runs, 1).await;
    assert_eq!(ran[0].text(), "refused first");
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// A handler that reports each run's payload as it starts, and holds the runs whose payload
/// starts with `long` until `true` is sent on the returned sender.
fn holding_long_jobs() -> (
    impl zkq::Handler,
    tokio::sync::watch::Sender<bool>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (release, released) = tokio::sync::watch::channel(false);
    let (tx, runs) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = move |ctx: zkq::JobContext| {
        let (mut released, tx) = (released.clone(), tx.clone());
        async move {
            let text = String::from_utf8_lossy(&ctx.job.payload).into_owned();
            let _ = tx.send(text.clone());
            if text.starts_with("long") {
                let _ = released.wait_for(|r| *r).await;
            }
            Outcome::Done
        }
    };
    (handler, release, runs)
}

/// A long job claimed in one batch with quick ones does not hold back the slots they free: the
/// worker claims more jobs as soon as a slot is free, not only once the whole batch has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_does_not_hold_back_the_slots_its_batch_mates_freed() {
    let env = Env::new("batch-mates");
    let producer = env.producer_for("q", &small_queue()).await;
    // One partition, oldest first: the first scan finds all four and claims them in one batch.
    let first = ["long", "quick-1", "quick-2", "quick-3"];
    producer
        .enqueue_batch("q", first.iter().map(|p| NewJob::new("k", *p)).collect())
        .await
        .unwrap();

    let (handler, release, mut runs) = holding_long_jobs();
    let (stop, handle) = spawn_worker(
        env.worker(env.worker_config("q", 4))
            .handle("k", handler)
            .unwrap(),
    );
    let mut started = HashSet::new();
    while started.len() < first.len() {
        started.insert(within(runs.recv()).await.expect("a run"));
    }

    // The long job still runs; three slots are free.
    producer
        .enqueue_batch(
            "q",
            (4..7).map(|i| NewJob::new("k", format!("quick-{i}"))).collect(),
        )
        .await
        .unwrap();
    let mut later = HashSet::new();
    while later.len() < 3 {
        // Before the long job ends: it waits for the release below.
        later.insert(within(runs.recv()).await.expect("a run"));
    }
    release.send(true).unwrap();
    producer.close().await;
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// A worker with a few slots free, fewer than its claim batch, waits for its claims in flight
/// to land before it claims again, and claims again once they have: the slots left free beside
/// a batch of long jobs take later jobs while those run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_left_free_beside_a_batch_of_long_jobs_take_later_jobs() {
    let env = Env::new("free-beside");
    let producer = env.producer_for("q", &small_queue()).await;
    // Concurrency 16 claims in batches of at least 2 while claims are in flight: the first scan
    // claims the 15 long jobs, leaving one slot.
    producer
        .enqueue_batch(
            "q",
            (0..15).map(|i| NewJob::new("k", format!("long-{i}"))).collect(),
        )
        .await
        .unwrap();
    let (handler, release, mut runs) = holding_long_jobs();
    let (stop, handle) = spawn_worker(
        env.worker(env.worker_config("q", 16))
            .handle("k", handler)
            .unwrap(),
    );
    for _ in 0..15 {
        within(runs.recv()).await.expect("a run");
    }
    producer.enqueue("q", NewJob::new("k", "quick")).await.unwrap();
    // Before the long jobs end: they wait for the release below.
    assert_eq!(within(runs.recv()).await.expect("a run"), "quick");
    release.send(true).unwrap();
    producer.close().await;
    drop(stop);
    handle.await.unwrap().unwrap();
}

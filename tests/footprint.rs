//! What an idle worker costs its ZooKeeper server: a fleet of hundreds waits most of the time,
//! and each of its requests is one the server answers for nothing.

use std::time::Duration;

use zkq::{NewJob, Outcome, QueueConfig};
use zkq_tests::{count_ready, recording, spawn_worker, take, within, Env};

/// Requests the server has received since it started, pings included (`mntr`).
fn packets_received(server: &zkq_testkit::Ensemble) -> u64 {
    let reply = zkq_testkit::server::four_letter_at(&server.connect_string(), "mntr").expect("mntr answers");
    zkq_testkit::server::four_letter_number(&reply, "zk_packets_received")
        .expect("mntr reports zk_packets_received")
}

/// Requests per second the server received over `window`, from now; printed as what `who`
/// cost it.
async fn requests_per_s(server: &zkq_testkit::Ensemble, window: Duration, who: &str) -> f64 {
    let before = packets_received(server);
    tokio::time::sleep(window).await;
    let per_s = (packets_received(server) - before) as f64 / window.as_secs_f64();
    eprintln!("{who} cost its server {per_s:.2} requests/s");
    per_s
}

/// With its watches set, an idle worker lists nothing again at its poll interval (its lanes'
/// watches saw no change), and its heartbeat takes the place of its session's pings. Listing
/// its 8 partitions' claims and lanes at each 1 s poll, as it once did, cost over 30 requests
/// a second, and a heartbeat at its busy pace beside a read session's default pings about
/// 1.5; with a read session held while idle (a ping every 2.25 to 3 s), about 1.1. Now it
/// keeps one session: a probe every 1.33 s. A job enqueued after the quiet spell still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_lists_nothing_again_and_costs_its_server_under_one_request_per_second() {
    let server = zkq_testkit::Ensemble::standalone().expect("zookeeper starts");
    let mut env = Env::on(&server, "idle");
    // The production default, which sets the heartbeat's and the pings' paces.
    env.zk.session_timeout = Duration::from_secs(10);
    let queue = QueueConfig {
        partitions: 8,
        ..QueueConfig::default()
    };
    env.producer_for("q", &queue).await.close().await;
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let config = zkq::WorkerConfig {
        poll_interval: Duration::from_secs(1),
        // The elected scheduler's own work is the leader's, not every worker's.
        scheduler: false,
        ..env.worker_config("q", 4)
    };
    let (stop, handle) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    // The first scans list every lane and set the watches.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let per_s = requests_per_s(&server, Duration::from_secs(20), "the idle worker").await;
    assert!(
        per_s < 0.9,
        "the idle worker cost its server {per_s:.2} requests/s; under 0.9 expected (its heartbeat)"
    );

    let producer = env.producer().await;
    producer.enqueue("q", NewJob::new("k", "after")).await.unwrap();
    assert_eq!(take(&mut runs, 1).await[0].text(), "after");
    drop(stop);
    handle.await.unwrap().unwrap();
}

/// Connections the server has open (`mntr`), the one asking included.
fn connections(server: &zkq_testkit::Ensemble) -> u64 {
    let reply = zkq_testkit::server::four_letter_at(&server.connect_string(), "mntr").expect("mntr answers");
    zkq_testkit::server::four_letter_number(&reply, "zk_num_alive_connections")
        .expect("mntr reports zk_num_alive_connections")
}

/// Waits until the server has `want` connections open.
async fn until_connections(server: &zkq_testkit::Ensemble, want: u64, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = connections(server);
        if open == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{when}: {open} connections open, {want} expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A busy worker lists and reads on a second session, where nothing waits for its claim and
/// ack commits; once it has handed out no job for `read_session_idle`, it closes that session
/// and keeps only its own. A single job later runs on its own session, without a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_opens_a_read_session_and_closes_it_once_idle() {
    let server = zkq_testkit::Ensemble::standalone().expect("zookeeper starts");
    let env = Env::on(&server, "read-session");
    let alone = connections(&server);
    let producer = env.producer_for("q", &QueueConfig::default()).await;
    let mut jobs: Vec<NewJob> = (0..100).map(|i| NewJob::new("k", format!("quick-{i}"))).collect();
    jobs.push(NewJob::new("k", "hold"));
    producer.enqueue_batch("q", jobs).await.unwrap();
    producer.close().await;

    let (release, released) = tokio::sync::watch::channel(false);
    let (tx, mut runs) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler = move |ctx: zkq::JobContext| {
        let (mut released, tx) = (released.clone(), tx.clone());
        async move {
            let text = String::from_utf8_lossy(&ctx.job.payload).into_owned();
            if text == "hold" {
                let _ = released.wait_for(|r| *r).await;
            }
            let _ = tx.send(text);
            Outcome::Done
        }
    };
    let config = zkq::WorkerConfig {
        scheduler: false,
        read_session_idle: Duration::from_secs(2),
        ..env.worker_config("q", 4)
    };
    let (stop, handle) = spawn_worker(env.worker(config).handle("k", handler).unwrap());
    // A hundred jobs handed out within a second: the worker's own session and a read session.
    until_connections(&server, alone + 2, "while the worker is busy").await;
    for _ in 0..100 {
        within(runs.recv()).await.expect("a run");
    }
    // Still running one job, but handing out none: the read session goes.
    until_connections(&server, alone + 1, "with no job handed out for 2 s").await;
    release.send(true).unwrap();
    assert_eq!(within(runs.recv()).await.expect("a run"), "hold");

    let producer = env.producer().await;
    until_connections(&server, alone + 2, "the worker and a producer").await;
    producer.enqueue("q", NewJob::new("k", "single")).await.unwrap();
    assert_eq!(within(runs.recv()).await.expect("a run"), "single");
    for _ in 0..20 {
        assert_eq!(
            connections(&server),
            alone + 2,
            "a single job opened a read session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    producer.close().await;
    drop(stop);
    handle.await.unwrap().unwrap();
    until_connections(&server, alone, "after the worker stopped").await;
}

/// The scheduler leader sleeps until the next tick of any schedule, and learns of a new or
/// edited schedule from a watch: between ticks it reads no schedule. Rereading the schedules
/// every second, as it once did, cost about 2 requests a second more than its pings (a listing
/// and a read of each schedule); a schedule made while it sleeps still fires its first tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_scheduler_reads_no_schedule_between_ticks_and_sees_a_new_one_at_once() {
    let server = zkq_testkit::Ensemble::standalone().expect("zookeeper starts");
    let mut env = Env::on(&server, "idle-cron");
    env.zk.session_timeout = Duration::from_secs(10);
    let producer = env.producer_for("q", &QueueConfig::default()).await;
    // Two schedules whose next ticks are hours away (03:00 and 04:00 UTC, or tomorrow's).
    for (name, hour) in [("nightly", 3), ("early", 4)] {
        let job = zkq::PeriodicJob::new("q", format!("0 0 {hour} * * *"), NewJob::new("k", "x")).unwrap();
        producer.schedule(name, job).await.unwrap();
    }
    producer.close().await;
    let config = zkq::SchedulerConfig {
        // Promotion's own look, a safety net of its own, out of the window.
        promote_interval: Duration::from_secs(600),
        ..zkq::SchedulerConfig::default()
    };
    let scheduler = zkq::Scheduler::new(env.zk.clone(), &env.root, "s", config).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(scheduler.run(async move {
        let _ = stopped.await;
    }));
    // Elected, and its first passes done.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let per_s = requests_per_s(&server, Duration::from_secs(12), "the idle scheduler").await;
    assert!(
        per_s < 1.0,
        "the idle scheduler cost its server {per_s:.2} requests/s; under 1 expected (its pings)"
    );

    let producer = env.producer().await;
    let every_second = zkq::PeriodicJob::new("q", "* * * * * *", NewJob::new("k", "tick")).unwrap();
    producer.schedule("every-second", every_second).await.unwrap();
    let client = env.client().await;
    within(async {
        while count_ready(&client, &env.root, "q").await == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    drop(stop);
    running.await.unwrap().unwrap();
}

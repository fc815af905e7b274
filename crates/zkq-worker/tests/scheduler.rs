//! `zkq-worker scheduler` processes on a 3-node ensemble: kill -9 of the leader hands over to a
//! higher epoch in time, a deposed epoch cannot write, and a periodic job never fires twice for
//! one tick through the leader changes.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zkq::zookeeper_client as zk;
use zkq::{JobContext, NewJob, Outcome, PeriodicJob, Producer, QueueConfig, Worker, WorkerConfig, ZkConfig};
use zkq_testkit::Ensemble;

const SESSION: Duration = Duration::from_secs(2);

/// A job run as the worker saw it start: kind, cron tick (if any), when.
type Started = (String, Option<u64>, Instant);

fn scheduler(zk: &str, id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", zk, "--root", "/zkq", "--session-timeout", "2s", "--quiet"])
        .args(["scheduler", "--id", id, "--promote-interval", "100ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("zkq-worker starts")
}

/// The current leader's id and epoch, from the epoch znode (data: leader id, version: epoch).
async fn leader(client: &zk::Client) -> Option<(String, i32)> {
    match client.get_data("/zkq/scheduler/epoch").await {
        Ok((data, stat)) if stat.version > 0 => {
            Some((String::from_utf8_lossy(&data).into_owned(), stat.version))
        }
        _ => None,
    }
}

async fn wait_for_leader(client: &zk::Client, newer_than: i32) -> (String, i32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((id, epoch)) = leader(client).await {
            if epoch > newer_than {
                return (id, epoch);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader newer than epoch {newer_than}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_failover_is_timely_fenced_and_never_fires_a_tick_twice() {
    let ensemble = Ensemble::quorum(3).unwrap();
    let connect = ensemble.connect_string();
    let zk = ZkConfig {
        session_timeout: SESSION,
        ..ZkConfig::new(connect.clone())
    };
    let client = zk.connect().await.unwrap();
    let producer = Producer::connect(&zk, "/zkq").await.unwrap();
    let queue = QueueConfig {
        partitions: 2,
        ..QueueConfig::default()
    };
    producer.create_queue("work", &queue).await.unwrap();
    producer
        .schedule(
            "every-second",
            PeriodicJob::new("work", "* * * * * *", NewJob::new("tick", b"".to_vec())).unwrap(),
        )
        .await
        .unwrap();

    // A worker (not a candidate) records when each job starts and each tick it sees.
    let runs: Arc<Mutex<Vec<Started>>> = Arc::default();
    let seen = runs.clone();
    let worker = Worker::new(
        zk.clone(),
        "/zkq",
        WorkerConfig {
            queues: vec!["work".into()],
            scheduler: false,
            poll_interval: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .unwrap()
    .handle_any(move |ctx: JobContext| {
        let tick = ctx.job.headers.get("zkq-cron-tick").and_then(|t| t.parse().ok());
        seen.lock()
            .unwrap()
            .push((ctx.job.kind.clone(), tick, Instant::now()));
        async { Outcome::Done }
    });
    let (stop_worker, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));

    let mut schedulers: HashMap<String, Child> = ["s0", "s1", "s2"]
        .iter()
        .map(|id| (id.to_string(), scheduler(&connect, id)))
        .collect();
    let (mut leader_id, mut epoch) = wait_for_leader(&client, 0).await;

    for change in 0..3 {
        // Let the cron fire a few ticks under this leader.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let killed_at = Instant::now();
        let mut dead = schedulers.remove(&leader_id).unwrap();
        dead.kill().unwrap();
        dead.wait().unwrap();
        // A delayed job due right away: only a leader promotes it.
        producer
            .enqueue(
                "work",
                NewJob::new(format!("probe-{change}"), b"".to_vec()).delay(Duration::from_millis(1)),
            )
            .await
            .unwrap();

        let (new_id, new_epoch) = wait_for_leader(&client, epoch).await;
        let elected = killed_at.elapsed();
        let kind = format!("probe-{change}");
        let acted = loop {
            if let Some((_, _, at)) = runs.lock().unwrap().iter().find(|(k, _, _)| *k == kind) {
                break at.duration_since(killed_at);
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(60),
                "the new leader never promoted {kind}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        eprintln!(
            "kill -9 of {leader_id} (epoch {epoch}): {new_id} elected in epoch {new_epoch} after {elected:?}, \
             its promotion ran after {acted:?}"
        );
        assert_ne!(new_id, leader_id);
        assert!(new_epoch > epoch);
        assert!(
            acted <= SESSION + Duration::from_secs(2),
            "the new leader acted {acted:?} after the kill, over session timeout + 2 s"
        );

        // The deposed epoch cannot write.
        let mut multi = client.new_multi_writer();
        multi.add_check_version("/zkq/scheduler/epoch", epoch).unwrap();
        multi
            .add_create(
                &format!("/zkq/deposed-{change}"),
                b"",
                &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()),
            )
            .unwrap();
        let err = multi.commit().await.unwrap_err();
        assert_eq!(zk::Error::from(err), zk::Error::BadVersion);

        schedulers.insert(leader_id.clone(), scheduler(&connect, &leader_id));
        (leader_id, epoch) = (new_id, new_epoch);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (_, mut s) in schedulers {
        s.kill().unwrap();
        s.wait().unwrap();
    }
    let _ = stop_worker.send(());
    worker.await.unwrap().unwrap();

    let runs = runs.lock().unwrap();
    let mut ticks: Vec<u64> = runs.iter().filter_map(|(_, tick, _)| *tick).collect();
    let fired = ticks.len();
    ticks.sort();
    ticks.dedup();
    eprintln!("{fired} cron jobs ran for {} distinct ticks", ticks.len());
    assert_eq!(fired, ticks.len(), "a tick fired twice");
    // Ticks under the three leaders (3 s each) plus the catch-up after each gap.
    assert!(ticks.len() >= 9, "only {} ticks fired", ticks.len());
}

//! The claims-ended count behind the dashboard's throughput, against the real server: every
//! attempt that ended is counted once, whatever its outcome.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zkq::{Admin, JobContext, NewJob, Outcome, Producer, Worker, WorkerConfig, ZkConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_that_ended_is_one_claim_ended() {
    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let root = zkq_testkit::unique_root("claim-activity");
    let producer = Producer::connect(&zk, &root).await.unwrap();
    let admin = Admin::connect(&zk, &root).await.unwrap();
    // 20 done at once, 5 retried once then done, 5 dead at their only attempt: 35 attempts.
    let mut jobs = Vec::new();
    for i in 0..20 {
        jobs.push(NewJob::new("ok", format!("{i}")));
    }
    for i in 0..5 {
        jobs.push(NewJob::new("flaky", format!("{i}")).max_attempts(2));
        jobs.push(NewJob::new("broken", format!("{i}")).max_attempts(1));
    }
    producer.enqueue_batch("q", jobs).await.unwrap();
    let before: HashMap<u32, zkq::ClaimActivity> = admin
        .claim_activity()
        .await
        .unwrap()
        .into_iter()
        .map(|(queue, partition, activity)| {
            assert_eq!(queue, "q");
            (partition, activity)
        })
        .collect();
    assert_eq!(before.len(), 8, "one claims folder per partition");

    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let config = WorkerConfig {
        queues: vec!["q".into()],
        ..WorkerConfig::default()
    };
    let worker = Worker::new(zk.clone(), &root, config)
        .unwrap()
        .handle_any(move |ctx: JobContext| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match ctx.job.kind.as_str() {
                    "flaky" if ctx.job.attempt == 1 => {
                        Outcome::retry_after("not yet", Duration::from_millis(50))
                    }
                    "broken" => Outcome::Dead {
                        error: "broken".into(),
                    },
                    _ => Outcome::Done,
                }
            }
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    let started = Instant::now();
    loop {
        let stats = admin.stats(Some("q")).await.unwrap();
        let q = &stats.queues[0];
        if attempts.load(Ordering::SeqCst) == 35 && q.dead == 5 && q.running == 0 && q.delayed == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the jobs did not finish: {q:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let after = admin.claim_activity().await.unwrap();
    let ended: u64 = after
        .iter()
        .map(|(_, partition, now)| now.ended_since(&before[partition]).expect("the same folders"))
        .sum();
    assert_eq!(ended, 35, "claims ended, against attempts run");

    let _ = stop.send(());
    run.await.unwrap().unwrap();
    admin.close().await;
    producer.close().await;
}

//! A worker whose only queue is paused sleeps: it neither claims nor spins. Alone in its test
//! binary, so that the process's CPU time is the worker's.

use std::time::Duration;

use zkq::{Admin, JobContext, NewJob, Outcome, Producer, Worker, WorkerConfig, ZkConfig};

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage(2) fills the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv =
        |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_paused_queue_neither_claims_nor_spins() {
    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let root = zkq_testkit::unique_root("paused-idle");
    let producer = Producer::connect(&zk, &root).await.unwrap();
    producer.enqueue("q", NewJob::new("k", "first")).await.unwrap();
    let (runs_tx, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let config = WorkerConfig {
        queues: vec!["q".into()],
        poll_interval: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let worker = Worker::new(zk.clone(), &root, config)
        .unwrap()
        .handle("k", move |_ctx: JobContext| {
            let runs = runs_tx.clone();
            async move {
                let _ = runs.send(());
                Outcome::Done
            }
        })
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(60), runs.recv())
        .await
        .unwrap();

    // Paused, then resumed and paused again: each change reaches the worker.
    let admin = Admin::connect(&zk, &root).await.unwrap();
    admin.pause("q").await.unwrap();
    admin.resume("q").await.unwrap();
    admin.pause("q").await.unwrap();
    producer.enqueue("q", NewJob::new("k", "second")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = cpu_time();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let used = cpu_time() - before;
    assert!(runs.try_recv().is_err(), "no job of a paused queue ran");
    assert!(
        used < Duration::from_millis(1500),
        "the idle worker used {used:?} of CPU in 3 s"
    );

    admin.resume("q").await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), runs.recv())
        .await
        .unwrap();
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
    admin.close().await;
    producer.close().await;
}

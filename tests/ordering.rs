//! Order guarantees: FIFO within a lane, higher priority lanes first.

use zkq::{NewJob, Outcome, QueueConfig};
use zkq_tests::{recording, small_queue, spawn_worker, take, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_one_lane_run_in_fifo_order() {
    let env = Env::new("fifo");
    let producer = env.producer_for("orders", &small_queue()).await;
    for i in 0..60 {
        producer
            .enqueue("orders", NewJob::new("step", format!("{i}")))
            .await
            .unwrap();
    }
    // Some more in batches, which must keep their order too.
    let batch: Vec<NewJob> = (60..100).map(|i| NewJob::new("step", format!("{i}"))).collect();
    producer.enqueue_batch("orders", batch).await.unwrap();

    let (handler, mut runs) = recording(|_| Outcome::Done);
    let worker = env
        .worker(env.worker_config("orders", 1))
        .handle("step", handler)
        .unwrap();
    let (stop, handle) = spawn_worker(worker);
    let order: Vec<String> = take(&mut runs, 100).await.iter().map(|r| r.text()).collect();
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(order, expected);
    drop(stop);
    assert_eq!(handle.await.unwrap().unwrap().done, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_holds_across_segments() {
    let env = Env::new("fifo-segments");
    // Segments of 5 children: 4 jobs and the producer's open marker.
    let config = QueueConfig {
        segment_size: 5,
        ..small_queue()
    };
    let producer = env.producer_for("q", &config).await;
    let batch: Vec<NewJob> = (0..23).map(|i| NewJob::new("k", format!("{i}"))).collect();
    producer.enqueue_batch("q", batch).await.unwrap();
    for i in 23..30 {
        producer
            .enqueue("q", NewJob::new("k", format!("{i}")))
            .await
            .unwrap();
    }
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _handle) = spawn_worker(
        env.worker(env.worker_config("q", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let order: Vec<String> = take(&mut runs, 30).await.iter().map(|r| r.text()).collect();
    assert_eq!(order, (0..30).map(|i| i.to_string()).collect::<Vec<_>>());
    drop(stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_jobs_run_first() {
    let env = Env::new("priority");
    let config = QueueConfig {
        partitions: 4,
        ..small_queue()
    };
    let producer = env.producer_for("mixed", &config).await;
    for i in 0..15 {
        producer
            .enqueue("mixed", NewJob::new("k", format!("low-{i}")).priority(0))
            .await
            .unwrap();
        producer
            .enqueue("mixed", NewJob::new("k", format!("mid-{i}")).priority(1))
            .await
            .unwrap();
        producer
            .enqueue("mixed", NewJob::new("k", format!("high-{i}")).priority(2))
            .await
            .unwrap();
    }
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let (stop, _handle) = spawn_worker(
        env.worker(env.worker_config("mixed", 1))
            .handle("k", handler)
            .unwrap(),
    );
    let order: Vec<String> = take(&mut runs, 45).await.iter().map(|r| r.text()).collect();
    let rank = |s: &String| match s.split('-').next() {
        Some("high") => 0,
        Some("mid") => 1,
        _ => 2,
    };
    let ranks: Vec<i32> = order.iter().map(rank).collect();
    let mut sorted = ranks.clone();
    sorted.sort();
    assert_eq!(ranks, sorted, "all high, then all mid, then all low: {order:?}");
    drop(stop);
}

//! Enqueue: atomic batches, clear errors on bad input, bounded child lists.

use std::time::Duration;

use zkq::{Error, NewJob, Producer, QueueConfig, ZkConfig};
use zkq_tests::{count_ready, small_queue, Env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_all_or_nothing() {
    let env = Env::new("batch-atomic");
    let producer = env.producer_for("q", &small_queue()).await;
    let client = env.client().await;

    // Refused before sending: one bad job sinks the whole batch.
    let mut batch: Vec<NewJob> = (0..10).map(|i| NewJob::new("k", format!("{i}"))).collect();
    batch.push(NewJob::new("k", vec![0u8; 600 * 1024]));
    let err = producer.enqueue_batch("q", batch).await.unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    assert_eq!(count_ready(&client, &env.root, "q").await, 0);

    // Refused by ZooKeeper inside the multi: a delayed job whose entry already exists makes
    // the whole multi fail, so the ready jobs next to it are not committed either.
    let id = zkq::JobId::new();
    let at = std::time::SystemTime::now() + Duration::from_secs(3600);
    producer
        .enqueue("q", NewJob::new("k", "first").with_id(id).run_at(at))
        .await
        .unwrap();
    let mut batch: Vec<NewJob> = (0..10).map(|i| NewJob::new("k", format!("{i}"))).collect();
    batch.push(NewJob::new("k", "again").with_id(id).run_at(at));
    let err = producer.enqueue_batch("q", batch).await.unwrap_err();
    assert!(err.to_string().contains("node already exists"), "{err}");
    assert_eq!(count_ready(&client, &env.root, "q").await, 0);

    // And a good batch lands whole.
    let batch: Vec<NewJob> = (0..10).map(|i| NewJob::new("k", format!("{i}"))).collect();
    assert_eq!(producer.enqueue_batch("q", batch).await.unwrap().len(), 10);
    assert_eq!(count_ready(&client, &env.root, "q").await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_loses_nothing() {
    let env = Env::new("bad-input");
    let producer = env.producer_for("q", &small_queue()).await;
    let client = env.client().await;
    producer.enqueue("q", NewJob::new("k", "kept")).await.unwrap();

    let err = producer
        .enqueue("q", NewJob::new("k", vec![7u8; 513 * 1024]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "job payload is 525312 bytes, over the limit of 524288 bytes"
    );

    for bad in ["", "a/b", "../x", "white space", &"x".repeat(65)] {
        let err = producer.enqueue(bad, NewJob::new("k", "x")).await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidName {
                    what: "queue name",
                    ..
                }
            ),
            "{bad:?}: {err}"
        );
    }
    let err = producer
        .enqueue("q", NewJob::new("bad kind", "x"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid job kind"), "{err}");
    let err = producer
        .enqueue("q", NewJob::new("k", "x").priority(9))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("priority 9 is out of range"), "{err}");
    let err = producer
        .enqueue("q", NewJob::new("k", "x").max_attempts(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max attempts"), "{err}");

    assert_eq!(
        count_ready(&client, &env.root, "q").await,
        1,
        "the good job is still there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_zookeeper_is_a_clear_error() {
    let port = zkq_testkit::server::free_port().unwrap();
    let zk = ZkConfig {
        address: format!("127.0.0.1:{port}"),
        connect_timeout: Duration::from_secs(1),
        ..ZkConfig::default()
    };
    let err = Producer::connect(&zk, "/zkq").await.unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot reach ZooKeeper at 127.0.0.1:{port}")),
        "{err}"
    );
    let err = Producer::connect(&ZkConfig::new("127.0.0.1:2181"), "no-slash")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid root path"), "{err}");
}

/// Every znode under the queue, with its child count, skipping the job leaves.
async fn max_children(client: &zkq::zookeeper_client::Client, path: &str) -> (String, usize) {
    let mut worst = (String::new(), 0);
    let mut stack = vec![path.to_string()];
    while let Some(node) = stack.pop() {
        let children = client.list_children(&node).await.unwrap();
        if children.len() > worst.1 {
            worst = (node.clone(), children.len());
        }
        for child in children {
            if !child.starts_with("j-") && child != "open" {
                stack.push(format!("{node}/{child}"));
            }
        }
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_jobs_keep_every_child_list_within_the_segment_size() {
    let env = Env::new("segment-bound");
    let config = QueueConfig::default();
    let producer = std::sync::Arc::new(env.producer_for("big", &config).await);
    // Four producers' worth of concurrent batches, plus single enqueues.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            for b in 0..25 {
                let batch: Vec<NewJob> = (0..1000)
                    .map(|i| NewJob::new("k", format!("{t}-{b}-{i}").into_bytes()))
                    .collect();
                producer.enqueue_batch("big", batch).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let client = env.client().await;
    assert_eq!(count_ready(&client, &env.root, "big").await, 100_000);
    let (path, children) = max_children(&client, &env.root).await;
    assert!(
        children <= config.segment_size as usize,
        "{path} has {children} children, over the segment size {}",
        config.segment_size
    );
    // The bound was actually exercised: full segments exist.
    assert!(
        children >= config.segment_size as usize - 1,
        "largest list {children} at {path}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_with_one_partition_key_land_in_one_partition_and_others_spread() {
    let env = Env::new("partition-key");
    let config = QueueConfig {
        partitions: 8,
        ..small_queue()
    };
    let producer = env.producer_for("q", &config).await;
    let keyed: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("k", format!("{i}")).partition_key("user-42"))
        .collect();
    producer.enqueue_batch("q", keyed).await.unwrap();
    let client = env.client().await;
    let per_partition = |client: zkq::zookeeper_client::Client, root: String| async move {
        let mut counts = Vec::new();
        for p in 0..8 {
            let lane = format!("{root}/queues/q/p/{p}/l0");
            let mut n = 0;
            for s in client.list_children(&lane).await.unwrap() {
                n += client
                    .list_children(&format!("{lane}/{s}"))
                    .await
                    .unwrap()
                    .iter()
                    .filter(|j| j.starts_with("j-"))
                    .count();
            }
            counts.push(n);
        }
        counts
    };
    let counts = per_partition(client.clone(), env.root.clone()).await;
    let expected = zkq::inspect::partition_of_key("user-42", 8) as usize;
    assert_eq!(counts[expected], 20, "{counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), 20);

    let unkeyed: Vec<NewJob> = (0..80).map(|i| NewJob::new("k", format!("{i}"))).collect();
    producer.enqueue_batch("q", unkeyed).await.unwrap();
    let counts = per_partition(client, env.root.clone()).await;
    let spread: Vec<usize> = counts
        .iter()
        .enumerate()
        .map(|(p, n)| if p == expected { n - 20 } else { *n })
        .collect();
    assert_eq!(spread, vec![10; 8], "round robin spreads evenly: {counts:?}");
}

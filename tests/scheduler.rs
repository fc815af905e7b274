//! The scheduler's services against a real ZooKeeper: partition assignment that workers
//! follow, and dead-letter trimming.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use zkq::inspect::{partition_of_key, Assignment};
use zkq::zookeeper_client as zk;
use zkq::{Handler, NewJob, Outcome, QueueConfig};
use zkq_tests::{recording, spawn_worker, take, within, Env};

const PARTITIONS: u32 = 8;

async fn read_assignment(client: &zk::Client, env: &Env) -> Option<Assignment> {
    let layout = zkq::Layout::new(&env.root).unwrap();
    zkq::inspect::assignment(client, &layout, "q").await.unwrap()
}

fn loads(a: &Assignment) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in a.owners.iter().flatten() {
        *m.entry(o.clone()).or_default() += 1;
    }
    m
}

/// Waits until every partition has one owner (the workers run the same kinds) and the owners
/// are exactly `workers`.
async fn converged(client: &zk::Client, env: &Env, workers: &[&str]) -> Assignment {
    within(async {
        loop {
            if let Some(a) = read_assignment(client, env).await {
                let l = loads(&a);
                if a.owners.iter().all(|o| o.len() == 1)
                    && l.keys().map(String::as_str).eq(workers.iter().copied())
                {
                    return a;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits until the workers follow `assignment`: one job per partition, enqueued in rounds until
/// a whole round ran on the partitions' owners.
async fn followed(
    producer: &zkq::Producer,
    runs: &mut tokio::sync::mpsc::UnboundedReceiver<zkq_tests::Run>,
    assignment: &Assignment,
) {
    // A key for each partition.
    let mut probes: Vec<Option<String>> = vec![None; PARTITIONS as usize];
    for n in 0.. {
        let key = format!("probe-{n}");
        let slot = &mut probes[partition_of_key(&key, PARTITIONS) as usize];
        slot.get_or_insert(key);
        if probes.iter().all(Option::is_some) {
            break;
        }
    }
    let probes: Vec<String> = probes.into_iter().flatten().collect();
    within(async {
        loop {
            for key in &probes {
                producer
                    .enqueue("q", NewJob::new("k", key.clone()).partition_key(key.clone()))
                    .await
                    .unwrap();
            }
            let round = take(runs, probes.len()).await;
            let on_owner = |run: &zkq_tests::Run| {
                let partition = partition_of_key(&run.text(), PARTITIONS) as usize;
                assignment.owners[partition] == std::slice::from_ref(&run.worker)
            };
            if round.iter().all(on_owner) {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_assignment_converges_and_workers_follow_it() {
    let ensemble = zkq_testkit::Ensemble::quorum(3).unwrap();
    let env = Env::on(&ensemble, "assignment");
    let config = QueueConfig {
        partitions: PARTITIONS,
        ..QueueConfig::default()
    };
    let producer = env.producer_for("q", &config).await;
    let client = env.client().await;
    let (handler, mut runs) = recording(|_| Outcome::Done);
    let handler = std::sync::Arc::new(handler);
    let start = |id: &str| {
        let mut config = env.worker_config("q", 4);
        config.id = id.to_string();
        let h = handler.clone();
        spawn_worker(
            env.worker(config)
                .detached()
                .handle_any(move |ctx: zkq::JobContext| h.run(ctx)),
        )
    };
    let mut workers: Vec<_> = ["w0", "w1", "w2"].iter().map(|id| start(id)).collect();

    // Balanced: 3 + 3 + 2.
    let first = converged(&client, &env, &["w0", "w1", "w2"]).await;
    let mut sizes: Vec<usize> = loads(&first).into_values().collect();
    sizes.sort();
    assert_eq!(sizes, vec![2, 3, 3]);

    // Workers take jobs only from the partitions they own. The record is in ZooKeeper, and the
    // workers follow it once their watch delivers it (until then, an earlier record's):
    // wait until a job in each partition runs on its owner, then check 40 more.
    followed(&producer, &mut runs, &first).await;
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for key in &keys {
        producer
            .enqueue("q", NewJob::new("k", key.clone()).partition_key(key.clone()))
            .await
            .unwrap();
    }
    for run in take(&mut runs, keys.len()).await {
        let partition = partition_of_key(&run.text(), PARTITIONS) as usize;
        assert_eq!(
            first.owners[partition],
            std::slice::from_ref(&run.worker),
            "{} is in partition {partition}",
            run.text()
        );
    }

    // w2 crashes: its session expires and its partitions move to w0 and w1, and only those.
    let crashed = Instant::now();
    workers.pop().unwrap().1.abort();
    let second = converged(&client, &env, &["w0", "w1"]).await;
    let orphaned_for = crashed.elapsed();
    eprintln!("partitions of the crashed worker had a new owner after {orphaned_for:?}");
    assert!(
        orphaned_for <= env.zk.session_timeout + Duration::from_secs(2),
        "partitions without a live owner for {orphaned_for:?}"
    );
    let moved =
        |a: &Assignment, b: &Assignment| a.owners.iter().zip(&b.owners).filter(|(x, y)| x != y).count();
    assert_eq!(moved(&first, &second), loads(&first)["w2"]);

    // w3 joins: it takes its share, and nothing else moves.
    workers.push(start("w3"));
    let third = converged(&client, &env, &["w0", "w1", "w3"]).await;
    assert_eq!(moved(&second, &third), loads(&third)["w3"]);
    let mut sizes: Vec<usize> = loads(&third).into_values().collect();
    sizes.sort();
    assert_eq!(sizes, vec![2, 3, 3]);

    for (stop, handle) in workers {
        let _ = stop.send(());
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_trimmed_by_count() {
    let env = Env::new("trim");
    let config = QueueConfig {
        partitions: 1,
        max_attempts: 1,
        dead_max: Some(3),
        ..QueueConfig::default()
    };
    let producer = env.producer_for("q", &config).await;
    for i in 0..5 {
        producer
            .enqueue("q", NewJob::new("poison", format!("p{i}")))
            .await
            .unwrap();
    }
    let (handler, mut runs) = recording(|_| Outcome::dead("poison"));
    let mut worker_config = env.worker_config("q", 1);
    worker_config.scheduling.trim_interval = Duration::from_millis(200);
    let (stop, handle) = spawn_worker(env.worker(worker_config).handle_any(handler));
    take(&mut runs, 5).await;
    let client = env.client().await;
    let dead = format!("{}/queues/q/dead", env.root);
    // Five died in order; the two oldest go, the three newest stay.
    let kept = within(async {
        loop {
            let names = client.list_children(&dead).await.unwrap();
            if names.len() == 3 {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let mut kept_payloads = Vec::new();
    for name in kept {
        let (data, _) = client.get_data(&format!("{dead}/{name}")).await.unwrap();
        let job = zkq::Job::decode(&name, &data).unwrap();
        kept_payloads.push(String::from_utf8(job.payload).unwrap());
    }
    kept_payloads.sort();
    assert_eq!(kept_payloads, vec!["p2", "p3", "p4"]);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

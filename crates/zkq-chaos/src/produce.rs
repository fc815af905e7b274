//! The producers of a chaos run: a seeded job mix enqueued at a steady rate, and every
//! acknowledged id recorded for the checker.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng;
use zkq::{NewJob, Producer, ZkConfig};

use crate::check::{Acked, Acknowledged};
use crate::{ledger, KEYS, MAX_PAYLOAD};

/// Enqueues about `rate` jobs a second in small batches until `until`; records each
/// acknowledged job. Returns how many enqueue calls failed (their jobs are not counted).
///
/// The mix: 3% of jobs fail their first attempt, 0.5% always fail (3 attempts, then dead), 30%
/// carry one of [`KEYS`] lock keys, `large_share` are large (three quarters of the queue's payload limit
/// and more, sent alone: two would not fit one request), and about one job in 300 is delayed far
/// into the future (a day to 99 years), which must hold up nothing.
pub(crate) async fn produce(
    zk: ZkConfig,
    root: String,
    mut rng: StdRng,
    rate: u32,
    large_share: f64,
    until: Instant,
    acknowledged: Arc<Mutex<Acknowledged>>,
) -> usize {
    let mut producer = connect_producer(&zk, &root).await;
    let per_tick = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut failures = 0;
    while Instant::now() < until {
        tick.tick().await;
        let mut batches: Vec<Vec<(NewJob, Acked)>> = vec![Vec::new()];
        for _ in 0..per_tick {
            let fail = match rng.gen_range(0..1000) {
                0..=4 => "always",
                5..=34 => "first",
                _ => "none",
            };
            let mut payload = ledger::payload(rng.gen_range(5..60), fail);
            let large = rng.gen_bool(large_share);
            if large {
                let limit = MAX_PAYLOAD as usize - payload.len() - 1;
                let size = rng.gen_range(limit * 3 / 4..=limit);
                payload.push(' ');
                payload.push_str(&"x".repeat(size));
            }
            let mut job = NewJob::new("work", payload);
            if fail == "always" {
                job = job.max_attempts(3);
            }
            let mut acked = Acked::default();
            if rng.gen_bool(0.3) {
                let key = format!("key-{}", rng.gen_range(0..KEYS));
                job = job.lock_key(key.clone());
                acked.lock_key = Some(key);
            }
            if rng.gen_ratio(1, 300) {
                let days = if rng.gen_bool(0.5) {
                    1
                } else {
                    rng.gen_range(1..99 * 365)
                };
                job = job.delay(Duration::from_secs(days * 24 * 3600));
                acked.far_future = true;
            }
            if large {
                batches.push(vec![(job, acked)]);
            } else {
                batches[0].push((job, acked));
            }
        }
        for batch in batches.into_iter().filter(|b| !b.is_empty()) {
            let (jobs, acks): (Vec<NewJob>, Vec<Acked>) = batch.into_iter().unzip();
            match producer.enqueue_batch("chaos", jobs).await {
                Ok(ids) => {
                    let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                    for (id, a) in ids.into_iter().zip(acks) {
                        acked.insert(id.to_string(), a);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures % 20 == 1 {
                        eprintln!("chaos: enqueue failed ({failures} so far): {e}");
                    }
                    if e.is_session_lost() {
                        // A producer is bound to its session: a new one for the rest of the run.
                        producer = connect_producer(&zk, &root).await;
                    }
                }
            }
        }
    }
    producer.close().await;
    failures
}

/// A producer, trying again every second until ZooKeeper answers.
pub(crate) async fn connect_producer(zk: &ZkConfig, root: &str) -> Producer {
    loop {
        match Producer::connect(zk, root).await {
            Ok(p) => return p,
            Err(e) => {
                eprintln!("chaos: producer cannot connect: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

//! Jobs finished per second over the last 15 minutes, sampled by the dashboard itself.
//!
//! Every few seconds one stat per partition reads how many claims ended
//! ([`zkq::Admin::claim_activity`]): each ended claim is an attempt that finished (done,
//! retried, dead, released, or lost with its worker). The rates are kept in memory, so the
//! chart covers the time since the dashboard started, up to 15 minutes. A partition past a
//! billion claims can no longer be counted ([`ClaimActivity::countable`]); the chart says how
//! many.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tracing::debug;
use zkq::ClaimActivity;

use super::Shared;

/// How far back the chart goes.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);

/// How often the claims are counted.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// The rates seen, oldest first.
#[derive(Debug, Default)]
pub struct Throughput {
    history: Mutex<History>,
}

#[derive(Debug, Default)]
struct History {
    /// Each claims folder as last seen, by queue and partition, and when.
    last: HashMap<(String, u32), ClaimActivity>,
    last_at_ms: Option<u64>,
    points: VecDeque<Point>,
    /// Folders whose count reached ZooKeeper's limit, by queue, at the last sample.
    uncountable: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct Point {
    at_ms: u64,
    /// Claims ended per second since the sample before, by queue.
    by_queue: BTreeMap<String, f64>,
}

/// Counts claims every [`SAMPLE_EVERY`] for as long as the dashboard runs.
pub async fn sample(dashboard: Shared) {
    loop {
        match dashboard
            .connection
            .run(|admin| async move { admin.claim_activity().await })
            .await
        {
            Ok(seen) => dashboard.throughput.record(super::now_ms(), seen),
            Err(e) => debug!(error = %e, "cannot count claims for the throughput chart"),
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

impl Throughput {
    /// Adds the rates since the last sample, from the claims folders seen at `at_ms`.
    pub fn record(&self, at_ms: u64, seen: Vec<(String, u32, ClaimActivity)>) {
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = history.last_at_ms.map(|last| at_ms.saturating_sub(last));
        if let Some(elapsed) = elapsed.filter(|ms| *ms > 0) {
            let mut by_queue: BTreeMap<String, f64> = BTreeMap::new();
            for (queue, partition, now) in &seen {
                let ended = history
                    .last
                    .get(&(queue.clone(), *partition))
                    .and_then(|before| now.ended_since(before))
                    .unwrap_or(0);
                *by_queue.entry(queue.clone()).or_default() += ended as f64 * 1000.0 / elapsed as f64;
            }
            history.points.push_back(Point { at_ms, by_queue });
        }
        let oldest = at_ms.saturating_sub(WINDOW.as_millis() as u64);
        while history.points.front().is_some_and(|p| p.at_ms < oldest) {
            history.points.pop_front();
        }
        history.uncountable.clear();
        // Folders not seen this time (a queue whose config could not be read) keep their last
        // count, so that their claims are counted when they are seen again.
        for (queue, partition, activity) in seen {
            if !activity.countable() {
                *history.uncountable.entry(queue.clone()).or_default() += 1;
            }
            history.last.insert((queue, partition), activity);
        }
        history.last_at_ms = Some(at_ms);
    }

    /// Partitions of `queue` (or of all queues) that can no longer be counted: their claims
    /// folder's `cversion` reached the limit where ZooKeeper stops it.
    pub fn uncountable(&self, queue: Option<&str>) -> usize {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        match queue {
            Some(q) => history.uncountable.get(q).copied().unwrap_or(0),
            None => history.uncountable.values().sum(),
        }
    }

    /// `(ms since the Unix epoch, jobs finished per second)` of `queue`, or of all queues.
    pub fn series(&self, queue: Option<&str>) -> Vec<(u64, f64)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .points
            .iter()
            .map(|p| {
                let rate = match queue {
                    Some(q) => p.by_queue.get(q).copied().unwrap_or(0.0),
                    None => p.by_queue.values().sum(),
                };
                (p.at_ms, rate)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(queue: &str, partition: u32, cversion: i32, held: u32) -> (String, u32, ClaimActivity) {
        let activity = ClaimActivity {
            czxid: 1,
            cversion,
            held,
        };
        (queue.to_string(), partition, activity)
    }

    #[test]
    fn rates_are_claims_ended_per_second_by_queue() {
        let throughput = Throughput::default();
        throughput.record(10_000, vec![folder("a", 0, 0, 0), folder("b", 0, 0, 0)]);
        assert!(throughput.series(None).is_empty(), "one sample has no rate yet");
        // In 2 s: 10 claims of a ended in partition 0 (partition 1 is new: no count yet); of
        // b, 3 were taken and 1 ended.
        throughput.record(
            12_000,
            vec![folder("a", 0, 20, 0), folder("a", 1, 20, 0), folder("b", 0, 4, 2)],
        );
        assert_eq!(throughput.series(Some("a")), vec![(12_000, 5.0)]);
        assert_eq!(throughput.series(Some("b")), vec![(12_000, 0.5)]);
        assert_eq!(throughput.series(None), vec![(12_000, 5.5)]);
    }

    #[test]
    fn points_older_than_the_window_are_dropped() {
        let throughput = Throughput::default();
        let window = WINDOW.as_millis() as u64;
        for i in 0..5 {
            throughput.record(i * window / 2, vec![folder("a", 0, 0, 0)]);
        }
        let at: Vec<u64> = throughput.series(None).iter().map(|(at, _)| *at).collect();
        // The last sample is at 2 windows: the point at half a window is older than one.
        assert_eq!(at, vec![window, window * 3 / 2, window * 2]);
    }
}

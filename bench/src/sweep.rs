//! The drain over a grid of partitions and worker processes: how throughput scales with each.

use serde::Serialize;

use crate::workloads::Workloads;

/// Partitions of the sweep's queues.
pub const PARTITIONS: [u32; 4] = [1, 4, 16, 64];
/// Worker processes of the sweep's fleets.
pub const WORKERS: [usize; 4] = [1, 2, 4, 8];

/// One drain of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub partitions: u32,
    pub workers: usize,
    pub jobs: usize,
    pub per_s: f64,
    pub duplicates: u64,
}

impl Workloads<'_> {
    /// For each of [`PARTITIONS`] and [`WORKERS`]: `jobs` enqueued on a fresh queue of that many
    /// partitions, then drained by a fresh fleet of that many processes (`--concurrency` each).
    pub async fn sweep(&self, jobs: usize) -> Result<Vec<Point>, String> {
        let mut points = Vec::new();
        for partitions in PARTITIONS {
            for workers in WORKERS {
                let queue = format!("bench-sweep-p{partitions}-w{workers}");
                self.create_queue_with(&queue, partitions).await?;
                self.enqueue_batch(&format!("enqueue ({queue})"), &queue, jobs)
                    .await?;
                let fleet = self.fleet_of(&queue, workers, false)?;
                let drain = self
                    .drain(
                        &format!("sweep: {partitions} partitions, {workers} workers"),
                        &fleet,
                        jobs,
                    )
                    .await?;
                fleet.stop().await?;
                points.push(Point {
                    partitions,
                    workers,
                    jobs,
                    per_s: drain.per_s,
                    duplicates: drain.duplicates,
                });
            }
        }
        Ok(points)
    }
}

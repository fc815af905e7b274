//! How many claims have ended, per partition: the dashboard's throughput, without a counter
//! anywhere in ZooKeeper and without a write.
//!
//! Every attempt is a claim znode created in `p/<n>/claims` and deleted when the attempt ends
//! (done, retried, dead, released, or its worker's session gone). ZooKeeper bumps the folder's
//! `cversion` on every child created and on every child deleted (seen on 3.8: two creates and a
//! delete leave it at 3), so `(cversion - held) / 2` is the number of claims that ended since
//! the folder was made. A claim batch that loses a race fails as a whole and changes nothing.
//! One stat per partition reads it.
//!
//! The server never lets `cversion` wrap: past `i32::MAX` changes (a billion claims in one
//! partition) it stays there, and the folder can no longer be counted.

use serde::Serialize;

use crate::error::Result;
use crate::queue;
use crate::store::znode;

use super::Admin;

/// The claims folder of one partition, as last seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClaimActivity {
    /// The folder's creation zxid: a different one is a new folder (the queue made again).
    pub czxid: i64,
    /// Children created plus children deleted; it stops at `i32::MAX`.
    pub cversion: i32,
    /// Claims held now.
    pub held: u32,
}

impl ClaimActivity {
    /// Whether the folder's changes can still be counted: its `cversion` is below the limit
    /// where the server stops it.
    pub fn countable(&self) -> bool {
        self.cversion < i32::MAX
    }

    /// Claims ended between `earlier` and `self` (the same folder seen later), or `None` when
    /// `earlier` was another folder or the count reached its limit.
    pub fn ended_since(&self, earlier: &ClaimActivity) -> Option<u64> {
        if self.czxid != earlier.czxid || !self.countable() || self.cversion < earlier.cversion {
            return None;
        }
        let changes = i64::from(self.cversion) - i64::from(earlier.cversion);
        let held = i64::from(self.held) - i64::from(earlier.held);
        Some(((changes - held) / 2).max(0) as u64)
    }
}

impl Admin {
    /// The claims folder of every partition of every queue: `(queue, partition, activity)`.
    /// A queue whose config cannot be read is left out.
    ///
    /// # Errors
    /// ZooKeeper errors.
    pub async fn claim_activity(&self) -> Result<Vec<(String, u32, ClaimActivity)>> {
        let mut out = Vec::new();
        for name in queue::list(&self.client, &self.layout).await? {
            let Ok(Some(config)) = queue::load(&self.client, &self.layout, &name).await else {
                continue;
            };
            let folders = (0..config.partitions).map(|p| format!("{p}/claims")).collect();
            for (folder, stat) in
                znode::stat_children(&self.client, &self.layout.partitions(&name), folders).await?
            {
                let Some(partition) = folder.split('/').next().and_then(|p| p.parse().ok()) else {
                    continue;
                };
                let activity = ClaimActivity {
                    czxid: stat.czxid,
                    cversion: stat.cversion,
                    held: stat.num_children.max(0) as u32,
                };
                out.push((name.clone(), partition, activity));
            }
        }
        Ok(out)
    }

    /// Every periodic job (cron schedule), by name.
    ///
    /// # Errors
    /// ZooKeeper errors.
    pub async fn schedules(&self) -> Result<Vec<(String, crate::PeriodicJob)>> {
        self.producer.schedules().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(czxid: i64, cversion: i32, held: u32) -> ClaimActivity {
        ClaimActivity {
            czxid,
            cversion,
            held,
        }
    }

    #[test]
    fn ended_claims_are_the_deletes_among_the_changes() {
        // 10 created, 7 deleted: 3 held.
        let now = seen(5, 17, 3);
        assert_eq!(now.ended_since(&seen(5, 0, 0)), Some(7));
        // 4 more created and 6 deleted since.
        assert_eq!(seen(5, 27, 1).ended_since(&now), Some(6));
    }

    #[test]
    fn a_folder_at_the_limit_of_its_counter_has_no_count() {
        let before = seen(5, i32::MAX - 8, 0);
        assert_eq!(seen(5, i32::MAX - 2, 0).ended_since(&before), Some(3));
        assert_eq!(seen(5, i32::MAX, 0).ended_since(&before), None);
        assert!(!seen(5, i32::MAX, 0).countable());
    }

    #[test]
    fn another_folder_has_no_count_since() {
        assert_eq!(seen(6, 40, 0).ended_since(&seen(5, 20, 0)), None);
    }
}

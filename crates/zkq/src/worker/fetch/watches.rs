//! Watches: the persistent recursive watch on each lane, whose creation events feed the lane
//! caches, and the one-shot watches on claims that wake a lane when another worker lets go.

use futures::stream::FuturesUnordered;
use futures::FutureExt;
use tokio::sync::mpsc;
use zookeeper_client as zk;

use crate::error::{Error, Result};

use super::{Fetcher, LaneEvent, LaneId};

/// A partition of a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PartitionId {
    pub(super) queue: String,
    pub(super) partition: u32,
}

/// A claims folder to watch, and the partition whose lanes its change wakes.
pub(super) struct ClaimsWatch {
    pub(super) path: String,
    pub(super) wakes: PartitionId,
}

pub(super) type WatchFuture = futures::future::BoxFuture<'static, String>;

/// Forwards what a lane watch reports (job creations, other changes, reconnects) until the
/// session ends.
pub(super) async fn forward(
    mut watcher: zk::PersistentWatcher,
    lane: LaneId,
    lane_path: String,
    events: mpsc::UnboundedSender<LaneEvent>,
) {
    loop {
        let event = watcher.changed().await;
        let forwarded = match event.event_type {
            zk::EventType::NodeCreated => match job_in_lane(&lane_path, &event.path) {
                Some((segment, node)) => events.send(LaneEvent::Created {
                    lane: lane.clone(),
                    segment: segment.to_string(),
                    node: node.to_string(),
                }),
                None => events.send(LaneEvent::Touched(lane.clone())),
            },
            zk::EventType::NodeDeleted
            | zk::EventType::NodeDataChanged
            | zk::EventType::NodeChildrenChanged => events.send(LaneEvent::Touched(lane.clone())),
            zk::EventType::Session if event.session_state.is_terminated() => return,
            zk::EventType::Session if event.session_state == zk::SessionState::SyncConnected => {
                events.send(LaneEvent::Reconnected)
            }
            _ => Ok(()),
        };
        if forwarded.is_err() {
            return;
        }
    }
}

/// The segment and job names of `path` if it is a job znode of the lane at `lane_path`.
pub(super) fn job_in_lane<'a>(lane_path: &str, path: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(lane_path)?.strip_prefix('/')?;
    let (segment, node) = rest.split_once('/')?;
    (!node.contains('/') && crate::store::layout::parse_job_node(node).is_some()).then_some((segment, node))
}

impl Fetcher {
    /// Arms one-shot watches on claims `paths` that are not armed yet, all at once. Returns
    /// whether it armed any.
    pub(super) async fn arm(&mut self, mut paths: Vec<ClaimsWatch>) -> Result<bool> {
        paths.retain(|w| !self.armed.contains_key(&w.path));
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        paths.dedup_by(|a, b| a.path == b.path);
        if paths.is_empty() {
            return Ok(false);
        }
        let client = self.sessions.current();
        let results =
            futures::future::join_all(paths.iter().map(|w| client.get_and_watch_children(&w.path))).await;
        let mut armed_new = false;
        for (ClaimsWatch { path, wakes }, result) in paths.into_iter().zip(results) {
            match result {
                Ok((_, _, watcher)) => {
                    self.armed.insert(path.clone(), wakes);
                    self.fired().push(
                        async move {
                            watcher.changed().await;
                            path
                        }
                        .boxed(),
                    );
                    armed_new = true;
                }
                // No claims directory yet: nothing to wait for.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(Error::zk("watch", path, e)),
            }
        }
        Ok(armed_new)
    }

    /// A claims watch on `path` fired: the lanes of its partition are worth listing again.
    pub(super) fn woken(&mut self, path: &str) {
        if let Some(woken) = self.armed.remove(path) {
            for (id, cache) in self.lanes.iter_mut() {
                if id.partition == woken.partition && id.queue == woken.queue {
                    cache.stale = true;
                }
            }
        }
    }

    pub(super) fn fired(&mut self) -> &mut FuturesUnordered<WatchFuture> {
        self.fired.get_mut().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::job_in_lane;

    #[test]
    fn job_paths_are_told_from_segments_and_markers() {
        let lane = "/zkq/queues/q/p/3/l0";
        assert_eq!(
            job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001/j-0000000042"),
            Some(("s-0000000001", "j-0000000042"))
        );
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001"), None);
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0/s-0000000001/open"), None);
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l01/s-0000000001/j-1"), None);
        let named = "j-0b1c2d3e67e55044-0000000003";
        assert_eq!(
            job_in_lane(lane, &format!("/zkq/queues/q/p/3/l0/s-0000000001/{named}")),
            Some(("s-0000000001", named))
        );
        assert_eq!(job_in_lane(lane, "/zkq/queues/q/p/3/l0"), None);
    }
}

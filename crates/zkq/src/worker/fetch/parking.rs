//! Parking: jobs whose lock key is busy wait here, unclaimed, until the key's holder node goes.

use std::time::Duration;

use tokio::sync::mpsc;
use zookeeper_client as zk;

use crate::claim::Candidate;
use crate::recipes::line;

use super::{AbortOnDrop, Fetcher, LaneEvent, LaneId};

/// Hands jobs whose lock key is busy back to the fetcher.
///
/// Such a job is not claimed (so it holds no slot and uses no attempt) and is not offered again
/// until the key's current holder node is gone: the fetcher watches that one node per key, and
/// then puts the key's jobs back at the front of their lanes, in the order they were found.
/// Jobs of other keys, and jobs without a key, are offered as usual meanwhile.
#[derive(Debug, Clone)]
pub(crate) struct Parking(pub(super) mpsc::UnboundedSender<LaneEvent>);

impl Parking {
    pub(crate) fn park(&self, key: String, candidate: Candidate) {
        let _ = self.0.send(LaneEvent::Park { key, candidate });
    }
}

/// Jobs waiting for one lock key, and the watch on its holder.
pub(super) struct Parked {
    jobs: Vec<Candidate>,
    _watch: AbortOnDrop,
}

/// Reports `key` free once the node holding its lock (the lowest in `dir`) is gone. When the
/// holder cannot be watched, reports it free after a pause: the worker tries the lock again,
/// which is safe, only not free.
pub(super) async fn watch_key(
    reader: zk::Client,
    dir: String,
    key: String,
    events: mpsc::UnboundedSender<LaneEvent>,
) {
    loop {
        let holder = match reader.list_children(&dir).await {
            Ok(children) => children.into_iter().min_by_key(|c| line::sequence_of(c)),
            Err(zk::Error::NoNode) => None,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                None
            }
        };
        let Some(holder) = holder else { break };
        match reader.check_and_watch_stat(&format!("{dir}/{holder}")).await {
            // Gone between the listing and the watch: look again.
            Ok((None, _)) => continue,
            Ok((Some(_), watcher)) => {
                watcher.changed().await;
                break;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
        }
    }
    let _ = events.send(LaneEvent::KeyFree(key));
}

impl Fetcher {
    pub(super) fn park(&mut self, key: String, candidate: Candidate) {
        let parked = self.parked.entry(key.clone()).or_insert_with(|| {
            let watch = watch_key(
                self.sessions.current().clone(),
                self.layout.lock(&key),
                key,
                self.events_tx.clone(),
            );
            Parked {
                jobs: Vec::new(),
                _watch: AbortOnDrop(tokio::spawn(watch)),
            }
        });
        parked.jobs.push(candidate);
    }

    /// Puts the jobs parked on `key` back at the front of their lanes, oldest first.
    pub(super) fn unpark(&mut self, key: &str) {
        let Some(parked) = self.parked.remove(key) else {
            return;
        };
        for mut candidate in parked.jobs.into_iter().rev() {
            candidate.held = None;
            let id = LaneId {
                queue: candidate.queue.clone(),
                partition: candidate.partition,
                lane: candidate.lane,
            };
            // A lane forgotten meanwhile belongs to another worker now.
            if let Some(cache) = self.lanes.get_mut(&id) {
                cache.ready.push_front(candidate);
            }
        }
    }
}

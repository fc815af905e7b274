//! Segments: bounded runs of sequential job znodes, each written by one producer.
//!
//! # Design
//! A lane (`p/<partition>/l<lane>`) holds segments `s-<seq>`; a segment holds ready jobs
//! `j-<seq>`. A producer creates its own segment (a sequential znode, so segments sort in
//! creation order) and is the only one to append to it. Because it is the only writer, it
//! counts exactly how many children it made, and stops at the segment size: no segment ever
//! has more children than the segment size, whatever the number of producers, without any
//! coordination between them.
//!
//! While the producer may still append, the segment holds an EPHEMERAL `open` marker, created
//! in the same `multi` as the first jobs and deleted in the same `multi` as the last ones.
//! Consumers delete a segment once it has no children at all: no jobs left and nobody writing.
//! A producer that crashes loses its markers with its session, so its segments drain and go.
//!
//! Races are harmless: if a consumer deletes a segment that a producer was about to use (it
//! was empty), the producer's `multi` fails as a whole with `NoNode`; the producer forgets the
//! segment and retries into a fresh one. Nothing is half-written.
//!
//! Jobs are in FIFO order within a segment and segments in creation order within a lane. With
//! several producers writing one lane at the same time, jobs are ordered per producer, and
//! between producers by segment.

use std::collections::HashMap;

use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::store::layout::{Layout, OPEN_MARKER};
use crate::store::txn::{NodeKind, Op};

/// A ready job to create: its znode name prefix ([`crate::store::layout::job_node_prefix`])
/// and its encoded record.
pub(crate) type NamedRecord = (String, Vec<u8>);

/// Where a job lands: queue, partition and lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct LaneKey {
    pub queue: String,
    pub partition: u32,
    pub lane: u8,
}

#[derive(Debug)]
struct OpenSegment {
    path: String,
    /// Jobs appended or reserved so far.
    used: u32,
    /// Whether some `multi` already carries the create of the `open` marker.
    marker_requested: bool,
}

/// The segments one producer is appending to, one per lane it wrote to.
#[derive(Debug, Default)]
pub(crate) struct Segments {
    open: HashMap<LaneKey, OpenSegment>,
}

impl Segments {
    /// Adds to `ops` the creates of `jobs` (node name prefix and encoded job record) into `key`'s lane, opening new
    /// segments as needed (which costs a round trip each). Returns the segment paths it used, to
    /// [`Segments::forget`] if the `multi` fails.
    pub(crate) async fn append(
        &mut self,
        client: &zk::Client,
        layout: &Layout,
        key: &LaneKey,
        segment_size: u32,
        jobs: Vec<NamedRecord>,
        ops: &mut Vec<Op>,
    ) -> Result<Vec<String>> {
        // The marker is a child too, so a segment holds at most `segment_size - 1` jobs.
        let capacity = segment_size.saturating_sub(1).max(1);
        let mut used_paths = Vec::new();
        let mut jobs = jobs.into_iter().peekable();
        while jobs.peek().is_some() {
            let segment = match self.open.get_mut(key) {
                Some(s) if s.used < capacity => s,
                _ => {
                    let path = create_segment(client, layout, key).await?;
                    self.open.insert(
                        key.clone(),
                        OpenSegment {
                            path,
                            used: 0,
                            marker_requested: false,
                        },
                    );
                    self.open
                        .get_mut(key)
                        .ok_or_else(|| Error::InvalidJob("segment vanished".into()))?
                }
            };
            used_paths.push(segment.path.clone());
            let room = capacity - segment.used;
            let mut taken = 0;
            let mut creates = Vec::new();
            while taken < room {
                let Some((name, data)) = jobs.next() else { break };
                creates.push(Op::Create {
                    path: format!("{}/{name}", segment.path),
                    data,
                    kind: NodeKind::Sequential,
                });
                taken += 1;
            }
            segment.used += taken;
            let fills = segment.used >= capacity;
            let marker = format!("{}/{OPEN_MARKER}", segment.path);
            match (segment.marker_requested, fills) {
                // First and last batch at once: the segment never needs a marker.
                (false, true) => ops.extend(creates),
                (false, false) => {
                    segment.marker_requested = true;
                    ops.push(Op::Create {
                        path: marker,
                        data: Vec::new(),
                        kind: NodeKind::Ephemeral,
                    });
                    ops.extend(creates);
                }
                (true, true) => {
                    ops.extend(creates);
                    ops.push(Op::Delete {
                        path: marker,
                        version: None,
                    });
                }
                (true, false) => ops.extend(creates),
            }
            if fills {
                self.open.remove(key);
            }
        }
        Ok(used_paths)
    }

    /// Stops appending to the given segments after a failed `multi`: the next append opens a
    /// fresh one. Returns the markers that may exist and should be deleted.
    pub(crate) fn forget(&mut self, paths: &[String]) -> Vec<String> {
        let mut markers = Vec::new();
        self.open.retain(|_, s| {
            let keep = !paths.contains(&s.path);
            if !keep && s.marker_requested {
                markers.push(format!("{}/{OPEN_MARKER}", s.path));
            }
            keep
        });
        markers
    }

    /// Every marker this producer may hold, to delete on close.
    pub(crate) fn drain_markers(&mut self) -> Vec<String> {
        self.open
            .drain()
            .filter(|(_, s)| s.marker_requested)
            .map(|(_, s)| format!("{}/{OPEN_MARKER}", s.path))
            .collect()
    }
}

async fn create_segment(client: &zk::Client, layout: &Layout, key: &LaneKey) -> Result<String> {
    let lane = layout.lane(&key.queue, key.partition, key.lane);
    let prefix = format!("{lane}/s-");
    let sequential = layout.acl().options(zk::CreateMode::PersistentSequential);
    match client.create(&prefix, &[], &sequential).await {
        Ok((_, seq)) => Ok(format!("{prefix}{seq}")),
        Err(zk::Error::NoNode) => Err(Error::InvalidConfig(format!(
            "lane {lane} does not exist: the queue {} is missing or was created with fewer partitions or priorities",
            key.queue
        ))),
        Err(e) => Err(Error::zk("create segment", prefix, e)),
    }
}

//! Group commit: independent writes from many tasks share `multi`s.
//!
//! An attempt's ack is a few operations that must commit together, but not together with any
//! other attempt's. The batcher queues such groups and commits whatever is queued as one `multi`
//! (bounded in operations and bytes), with a few `multi`s in flight. When ZooKeeper keeps up, a
//! group leaves at once, alone; when it does not, groups queue behind the `multi`s in flight and
//! leave together, so one replicated write settles many jobs. Latency stays that of one round
//! trip at low load, and throughput grows with load.
//!
//! A `multi` is all or nothing: when one group fails (its claim was lost), the others in the same
//! `multi` were not written either. The failing group gets its error and the rest are sent again
//! without it, so a lost claim never costs another job its ack.

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use zookeeper_client as zk;

use crate::limits::MAX_REQUEST_BYTES;
use crate::store::acl::AclPolicy;
use crate::store::txn::{self, Op, TxnError};

/// Most operations in one `multi`.
const MAX_OPS: usize = 512;

/// Most bytes in one `multi`, leaving room under the request limit for a group that is large.
const MAX_BYTES: usize = MAX_REQUEST_BYTES / 2;

/// `multi`s in flight at once. More groups wait and leave together.
const IN_FLIGHT: usize = 2;

/// Operations that commit atomically, and where to send the outcome.
struct Group {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<(), TxnError>>,
}

/// Commits groups of operations, sharing `multi`s between them. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Group>,
}

impl Batcher {
    /// A batcher on `client`, and the task that runs it (spawn it; it ends when every
    /// [`Batcher`] is dropped and the queued groups are committed).
    pub(crate) fn new(
        client: zk::Client,
        acl: AclPolicy,
    ) -> (Batcher, impl std::future::Future<Output = ()> + Send) {
        let (queue, groups) = mpsc::unbounded_channel();
        (Batcher { queue }, run(client, acl, groups))
    }

    /// Commits `ops` atomically, possibly in one `multi` with other groups. A failure's index is
    /// into `ops`.
    pub(crate) async fn commit(&self, ops: Vec<Op>) -> Result<(), TxnError> {
        let (reply, outcome) = oneshot::channel();
        let stopped = || TxnError {
            index: None,
            source: zk::Error::ClientClosed,
        };
        self.queue.send(Group { ops, reply }).map_err(|_| stopped())?;
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

async fn run(client: zk::Client, acl: AclPolicy, mut groups: mpsc::UnboundedReceiver<Group>) {
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            first = groups.recv(), if open && in_flight.len() < IN_FLIGHT => match first {
                Some(first) => {
                    let mut batch = vec![first];
                    let (mut ops, mut bytes) = size(&batch[0]);
                    while ops < MAX_OPS && bytes < MAX_BYTES {
                        let Ok(next) = groups.try_recv() else { break };
                        let (o, b) = size(&next);
                        ops += o;
                        bytes += b;
                        batch.push(next);
                    }
                    in_flight.push(commit_batch(&client, &acl, batch));
                }
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

fn size(group: &Group) -> (usize, usize) {
    (group.ops.len(), group.ops.iter().map(Op::wire_size).sum())
}

/// Commits `batch` in one `multi`, sending it again without each group that fails.
async fn commit_batch(client: &zk::Client, acl: &AclPolicy, mut batch: Vec<Group>) {
    while !batch.is_empty() {
        let ops: Vec<Op> = batch.iter().flat_map(|g| g.ops.iter().cloned()).collect();
        let err = match txn::commit(client, acl, &ops).await {
            Ok(_) => {
                for group in batch {
                    let _ = group.reply.send(Ok(()));
                }
                return;
            }
            Err(err) => err,
        };
        // The group that holds the failing operation, and the index within it.
        let culprit = err.index.and_then(|mut index| {
            batch
                .iter()
                .position(|g| {
                    if index < g.ops.len() {
                        true
                    } else {
                        index -= g.ops.len();
                        false
                    }
                })
                .map(|g| (g, index))
        });
        match culprit {
            // A group's own operation failed: it alone gets the error.
            Some((g, index)) if batch.len() > 1 && is_conflict(&err.source) => {
                let group = batch.remove(g);
                let _ = group.reply.send(Err(TxnError {
                    index: Some(index),
                    source: err.source,
                }));
            }
            // The request as a whole failed (connection, session), or only one group was in it.
            _ => {
                for (g, group) in batch.into_iter().enumerate() {
                    let index = culprit.filter(|(c, _)| *c == g).map(|(_, i)| i);
                    let _ = group.reply.send(Err(TxnError {
                        index,
                        source: err.source.clone(),
                    }));
                }
                return;
            }
        }
    }
}

/// Failures that belong to one operation's own state, not to the request or the session.
fn is_conflict(e: &zk::Error) -> bool {
    crate::store::txn::lost_race(e) || matches!(e, zk::Error::NodeExists | zk::Error::NotEmpty)
}

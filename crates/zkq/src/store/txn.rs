//! An owned list of ZooKeeper write operations committed as one `multi`.
//!
//! Building the list apart from the client lets a protocol step add its operations (a delete of
//! a claim, a version check) to another step's (the create of a job) so that both commit
//! atomically, and lets a failure be traced back to the operation that caused it.

use std::future::Future;

use zookeeper_client as zk;

use crate::error::Error;

use crate::store::acl::AclPolicy;

/// What kind of znode a create makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeKind {
    Persistent,
    /// The server appends a 10-digit sequence number to the name.
    Sequential,
    /// Deleted when the creating session ends.
    Ephemeral,
}

/// One write in a transaction.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    Create {
        path: String,
        data: Vec<u8>,
        kind: NodeKind,
    },
    Delete {
        path: String,
        version: Option<i32>,
    },
    SetData {
        path: String,
        data: Vec<u8>,
        version: Option<i32>,
    },
    /// Fails the `multi` unless the znode's data version is `version` (epoch fencing).
    Check {
        path: String,
        version: i32,
    },
}

impl Op {
    pub(crate) fn path(&self) -> &str {
        match self {
            Op::Create { path, .. }
            | Op::Delete { path, .. }
            | Op::SetData { path, .. }
            | Op::Check { path, .. } => path,
        }
    }

    /// Bytes this operation adds to the request, roughly (path, data and framing).
    pub(crate) fn wire_size(&self) -> usize {
        let data = match self {
            Op::Create { data, .. } | Op::SetData { data, .. } => data.len(),
            _ => 0,
        };
        self.path().len() + data + 40
    }
}

/// Whether a write lost a race: a node it expected was gone (`NoNode`) or had been changed
/// (`BadVersion`) by someone else first. This is how a guarded write fails once its guard (a
/// version, a claim, a lock node) no longer holds: a normal outcome, not an error to retry.
pub(crate) fn lost_race(e: &zk::Error) -> bool {
    matches!(e, zk::Error::NoNode | zk::Error::BadVersion)
}

/// Why a transaction failed.
#[derive(Debug)]
pub(crate) struct TxnError {
    /// The operation that failed, when the server named one.
    pub index: Option<usize>,
    pub source: zk::Error,
}

impl TxnError {
    /// The path of the operation that failed ("" when the server named none).
    pub(crate) fn path<'a>(&self, ops: &'a [Op]) -> &'a str {
        self.index.and_then(|i| ops.get(i)).map(Op::path).unwrap_or("")
    }

    /// An [`Error`] naming what was done and the path that failed.
    pub(crate) fn into_error(self, what: &'static str, ops: &[Op]) -> Error {
        let path = self.path(ops).to_string();
        let failed = self.index.and_then(|i| ops.get(i));
        match (self.source, failed) {
            // The failed operation tells the permission it needed.
            (zk::Error::NoAuth, Some(op)) => {
                let verb = match op {
                    Op::Create { .. } => "create",
                    Op::Delete { .. } => "delete",
                    Op::SetData { .. } => "write",
                    Op::Check { .. } => "check",
                };
                let (permission, on) = crate::error::Permission::needed_for(verb, op.path());
                Error::NotAuthorized {
                    op: what,
                    path: op.path().to_string(),
                    permission,
                    on,
                }
            }
            (source, _) => Error::zk(what, path, source),
        }
    }
}

/// Starts committing `ops` as one `multi`. The request is sent before this returns (the client
/// orders requests at call time), so callers can order commits under a lock without holding it
/// across the round trip. An empty list commits nothing.
///
/// A lone create (a single-job enqueue, most of the time) goes out as a plain `create`: the same
/// write, atomic all the same, but cheaper for the server than a `multi` around it.
pub(crate) fn commit<'a>(
    client: &'a zk::Client,
    acl: &'a AclPolicy,
    ops: &'a [Op],
) -> impl Future<Output = Result<Vec<zk::MultiWriteResult>, TxnError>> + Send + 'a {
    let sent = match ops {
        [Op::Create { path, data, kind }] => {
            let kind = *kind;
            let created = client.create(path, data, &acl.options(mode(kind)));
            let path = path.clone();
            futures::future::Either::Left(async move {
                match created.await {
                    Ok((stat, sequence)) => Ok(vec![zk::MultiWriteResult::Create {
                        path: match kind {
                            NodeKind::Sequential => format!("{path}{sequence}"),
                            _ => path,
                        },
                        stat,
                    }]),
                    Err(source) => Err(TxnError {
                        index: Some(0),
                        source,
                    }),
                }
            })
        }
        _ => {
            let sent = build(client, acl, ops).map(|mut multi| multi.commit());
            futures::future::Either::Right(async move {
                let sent = sent?;
                sent.await.map_err(|e| match e {
                    zk::MultiWriteError::OperationFailed { index, source } => TxnError {
                        index: Some(index),
                        source,
                    },
                    zk::MultiWriteError::RequestFailed { source } => TxnError { index: None, source },
                })
            })
        }
    };
    sent
}

fn mode(kind: NodeKind) -> zk::CreateMode {
    match kind {
        NodeKind::Persistent => zk::CreateMode::Persistent,
        NodeKind::Sequential => zk::CreateMode::PersistentSequential,
        NodeKind::Ephemeral => zk::CreateMode::Ephemeral,
    }
}

fn build<'a>(client: &'a zk::Client, acl: &AclPolicy, ops: &[Op]) -> Result<zk::MultiWriter<'a>, TxnError> {
    let mut multi = client.new_multi_writer();
    for (index, op) in ops.iter().enumerate() {
        let added = match op {
            Op::Create { path, data, kind } => multi.add_create(path, data, &acl.options(mode(*kind))),
            Op::Delete { path, version } => multi.add_delete(path, *version),
            Op::SetData { path, data, version } => multi.add_set_data(path, data, *version),
            Op::Check { path, version } => multi.add_check_version(path, *version),
        };
        added.map_err(|source| TxnError {
            index: Some(index),
            source,
        })?;
    }
    Ok(multi)
}

//! Infrastructure errors: everything that can go wrong around a job, never the job's own outcome
//! (that is [`crate::Outcome`]).

use zookeeper_client as zk;

/// The result type of zkq operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to ZooKeeper or validating input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A queue, kind, header or lock key name breaks the naming rules.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    /// A job's encoded size is over the limit; nothing was sent.
    #[error("job payload is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },

    /// A job field has a value the queue cannot take; nothing was sent.
    #[error("invalid job: {0}")]
    InvalidJob(String),

    /// A setting (of a queue, a worker, a schedule or a singleton) is not acceptable, or the
    /// environment it needs is missing.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// What was asked for does not exist: a queue, a dead letter, a job.
    #[error("{0}")]
    NotFound(String),

    /// Another live worker is registered under this worker's id: ids must be unique in the
    /// fleet.
    #[error("worker id {id:?} is already registered by a live worker; ids must be unique in the fleet")]
    WorkerIdInUse { id: String },

    /// Bytes in a znode are not what zkq wrote there.
    #[error("cannot decode {what} at {path}: {reason}")]
    Decode {
        what: &'static str,
        path: String,
        reason: String,
    },

    /// No session could be established.
    #[error("cannot reach ZooKeeper at {address}: {reason}")]
    Unreachable { address: String, reason: String },

    /// The request may or may not have been applied: the connection dropped while it was in
    /// flight. Job ids are UUIDs, so a caller can look before retrying.
    #[error("outcome unknown for {op} (connection lost while in flight): {source}")]
    OutcomeUnknown { op: &'static str, source: zk::Error },

    /// The ZooKeeper session is gone (expired or closed); ephemerals and claims went with it.
    #[error("ZooKeeper session lost: {0}")]
    SessionLost(zk::Error),

    /// A leader-only write failed its epoch check: a newer leader holds the epoch.
    #[error("fenced: epoch {epoch} is no longer current")]
    Fenced { epoch: i32 },

    /// A write guarded by a lock failed its check: the lock is not held any more (released, or
    /// its session ended and another holder may have it).
    #[error("lock on {key:?} is no longer held")]
    LockLost { key: String },

    /// ZooKeeper refused a request: the ACL of `on` does not grant this session's identities
    /// `permission` (creating or deleting a znode needs a permission on its parent).
    #[error(
        "ZooKeeper refused {op} on {path}: not authorized: the identities of this session lack the \
         {permission} permission on {on}. Give credentials that have it (--auth, ZKQ_AUTH or \
         --auth-file), or have the owner of {on} grant it"
    )]
    NotAuthorized {
        op: &'static str,
        path: String,
        permission: Permission,
        on: String,
    },

    /// Any other ZooKeeper error, with the operation and path it happened on.

    #[error("ZooKeeper {op} on {path} failed: {source}")]
    Zk {
        op: &'static str,
        path: String,
        source: zk::Error,
    },
}

impl Error {
    /// The path and cause of a write that lost a race ([`crate::store::txn::lost_race`]), if that is
    /// what this error is.
    pub(crate) fn lost_race(&self) -> Option<(&str, &zk::Error)> {
        match self {
            Error::Zk { path, source, .. } if crate::store::txn::lost_race(source) => Some((path, source)),
            _ => None,
        }
    }

    /// Wraps a ZooKeeper error with what was being done, classifying the ones that need
    /// different handling (unknown outcome, lost session).
    pub(crate) fn zk(op: &'static str, path: impl Into<String>, source: zk::Error) -> Error {
        match source {
            // The client reports a connection that broke under a request as a custom error
            // ("no response from connection", I/O errors): the outcome is unknown just the same.
            source if outcome_unknown(&source) => Error::OutcomeUnknown { op, source },
            zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::SessionMoved => {
                Error::SessionLost(source)
            }
            zk::Error::NoAuth => {
                let path = path.into();
                let (permission, on) = Permission::needed_for(op, &path);
                Error::NotAuthorized {
                    op,
                    path,
                    permission,
                    on,
                }
            }
            source => Error::Zk {
                op,
                path: path.into(),
                source,
            },
        }
    }

    /// Whether the request may or may not have been applied ([`Error::OutcomeUnknown`]).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, Error::OutcomeUnknown { .. })
    }

    /// Whether the session behind the request is gone for good.
    pub fn is_session_lost(&self) -> bool {
        matches!(self, Error::SessionLost(_))
    }
}

/// A ZooKeeper permission (an ACL grants some of them to an identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read a znode's data and list its children.
    Read,
    /// Set a znode's data.
    Write,
    /// Create children.
    Create,
    /// Delete children.
    Delete,
    /// Set the ACL.
    Admin,
    /// One of those, not known which (a request of several kinds).
    Some,
}

impl Permission {
    /// The permission a refused request needed, and the znode whose ACL refused it: the parent,
    /// to create or delete. Told from the operation's name (zkq names them by verb: "create
    /// segment", "read job", "bump epoch").
    pub(crate) fn needed_for(op: &str, path: &str) -> (Permission, String) {
        let parent = || match path.rsplit_once('/') {
            Some(("", _)) | None => "/".to_string(),
            Some((parent, _)) => parent.to_string(),
        };
        match op.split_whitespace().next().unwrap_or_default() {
            "create" | "register" => (Permission::Create, parent()),
            "delete" | "release" | "remove" | "purge" => (Permission::Delete, parent()),
            "write" | "bump" | "set" | "update" => (Permission::Write, path.to_string()),
            "read" | "list" | "watch" | "get" | "check" | "sync" => (Permission::Read, path.to_string()),
            "acl" => (Permission::Admin, path.to_string()),
            _ => (Permission::Some, path.to_string()),
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permission::Read => "READ",
            Permission::Write => "WRITE",
            Permission::Create => "CREATE",
            Permission::Delete => "DELETE",
            Permission::Admin => "ADMIN",
            Permission::Some => "needed",
        })
    }
}

/// Whether a request that failed with `e` may have been applied all the same: the connection
/// broke with it in flight. The client reports that as a connection loss, a timeout, or a custom
/// error ("no response from connection", I/O errors).
pub(crate) fn outcome_unknown(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_)
    )
}

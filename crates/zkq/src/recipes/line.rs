//! Waiting in line: EPHEMERAL_SEQUENTIAL nodes under one directory, served in sequence order.
//! Leader election and locks are both this line.
//!
//! Each waiter watches only the node just ahead of it, so a departure wakes exactly one process
//! (no herd effect). A holder knows it still holds its place only while its connection is
//! `SyncConnected` and its node exists: [`watch_held`] tells it as soon as either is in doubt.

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;
use zookeeper_client as zk;

use crate::error::{Error, Result};

/// Where a node stands in its line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// It is served.
    First,
    /// It waits for the node at this path.
    Behind(String),
}

/// Where `me` (a child name of `dir`) stands in the line under `dir`.
///
/// # Errors
/// [`Error::SessionLost`] when `me` is not in line any more (its session ended, or somebody
/// deleted it).
pub(crate) async fn place(client: &zk::Client, dir: &str, me: &str) -> Result<Place> {
    let mut line = client
        .list_children(dir)
        .await
        .map_err(|e| Error::zk("list line", dir, e))?;
    line.sort_by_key(|n| sequence_of(n));
    match line.iter().position(|n| n == me) {
        None => Err(Error::SessionLost(zk::Error::NoNode)),
        Some(0) => Ok(Place::First),
        Some(i) => Ok(Place::Behind(format!("{dir}/{}", line[i - 1]))),
    }
}

/// How waiting for a predecessor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// The predecessor was gone already: look at the line again.
    Gone,
    /// Its watch fired (it is gone or changed): look at the line again.
    Woken,
    /// The deadline passed first.
    TimedOut,
}

/// Waits until the node at `predecessor` is gone (or changes), the deadline passes, or the
/// session ends.
///
/// # Errors
/// [`Error::SessionLost`] when the session ends while waiting.
pub(crate) async fn wait_for(
    client: &zk::Client,
    predecessor: &str,
    deadline: Option<Instant>,
) -> Result<Waited> {
    let mut states = client.state_watcher();
    let (stat, watcher) = client
        .check_and_watch_stat(predecessor)
        .await
        .map_err(|e| Error::zk("watch predecessor", predecessor, e))?;
    if stat.is_none() {
        return Ok(Waited::Gone);
    }
    let timeout = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = watcher.changed() => Ok(Waited::Woken),
        _ = timeout => Ok(Waited::TimedOut),
        state = session_ended(&mut states) => Err(Error::SessionLost(state)),
    }
}

/// Cancels `lost` as soon as holding `node` is in doubt: the connection leaves
/// `SyncConnected`, or the node is deleted.
pub(crate) async fn watch_held(client: zk::Client, node: String, lost: CancellationToken) {
    let mut states = client.state_watcher();
    if states.peek_state() != zk::SessionState::SyncConnected {
        lost.cancel();
        return;
    }
    let node_gone = async {
        loop {
            match client.check_and_watch_stat(&node).await {
                Ok((Some(_), watcher)) => {
                    if watcher.changed().await.event_type == zk::EventType::NodeDeleted {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    tokio::select! {
        _ = node_gone => {}
        _ = async {
            loop {
                if states.changed().await != zk::SessionState::SyncConnected {
                    return;
                }
            }
        } => {}
    }
    info!(%node, "place in line lost");
    lost.cancel();
}

/// The sequence number of a node name (`<prefix>-<seq>`); unparsable names sort last.
pub(crate) fn sequence_of(name: &str) -> i64 {
    name.rsplit_once('-')
        .and_then(|(_, s)| s.parse::<i64>().ok())
        .unwrap_or(i64::MAX)
}

/// Resolves when the session ends for good.
pub(crate) async fn session_ended(states: &mut zk::StateWatcher) -> zk::Error {
    // A session already over sends no more changes: look before waiting for one.
    let mut state = states.peek_state();
    while !state.is_terminated() {
        state = states.changed().await;
    }
    match state {
        zk::SessionState::Closed => zk::Error::ClientClosed,
        _ => zk::Error::SessionExpired,
    }
}

#[cfg(test)]
mod tests {
    use super::sequence_of;

    #[test]
    fn nodes_sort_by_their_sequence_whatever_their_prefix() {
        assert_eq!(sequence_of("c-0000000007"), 7);
        assert_eq!(sequence_of("l-3f2a9c-0000000012"), 12);
        assert!(sequence_of("l-3f2a9c-0000000012") > sequence_of("l-ffff-0000000003"));
        assert_eq!(sequence_of("garbage"), i64::MAX);
    }
}

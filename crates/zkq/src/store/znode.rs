//! Znode helpers shared by the modules: paths made with their ancestors, deletes
//! that must land, and batched reads.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use zookeeper_client as zk;

use crate::error::{Error, Result};

use super::acl::AclPolicy;
use super::session::connected;
use crate::error::outcome_unknown;

/// Stat requests in flight in [`stat_children`].
const STATS_IN_FLIGHT: usize = 256;

/// The children of `dir`; none when `dir` does not exist.
pub(crate) async fn children(client: &zk::Client, dir: &str) -> Result<Vec<String>> {
    match client.list_children(dir).await {
        Ok(children) => Ok(children),
        Err(zk::Error::NoNode) => Ok(Vec::new()),
        Err(e) => Err(Error::zk("list", dir, e)),
    }
}

/// The stat of each of `names` under `dir`, the requests pipelined; those gone meanwhile are
/// left out.
pub(crate) async fn stat_children(
    client: &zk::Client,
    dir: &str,
    names: Vec<String>,
) -> Result<Vec<(String, zk::Stat)>> {
    let stats: Vec<Result<Option<(String, zk::Stat)>>> = stream::iter(names)
        .map(|name| async move {
            let path = format!("{dir}/{name}");
            match client.check_stat(&path).await {
                Ok(stat) => Ok(stat.map(|s| (name, s))),
                Err(e) => Err(Error::zk("stat", path, e)),
            }
        })
        .buffer_unordered(STATS_IN_FLIGHT)
        .collect()
        .await;
    let mut out = Vec::with_capacity(stats.len());
    for stat in stats {
        out.extend(stat?);
    }
    Ok(out)
}

/// Creates `path` and its missing ancestors as empty persistent znodes with the ACL `acl`.
pub(crate) async fn ensure_path(client: &zk::Client, acl: &AclPolicy, path: &str) -> Result<()> {
    match client.check_stat(path).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(Error::zk("stat", path, e)),
    }
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match client
            .create(&prefix, &[], &acl.options(zk::CreateMode::Persistent))
            .await
        {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(Error::zk("create", prefix, e)),
        }
    }
    Ok(())
}

/// Deletes the ephemeral `path` of `client`'s session (a lock node, a place in line) for sure:
/// the delete is sent at once, and when the connection drops with it in flight, it is sent again
/// once the connection is back, until it lands or the session is over (which deletes the node
/// anyway). A delete lost with the connection would otherwise leave the node for as long as the
/// session lives: a lock never released. Without a runtime, the delete is only sent.
///
/// Only a lost reply is retried, and never without waiting a little first: once the client's
/// own task is gone (its runtime shut down before this one), every request fails at once while
/// the last state seen is still "connected", and retrying at once would keep this task running
/// forever, and its runtime from ever shutting down.
pub(crate) fn delete_surely(client: &zk::Client, path: String) {
    let first = client.delete(&path, None);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        drop(first);
        return;
    };
    let client = client.clone();
    runtime.spawn(async move {
        let mut sent = first.await;
        let mut pause = Duration::from_millis(10);
        loop {
            match sent {
                Err(e) if outcome_unknown(&e) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    if connected(&client).await.is_err() {
                        return;
                    }
                    sent = client.delete(&path, None).await;
                }
                // Done, gone already, the session over, or an error no retry can mend.
                _ => return,
            }
        }
    });
}

/// Most reads in one multi-read.
const READ_BATCH: usize = 64;

/// The data and stat of each of `paths`, in order, read in multi-reads that are all sent at once;
/// `None` for a znode that is gone.
pub(crate) async fn get_many(
    client: &zk::Client,
    what: &'static str,
    paths: &[String],
) -> Result<Vec<Option<(Vec<u8>, zk::Stat)>>> {
    let mut sent = Vec::new();
    for chunk in paths.chunks(READ_BATCH) {
        let mut reader = client.new_multi_reader();
        for path in chunk {
            reader.add_get_data(path).map_err(|e| Error::zk(what, path, e))?;
        }
        let first = chunk.first().cloned().unwrap_or_default();
        let reply = reader.commit();
        sent.push(async move { reply.await.map_err(|e| Error::zk(what, first, e)) });
    }
    let mut out = Vec::with_capacity(paths.len());
    for (chunk, results) in paths
        .chunks(READ_BATCH)
        .zip(futures::future::join_all(sent).await)
    {
        for (path, result) in chunk.iter().zip(results?) {
            out.push(match result {
                zk::MultiReadResult::Data { data, stat } => Some((data, stat)),
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => None,
                // A read refused (NoAuth) is not a znode gone: say so.
                zk::MultiReadResult::Error { err } => return Err(Error::zk(what, path, err)),
                _ => None,
            });
        }
    }
    Ok(out)
}

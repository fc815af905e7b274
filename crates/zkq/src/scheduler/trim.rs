//! Trimming of dead letters by count and age, a scheduler service. Each pass also removes stray
//! persistent nodes from the queues' claims ([`claim::remove_stray`]) and stop notices nobody
//! took ([`stops::trim`]).
//!
//! Dead letters are kept for operators, but not forever: every queue says how many it keeps
//! ([`QueueConfig::dead_max`]) and for how long ([`QueueConfig::dead_max_age_ms`]). The
//! elected scheduler removes those past either limit, oldest first (by the time the znode was
//! created, which is when the job died), in fenced `multi`s.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;
use zookeeper_client as zk;

use crate::claim;
use crate::error::{Error, Result};
use crate::job::now_ms;
use crate::queue::{self, QueueConfig};
use crate::recipes::election::Leadership;
use crate::stops;
use crate::store::layout::Layout;
use crate::store::txn::Op;
use crate::store::znode;
use crate::telemetry;

use super::service::{Next, Passes};

/// Most dead letters removed in one `multi`.
const DELETE_BATCH: usize = 100;
/// Trims every queue's dead letters every `interval` until `stop` is cancelled.
///
/// # Errors
/// [`Error::Fenced`] when a newer leader holds the epoch; a lost session.
pub(crate) async fn serve(
    client: &zk::Client,
    layout: &Layout,
    leadership: &Leadership,
    interval: Duration,
    stop: &CancellationToken,
) -> Result<()> {
    let mut unreadable = queue::Unreadable::default();
    let mut passes = Passes::new(stop, "trimming dead letters failed", interval);
    while passes.ready().await {
        let result = trim_all(client, layout, leadership, &mut unreadable).await;
        passes.ended(result.map(|()| Next::After(interval)))?;
    }
    Ok(())
}

async fn trim_all(
    client: &zk::Client,
    layout: &Layout,
    leadership: &Leadership,
    unreadable: &mut queue::Unreadable,
) -> Result<()> {
    for q in queue::list(client, layout).await? {
        if let Some(config) = unreadable.load(client, layout, &q).await? {
            trim_queue(client, layout, leadership, &q, &config).await?;
            claim::remove_stray(client, layout, &q, config.partitions).await?;
        }
    }
    let untaken = stops::trim(client, layout).await?;
    if untaken > 0 {
        info!(untaken, "removed stop notices no worker took");
    }
    Ok(())
}

/// Removes the dead letters of `queue` past its limits; returns how many.
pub(crate) async fn trim_queue(
    client: &zk::Client,
    layout: &Layout,
    leadership: &Leadership,
    queue: &str,
    config: &QueueConfig,
) -> Result<usize> {
    if config.dead_max.is_none() && config.dead_max_age_ms.is_none() {
        return Ok(0);
    }
    let dir = layout.dead(queue);
    let names = znode::children(client, &dir).await?;
    let over_count = config
        .dead_max
        .map(|max| names.len().saturating_sub(max as usize))
        .unwrap_or(0);
    if over_count == 0 && config.dead_max_age_ms.is_none() {
        return Ok(0);
    }
    // (creation zxid, created ms, name), oldest first: the zxid orders deaths exactly, the
    // time says how old they are.
    let mut letters: Vec<(i64, i64, String)> = znode::stat_children(client, &dir, names)
        .await?
        .into_iter()
        .map(|(name, s)| (s.czxid, s.ctime, name))
        .collect();
    letters.sort();
    let cutoff = config
        .dead_max_age_ms
        .map(|age| now_ms().saturating_sub(age) as i64)
        .unwrap_or(i64::MIN);
    let expired = letters.iter().filter(|(_, ctime, _)| *ctime < cutoff).count();
    let doomed: Vec<&String> = letters
        .iter()
        .enumerate()
        .filter(|(i, (_, ctime, _))| *i < over_count || *ctime < cutoff)
        .map(|(_, (_, _, name))| name)
        .collect();
    let mut removed = 0;
    for chunk in doomed.chunks(DELETE_BATCH) {
        let ops: Vec<Op> = chunk
            .iter()
            .map(|name| Op::Delete {
                path: format!("{dir}/{name}"),
                version: None,
            })
            .collect();
        match leadership.commit_fenced("trim dead letters", ops).await {
            Ok(()) => removed += chunk.len(),
            // An operator removed or retried one meanwhile: the next pass gets the rest.
            Err(Error::Zk {
                source: zk::Error::NoNode,
                ..
            }) => break,
            Err(e) => return Err(e),
        }
    }
    if removed > 0 {
        metrics::counter!(telemetry::TRIMMED, "queue" => queue.to_string()).increment(removed as u64);
        info!(queue, removed, expired, over_count, "dead letters trimmed");
    }
    Ok(removed)
}

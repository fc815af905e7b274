//! Promotion of due delayed jobs (delayed enqueues and retries waiting for their backoff), at
//! their due time ([`super::due`]), less the scheduler's `promote_ahead`.
//!
//! Moving a job ahead of its due time is what makes it start on time: the move and the claim
//! that follows are two commits, each waiting for the server's log to be written to disk (a
//! few ms, and now and then hundreds when the disk stalls). A job moved `ahead` early is claimed
//! by then, and its worker starts it at its due time (`ready_at_ms`), not before
//! ([`crate::job::Job::early_by`]).
//!
//! Due entries move in `multi`s of up to 100 entries and [`MAX_REQUEST_BYTES`]:
//! `check(epoch)` + `delete(delayed entry, version)` + `create(job)` into a segment of its lane,
//! for each. The elected scheduler runs it
//! ([`crate::scheduler`]), fenced by its epoch; even without the fence, concurrent promoters
//! would be safe: the versioned delete lets exactly one of them move an entry.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{now_ms, Job};
use crate::limits::MAX_REQUEST_BYTES;
use crate::producer::{Placement, Producer};
use crate::queue::{self, QueueConfig};
use crate::recipes::election::Leadership;
use crate::store::codec;
use crate::store::layout::{self, DELAYED_BUCKET_MS};
use crate::store::txn::Op;
use crate::store::znode;
use crate::telemetry;

use super::due::DueTimes;
use super::service::{self, Next, Passes};

/// Most entries moved in one `multi`.
const PROMOTE_BATCH: usize = 100;

/// Bytes a move adds to its `multi` besides the job record and paths (ops, names, framing).
const MOVE_OVERHEAD_BYTES: usize = 512;

/// What one look at a queue's delayed jobs did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// Entries moved to their lanes.
    pub moved: usize,
    /// When the next entry is due, at the latest (the start of its bucket when that bucket
    /// was not listed); `None` when no entry waits.
    pub next_due_ms: Option<u64>,
}

/// The leader's promotion service: promotes each queue's delayed jobs when they are due (see
/// [`super::due`]), until `stop` is cancelled.
///
/// # Errors
/// [`Error::Fenced`] when a newer leader holds the epoch; a lost session.
pub(crate) async fn serve(
    producer: &Producer,
    leadership: &Leadership,
    look_again: Duration,
    ahead: Duration,
    stop: &CancellationToken,
) -> Result<()> {
    let mut due = DueTimes::new(
        producer.client().clone(),
        producer.layout().clone(),
        look_again,
        ahead,
    );
    let mut unreadable = queue::Unreadable::default();
    let mut passes = Passes::new(stop, "cannot list queues", look_again);
    while passes.ready().await {
        let pass = async {
            let queues = match due.take_due() {
                Some(queues) => queues,
                None => {
                    let all = queue::list(producer.client(), producer.layout()).await?;
                    due.watch(&all).await?;
                    all
                }
            };
            for q in queues {
                if stop.is_cancelled() {
                    break;
                }
                match promote_due(producer, &q, Some(leadership), ahead).await {
                    Ok(promoted) => {
                        unreadable.served(&q);
                        due.next(&q, promoted.next_due_ms);
                    }
                    Err(e) if queue::is_unreadable(&e) => unreadable.skip(&q, &e),
                    Err(e) if service::ends_service(&e) => return Err(e),
                    Err(e) => {
                        warn!(queue = %q, error = %e, "promoting delayed jobs failed; will retry");
                        due.next(&q, Some(now_ms() + look_again.as_millis() as u64));
                    }
                }
            }
            Ok(Next::When(Box::pin(due.wait())))
        };
        passes.ended(pass.await)?;
    }
    Ok(())
}

/// Moves every delayed job of `queue` that is due now or within `ahead` to its lane, and tells
/// when the next is due.
///
/// With a `leadership`, every move is fenced by its epoch.
///
/// # Errors
/// [`Error::Fenced`] when a newer leader holds the epoch.
pub async fn promote_due(
    producer: &Producer,
    queue: &str,
    leadership: Option<&Leadership>,
    ahead: Duration,
) -> Result<Promoted> {
    let client = producer.client();
    let layout = producer.layout();
    let config = producer.config(queue).await?;
    let delayed = layout.delayed(queue);
    let nothing = Promoted {
        moved: 0,
        next_due_ms: None,
    };
    let names = match client.list_children(&delayed).await {
        Ok(b) => b,
        Err(zk::Error::NoNode) => return Ok(nothing),
        Err(e) => return Err(Error::zk("list delayed", delayed, e)),
    };
    // In time order, not name order: a due time past the year 2286 has more digits than the
    // name's padding, and must not sort (and stop promotion) before every other bucket.
    let mut buckets: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|b| layout::parse_delayed_bucket(&b).map(|start| (start, b)))
        .collect();
    buckets.sort();
    let now = now_ms();
    let horizon = now + ahead.as_millis() as u64;
    let mut moved = 0;
    let mut next_due_ms: Option<u64> = None;
    for (start, bucket) in buckets {
        if start > horizon {
            // Its entries are due from its start on; when that comes, it is listed.
            next_due_ms = Some(next_due_ms.map_or(start, |n| n.min(start)));
            break;
        }
        let bucket_path = layout.delayed_bucket(queue, &bucket);
        let entries = match client.list_children(&bucket_path).await {
            Ok(e) => e,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(Error::zk("list delayed bucket", bucket_path, e)),
        };
        if entries.is_empty() {
            if start + DELAYED_BUCKET_MS < now {
                // A past bucket nobody writes to any more.
                drop(client.delete(&bucket_path, None));
            }
            continue;
        }
        // (entry, due ms): those due now, and the others.
        type Entries = Vec<(String, u64)>;
        let (mut due, later): (Entries, Entries) = entries
            .into_iter()
            .filter_map(|e| layout::parse_delayed_entry(&e).map(|at| (e, at)))
            .partition(|(_, at)| *at <= horizon);
        if let Some(first) = later.iter().map(|(_, at)| *at).min() {
            next_due_ms = Some(next_due_ms.map_or(first, |n| n.min(first)));
        }
        due.sort_by_key(|(_, at)| *at);
        for chunk in due.chunks(PROMOTE_BATCH) {
            let paths: Vec<String> = chunk
                .iter()
                .map(|(entry, _)| format!("{bucket_path}/{entry}"))
                .collect();
            let results = znode::get_many(client, "read delayed", &paths).await?;
            let mut moves = Vec::new();
            let mut bytes = 0;
            for ((entry, due_ms), result) in chunk.iter().zip(results) {
                let Some((data, stat)) = result else {
                    continue;
                };
                // Each `multi` stays within one request: a move carries the whole job record.
                let size = data.len() + 2 * bucket_path.len() + MOVE_OVERHEAD_BYTES;
                if !moves.is_empty() && bytes + size > MAX_REQUEST_BYTES - MOVE_OVERHEAD_BYTES {
                    moved += commit_moves(producer, queue, &config, leadership, std::mem::take(&mut moves))
                        .await?;
                    bytes = 0;
                }
                bytes += size;
                let path = format!("{bucket_path}/{entry}");
                let delete = Op::Delete {
                    path: path.clone(),
                    version: Some(stat.version),
                };
                match codec::decode::<Job>(&path, &data) {
                    Ok(mut job) => {
                        job.ready_at_ms = *due_ms;
                        moves.push((vec![delete], Some(Placement::Ready(job))));
                    }
                    Err(e) => {
                        let dead = Job::undecodable(data, &e.to_string());
                        warn!(%path, error = %e, "undecodable delayed entry moved to dead letters");
                        moves.push((
                            vec![delete, crate::producer::dead_letter_op(layout, queue, &dead)?],
                            None,
                        ));
                    }
                }
            }
            moved += commit_moves(producer, queue, &config, leadership, moves).await?;
        }
    }
    if moved > 0 {
        metrics::counter!(telemetry::PROMOTED, "queue" => queue.to_string()).increment(moved as u64);
        debug!(queue, moved, "promoted delayed jobs");
    }
    Ok(Promoted { moved, next_due_ms })
}

/// Commits the moves as one `multi`; if another promoter got some of them first, moves the
/// rest one by one.
async fn commit_moves(
    producer: &Producer,
    queue: &str,
    config: &QueueConfig,
    leadership: Option<&Leadership>,
    moves: Vec<(Vec<Op>, Option<Placement>)>,
) -> Result<usize> {
    let fenced = |e: Error| match leadership {
        Some(l) => l.fenced(e),
        None => e,
    };
    let count = moves.len();
    let (extra, placements) = flatten(leadership, moves.clone());
    match producer
        .commit(queue, config, placements, extra)
        .await
        .map_err(fenced)
    {
        Ok(()) => return Ok(count),
        Err(e) if e.lost_race().is_some() => {}
        Err(e) => return Err(e),
    }
    let mut moved = 0;
    for one in moves {
        let (extra, placements) = flatten(leadership, vec![one]);
        match producer
            .commit(queue, config, placements, extra)
            .await
            .map_err(fenced)
        {
            Ok(()) => moved += 1,
            Err(e) if e.lost_race().is_some() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(moved)
}

/// The fence (if any) first, then every move's ops; the placements in order.
fn flatten(
    leadership: Option<&Leadership>,
    moves: Vec<(Vec<Op>, Option<Placement>)>,
) -> (Vec<Op>, Vec<Placement>) {
    let mut extra: Vec<Op> = leadership.map(Leadership::epoch_check).into_iter().collect();
    let mut placements = Vec::new();
    for (ops, placement) in moves {
        extra.extend(ops);
        placements.extend(placement);
    }
    (extra, placements)
}

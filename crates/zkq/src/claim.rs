//! Claims: how a worker takes a job. This module holds the claim protocol and the reference
//! for the whole state model; the settle steps are decided and committed in
//! `worker::settle`, where the attempt's outcome is known.
//!
//! # State model
//! A ready job znode stays where it is while it runs; what marks it running is its claim, an
//! EPHEMERAL znode `p/<partition>/claims/<lane>.<segment>.<job>` owned by the worker's session.
//!
//! - **claim**: `set_data(job, attempt + 1, expected_version)` + `create(claim)`, batched: the
//!   claims found by one scan go out in one `multi`.
//!   The version check makes a double claim impossible (the winner's write bumps the version),
//!   and counting the attempt at claim time makes crash loops count toward `max_attempts`.
//! - **ack**: `delete(job, version)` + `delete(claim)`, group-committed with other attempts'
//!   acks ([`crate::store::batcher`]).
//! - **retry**: `delete(job, version)` + `delete(claim)` + `create(delayed entry)`.
//! - **dead**: `delete(job, version)` + `delete(claim)` + `create(dead/<id>)`.
//! - **release** (shutdown before the attempt ended): `set_data(job, attempt - 1, version)` +
//!   `delete(claim)`: the job is ready again and the interrupted attempt is not counted.
//!
//! # Failure handling
//! If the worker's session ends, its claims vanish and the jobs are ready again with the
//! attempt counted. Every settle step checks the version the claim wrote, so a worker that lost
//! its claim (and maybe another worker re-claimed the job) cannot ack or fail it: the `multi`
//! fails as a whole and the worker only logs the loss.
//!
//! # Unknown outcomes
//! When the connection drops with a claim or settle `multi` in flight, the reply is lost but the
//! write may have committed. Each such write is reconciled once the connection is back, by the
//! claim znode, which only this session's own writes create and delete while the session lives:
//! - a claim whose claim node now exists, owned by this session, committed: the job is this
//!   worker's, with the attempt counted, and it runs; otherwise it was not claimed;
//! - a settle step (ack, retry, dead letter, release) committed if the claim node it deletes is
//!   gone (or is a newer claim); otherwise it is sent again.
//!
//! If the session ends instead, the claims went with it, and nothing is left to reconcile.
//! Forgetting such a write is not an option: a committed claim nobody runs holds its job for the
//! life of the session.

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use zookeeper_client as zk;

use crate::error::{outcome_unknown, Error, Result};
use crate::job::{now_ms, Job, JobId};
use crate::limits::MAX_REQUEST_BYTES;
use crate::store::acl::AclPolicy;
use crate::store::codec::{self, Record};
use crate::store::layout::{self, JobNode, Layout};
use crate::store::session;
use crate::store::txn::{self, NodeKind, Op};
use crate::store::znode;

/// A ready job found by a scan, not yet claimed.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub queue: String,
    pub partition: u32,
    pub lane: u8,
    pub segment: String,
    pub node: String,
    /// Set once the fetcher hands the job out: it is in this worker's hands from then on,
    /// until the candidate (and any claim made from it) is dropped.
    pub held: Option<std::sync::Arc<Held>>,
}

/// Jobs this worker has handed out to claim or run, by path. A claim in flight is not in the
/// claims directory yet, so a listing must not offer its job again.
pub(crate) type Holding = std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// One job in [`Holding`], for as long as this lives.
#[derive(Debug)]
pub(crate) struct Held {
    holding: Holding,
    path: String,
}

impl Held {
    pub(crate) fn new(holding: &Holding, path: String) -> Held {
        lock(holding).insert(path.clone());
        Held {
            holding: holding.clone(),
            path,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        lock(&self.holding).remove(&self.path);
    }
}

/// Whether the job at `path` is in this worker's hands.
pub(crate) fn is_held(holding: &Holding, path: &str) -> bool {
    lock(holding).contains(path)
}

fn lock(holding: &Holding) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    holding.lock().unwrap_or_else(|p| p.into_inner())
}

impl Candidate {
    pub(crate) fn path(&self, layout: &Layout) -> String {
        layout.job(&self.queue, self.partition, self.lane, &self.segment, &self.node)
    }

    pub(crate) fn claim_path(&self, layout: &Layout) -> String {
        let mut path = layout.claims(&self.queue, self.partition);
        path.push('/');
        path.push_str(&claim_name(self.lane, &self.segment, &self.node));
        path
    }
}

/// The claim name of a job node: `l<lane>.<segment>.<seq>` for a job zkq named (its sequence
/// number tells it from the segment's others: short names keep claim and release requests
/// small), `l<lane>.<segment>.<job node>` for any other.
pub fn claim_name(lane: u8, segment: &str, node: &str) -> String {
    match layout::parse_job_node(node) {
        Some(JobNode {
            tag: Some(_), seq, ..
        }) => format!("l{lane}.{segment}.{seq:010}"),
        _ => format!("l{lane}.{segment}.{node}"),
    }
}

/// The claim's own record: who runs which attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClaimRecord {
    pub v: u8,
    pub worker: String,
    pub job: JobId,
    pub attempt: u32,
    pub at_ms: u64,
}

impl Record for ClaimRecord {
    const WHAT: &'static str = "claim";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

/// A job this worker's session holds a claim on.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub(crate) candidate: Candidate,
    /// The job with this attempt counted.
    pub job: Job,
    /// The job znode's version after the claim; every settle step checks it.
    pub(crate) version: i32,
    pub(crate) job_path: String,
    pub(crate) claim_path: String,
    /// The zxid of the claim's transaction: the attempt's fencing token.
    pub(crate) token: i64,
    /// The lock node held for the job's lock key, if it has one.
    pub(crate) lock_node: Option<String>,
}

impl Claimed {
    pub(crate) fn queue(&self) -> &str {
        &self.candidate.queue
    }

    /// The ops that end this claim and remove the job from its segment; with a lock key,
    /// only while the lock is still held.
    pub(crate) fn remove_ops(&self) -> Vec<Op> {
        let mut ops = vec![
            Op::Delete {
                path: self.job_path.clone(),
                version: Some(self.version),
            },
            Op::Delete {
                path: self.claim_path.clone(),
                version: None,
            },
        ];
        if let Some(node) = &self.lock_node {
            ops.push(Op::Check {
                path: node.clone(),
                version: 0,
            });
        }
        ops
    }

    /// `(path, version)` pairs that hold exactly while this claim does ([`crate::Fence`]).
    pub(crate) fn fence_checks(&self) -> Vec<(String, i32)> {
        let mut checks = vec![
            (self.job_path.clone(), self.version),
            (self.claim_path.clone(), 0),
        ];
        checks.extend(self.lock_node.iter().map(|node| (node.clone(), 0)));
        checks
    }
}

/// Most jobs claimed in one `multi` (two operations each).
const CLAIM_BATCH: usize = 64;

/// Lost races a batch takes while it is still sent as one `multi`: after one more (the third),
/// the rest of it is claimed job by job, since somebody else is working the same jobs and one
/// lost race would fail a whole `multi` again.
const BATCH_RACES: usize = 2;

/// A claim ready to be sent: the claimed state it leads to and the operations that make it.
struct Prepared {
    claimed: Claimed,
    ops: [Op; 2],
}

/// Counts a claim another worker won first.
fn race_lost(p: &Prepared) {
    metrics::counter!(crate::telemetry::CLAIM_RACES_LOST, "queue" => p.claimed.queue().to_string())
        .increment(1);
}

impl Prepared {
    fn new(
        layout: &Layout,
        worker: &str,
        candidate: Candidate,
        mut job: Job,
        version: i32,
    ) -> Result<Prepared> {
        job.attempt += 1;
        let job_path = candidate.path(layout);
        let claim_path = candidate.claim_path(layout);
        let record = ClaimRecord {
            v: ClaimRecord::VERSION,
            worker: worker.to_string(),
            job: job.id,
            attempt: job.attempt,
            at_ms: now_ms(),
        };
        let ops = [
            Op::SetData {
                path: job_path.clone(),
                data: codec::encode(&job)?,
                version: Some(version),
            },
            Op::Create {
                path: claim_path.clone(),
                data: codec::encode(&record)?,
                kind: NodeKind::Ephemeral,
            },
        ];
        Ok(Prepared {
            claimed: Claimed {
                candidate,
                job,
                // The claim's set_data bumps the version by one.
                version: version + 1,
                job_path,
                claim_path,
                token: 0,
                lock_node: None,
            },
            ops,
        })
    }
}

/// A claim race lost to another worker (it claimed, finished or re-claimed the job first): the
/// job's version moved, or the job or a claim node is in the way.
pub(crate) fn claim_race(e: &zk::Error) -> bool {
    txn::lost_race(e) || matches!(e, zk::Error::NodeExists)
}

/// Claims `jobs` (each read at its version): up to [`CLAIM_BATCH`] per `multi` and
/// [`MAX_REQUEST_BYTES`], all `multi`s
/// sent at once. A job another worker took first is skipped; since a `multi` is all or nothing,
/// the rest of its batch is sent again without it. Returns the claims won and the errors that
/// were not lost races.
pub(crate) async fn claim_many(
    client: &zk::Client,
    layout: &Layout,
    worker: &str,
    jobs: Vec<(Candidate, Job, i32)>,
) -> (Vec<Claimed>, Vec<Error>) {
    let mut errors = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::with_capacity(jobs.len());
    for (candidate, job, version) in jobs {
        match Prepared::new(layout, worker, candidate, job, version) {
            Ok(p) => prepared.push(p),
            Err(e) => errors.push(e),
        }
    }
    // Bounded in jobs and in bytes: the claim's set_data carries the whole job record, and a
    // request over the limit would never get through.
    let mut batches: Vec<Vec<Prepared>> = Vec::new();
    let mut bytes = 0;
    for p in prepared {
        let size: usize = p.ops.iter().map(Op::wire_size).sum();
        match batches.last_mut() {
            Some(batch) if batch.len() < CLAIM_BATCH && bytes + size <= MAX_REQUEST_BYTES => {
                bytes += size;
                batch.push(p);
            }
            _ => {
                bytes = size;
                batches.push(vec![p]);
            }
        }
    }
    let mut won = Vec::new();
    for (claims, errs) in
        futures::future::join_all(batches.into_iter().map(|b| claim_batch(client, layout.acl(), b))).await
    {
        won.extend(claims);
        errors.extend(errs);
    }
    (won, errors)
}

async fn claim_batch(
    client: &zk::Client,
    acl: &AclPolicy,
    mut batch: Vec<Prepared>,
) -> (Vec<Claimed>, Vec<Error>) {
    let mut races = 0;
    while !batch.is_empty() && races <= BATCH_RACES {
        let ops: Vec<Op> = batch.iter().flat_map(|p| p.ops.iter().cloned()).collect();
        match txn::commit(client, acl, &ops).await {
            Ok(results) => {
                let won = batch
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| stamped(p.claimed, &results, 2 * i))
                    .collect();
                return (won, Vec::new());
            }
            Err(e) if claim_race(&e.source) => {
                races += 1;
                match e.index.map(|i| i / 2).filter(|i| *i < batch.len()) {
                    Some(i) => race_lost(&batch.remove(i)),
                    None => break,
                }
            }
            Err(e) if outcome_unknown(&e.source) => return claimed_meanwhile(client, batch).await,
            Err(e) => return (Vec::new(), vec![e.into_error("claim", &ops)]),
        }
    }
    // Contended: one `multi` per job, so that each race costs only its own job.
    // All sent on the first poll, in order.
    let singles = batch.into_iter().map(|p| async move {
        let result = txn::commit(client, acl, &p.ops).await;
        (p, result)
    });
    let mut won = Vec::new();
    let mut errors = Vec::new();
    let mut unknown = Vec::new();
    for (p, result) in futures::future::join_all(singles).await {
        match result {
            Ok(results) => won.push(stamped(p.claimed, &results, 0)),
            Err(e) if claim_race(&e.source) => race_lost(&p),
            Err(e) if outcome_unknown(&e.source) => unknown.push(p),
            Err(e) => errors.push(e.into_error("claim", &p.ops)),
        }
    }
    if !unknown.is_empty() {
        let (more, errs) = claimed_meanwhile(client, unknown).await;
        won.extend(more);
        errors.extend(errs);
    }
    (won, errors)
}

/// Claims of `batch` whose `multi` may or may not have committed: once connected again, each one
/// whose claim node this session owns is won (see the module docs). When the session ends
/// instead, none is: its claims went with it.
async fn claimed_meanwhile(client: &zk::Client, batch: Vec<Prepared>) -> (Vec<Claimed>, Vec<Error>) {
    let checks = batch.iter().map(|p| own_claim(client, &p.claimed.claim_path));
    let found = futures::future::join_all(checks).await;
    let mut won = Vec::new();
    let mut errors = Vec::new();
    for (p, found) in batch.into_iter().zip(found) {
        match found {
            Ok(Some(czxid)) => {
                debug!(job = %p.claimed.job.id, "claim committed before the connection dropped");
                let mut claimed = p.claimed;
                // The claim's create and the job's set_data share the multi's zxid.
                claimed.token = czxid;
                won.push(claimed);
            }
            Ok(None) => {}
            Err(e) if e.is_session_lost() => {}
            Err(e) => errors.push(e),
        }
    }
    (won, errors)
}

/// The creation zxid of the claim node at `path` if this session owns it, asked once connected
/// (a connection lost again meanwhile is waited out too). The read follows a `sync`: after a
/// reconnect, the server may be another member, one that has not yet applied the write whose
/// reply was lost.
///
/// # Errors
/// [`Error::SessionLost`] when the session ends first.
pub(crate) async fn own_claim(client: &zk::Client, path: &str) -> Result<Option<i64>> {
    loop {
        session::connected(client).await?;
        match client.sync(path).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(e) if outcome_unknown(&e) => continue,
            Err(e) => return Err(Error::zk("sync before reading a claim", path, e)),
        }
        match client.check_stat(path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => return Ok(Some(stat.czxid)),
            Ok(_) => return Ok(None),
            Err(e) if outcome_unknown(&e) => continue,
            Err(e) => return Err(Error::zk("read claim", path, e)),
        }
    }
}

/// `claimed` with its fencing token: the zxid of its `set_data` at `index` in `results`.
fn stamped(mut claimed: Claimed, results: &[zk::MultiWriteResult], index: usize) -> Claimed {
    if let Some(zk::MultiWriteResult::SetData { stat }) = results.get(index) {
        claimed.token = stat.mzxid;
    }
    claimed
}

/// Removes the stray nodes in `queue`'s `claims/` folders and returns how many: persistent
/// znodes (made by hand or by another tool). Every real claim is EPHEMERAL and ends with its
/// session; a persistent one would hold its job unrun forever, with no session whose end could
/// free it. Each removal is reported.
pub(crate) async fn remove_stray(
    client: &zk::Client,
    layout: &Layout,
    queue: &str,
    partitions: u32,
) -> Result<usize> {
    let mut removed = 0;
    for partition in 0..partitions {
        let dir = layout.claims(queue, partition);
        let names = znode::children(client, &dir).await?;
        let stray: Vec<(String, i32)> = znode::stat_children(client, &dir, names)
            .await?
            .into_iter()
            .filter(|(_, stat)| stat.ephemeral_owner == 0)
            .map(|(name, stat)| (format!("{dir}/{name}"), stat.version))
            .collect();
        for (path, version) in stray {
            match client.delete(&path, Some(version)).await {
                Ok(()) => {
                    warn!(%path, "removed a persistent node among the claims: no claim is persistent, and it held its job");
                    removed += 1;
                }
                Err(e) if txn::lost_race(&e) => {}
                Err(e) => {
                    warn!(%path, error = %e, "cannot remove a persistent node among the claims; it holds its job")
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_named_after_lane_segment_and_sequence_or_the_whole_foreign_name() {
        let layout = Layout::new("/zkq").unwrap();
        let candidate = |node: &str| Candidate {
            queue: "q".into(),
            partition: 3,
            lane: 1,
            segment: "s-0000000002".into(),
            node: node.into(),
            held: None,
        };
        let named = candidate("j-0b1c2d3e67e55044-0000000042");
        assert_eq!(
            named.path(&layout),
            "/zkq/queues/q/p/3/l1/s-0000000002/j-0b1c2d3e67e55044-0000000042"
        );
        assert_eq!(
            named.claim_path(&layout),
            "/zkq/queues/q/p/3/claims/l1.s-0000000002.0000000042"
        );
        let foreign = candidate("j-custom");
        assert_eq!(
            foreign.claim_path(&layout),
            "/zkq/queues/q/p/3/claims/l1.s-0000000002.j-custom"
        );
    }
}

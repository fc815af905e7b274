//! Claims: how a worker takes a job, and how the attempt settles.
//!
//! # State model
//! A ready job znode stays where it is while it runs; what marks it running is its claim, an
//! EPHEMERAL znode `p/<partition>/claims/<lane>.<segment>.<job>` owned by the worker's session.
//!
//! - **claim**: `set_data(job, attempt + 1, expected_version)` + `create(claim)` in one `multi`.
//!   The version check makes a double claim impossible (the winner's write bumps the version),
//!   and counting the attempt at claim time makes crash loops count toward `max_attempts`.
//! - **ack**: `delete(job, version)` + `delete(claim)`.
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

use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::codec::{self, Record};
use crate::error::Result;
use crate::job::{now_ms, Job, JobId};
use crate::layout::Layout;
use crate::txn::{self, NodeKind, Op};

/// A ready job found by a scan, not yet claimed.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub queue: String,
    pub partition: u32,
    pub lane: u8,
    pub segment: String,
    pub node: String,
}

impl Candidate {
    pub(crate) fn path(&self, layout: &Layout) -> String {
        format!(
            "{}/{}",
            layout.segment(&self.queue, self.partition, self.lane, &self.segment),
            self.node
        )
    }

    pub(crate) fn claim_name(&self) -> String {
        claim_name(self.lane, &self.segment, &self.node)
    }

    pub(crate) fn claim_path(&self, layout: &Layout) -> String {
        format!(
            "{}/{}",
            layout.claims(&self.queue, self.partition),
            self.claim_name()
        )
    }
}

/// The claim name of a job node: `l<lane>.<segment>.<job>`.
pub(crate) fn claim_name(lane: u8, segment: &str, node: &str) -> String {
    format!("l{lane}.{segment}.{node}")
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
}

impl Claimed {
    pub(crate) fn queue(&self) -> &str {
        &self.candidate.queue
    }

    /// The ops that end this claim and remove the job from its segment.
    pub(crate) fn remove_ops(&self) -> Vec<Op> {
        vec![
            Op::Delete {
                path: self.job_path.clone(),
                version: Some(self.version),
            },
            Op::Delete {
                path: self.claim_path.clone(),
                version: None,
            },
        ]
    }
}

/// Starts a claim of `job` (read at `version`). The request is sent before this returns, so
/// claims started in a row are pipelined. Resolves to `None` when another worker won.
pub(crate) fn claim<'a>(
    client: &'a zk::Client,
    layout: &Layout,
    worker: &str,
    candidate: Candidate,
    mut job: Job,
    version: i32,
) -> impl std::future::Future<Output = Result<Option<Claimed>>> + Send + 'a {
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
    let ops = match (codec::encode(&job), codec::encode(&record)) {
        (Ok(job_data), Ok(claim_data)) => Ok(vec![
            Op::SetData {
                path: job_path.clone(),
                data: job_data,
                version: Some(version),
            },
            Op::Create {
                path: claim_path.clone(),
                data: claim_data,
                kind: NodeKind::Ephemeral,
            },
        ]),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let sent = ops.as_ref().ok().map(|ops| txn::commit(client, ops));
    async move {
        let ops = ops?;
        let Some(sent) = sent else { return Ok(None) };
        match sent.await {
            Ok(results) => {
                let version = match results.first() {
                    Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                    _ => version + 1,
                };
                Ok(Some(Claimed {
                    candidate,
                    job,
                    version,
                    job_path,
                    claim_path,
                }))
            }
            // Another worker claimed, finished or re-claimed it first.
            Err(e)
                if matches!(
                    e.source,
                    zk::Error::BadVersion | zk::Error::NoNode | zk::Error::NodeExists
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into_error("claim", &ops)),
        }
    }
}

/// Commits `ops` that settle a claim, telling a lost claim apart from other errors.
pub(crate) async fn settle(client: &zk::Client, what: &'static str, ops: Vec<Op>) -> Result<Settled> {
    match txn::commit(client, &ops).await {
        Ok(_) => Ok(Settled::Committed),
        Err(e) if matches!(e.source, zk::Error::BadVersion | zk::Error::NoNode) => Ok(Settled::ClaimLost),
        Err(e) => Err(e.into_error(what, &ops)),
    }
}

/// How settling a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Committed,
    /// The claim was gone (the session ended, the job was taken over): nothing was written.
    ClaimLost,
}

/// Ops that put `job` into the dead letters.
pub(crate) fn dead_letter_op(layout: &Layout, queue: &str, job: &Job) -> Result<Op> {
    Ok(Op::Create {
        path: layout.dead_job(queue, &job.id.to_string()),
        data: codec::encode(job)?,
        kind: NodeKind::Persistent,
    })
}

/// Ends the claim and puts the job back as ready, not counting the interrupted attempt.
pub(crate) async fn release(client: &zk::Client, claimed: &Claimed) -> Result<Settled> {
    let mut job = claimed.job.clone();
    job.attempt = job.attempt.saturating_sub(1);
    let ops = vec![
        Op::SetData {
            path: claimed.job_path.clone(),
            data: codec::encode(&job)?,
            version: Some(claimed.version),
        },
        Op::Delete {
            path: claimed.claim_path.clone(),
            version: None,
        },
    ];
    settle(client, "release claim", ops).await
}

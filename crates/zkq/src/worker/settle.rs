//! Settling an attempt: its outcome committed as an ack, a retry or a dead letter, and
//! reconciled when the reply is lost with the connection.

use tracing::{debug, error, info, instrument, warn};

use zookeeper_client as zk;

use crate::claim::{self, Claimed};
use crate::error::{Error, Result};
use crate::handler::Outcome;
use crate::job::{now_ms, Job};
use crate::producer::Placement;
use crate::stops::CANCELLED;
use crate::store::acl::AclPolicy;
use crate::store::codec;
use crate::store::txn::{self, Op};

use super::session::Session;
use super::Worker;

/// How one attempt ended, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AttemptEnd {
    Done,
    Retried,
    Dead,
    Released,
    Lost,
    /// Stopped by an operator's cancel; the job was dead-lettered by the canceller.
    Cancelled,
}

impl AttemptEnd {
    /// How logs name it.
    pub(super) fn name(self) -> &'static str {
        match self {
            AttemptEnd::Done => "done",
            AttemptEnd::Retried => "retry",
            AttemptEnd::Dead => "dead",
            AttemptEnd::Released => "released",
            AttemptEnd::Lost => "claim lost",
            AttemptEnd::Cancelled => "cancelled",
        }
    }

    /// The `outcome` label of [`crate::telemetry::FINISHED`]; none for a lost claim (counted
    /// apart, as [`crate::telemetry::CLAIMS_LOST`]: the job will run again elsewhere).
    pub(super) fn outcome(self) -> Option<&'static str> {
        match self {
            AttemptEnd::Lost => None,
            other => Some(other.name()),
        }
    }
}

impl Worker {
    /// Commits an attempt's outcome. When the connection drops with the commit in flight, the
    /// outcome is reconciled once the connection is back ([`claim::settled_meanwhile`]): if it
    /// committed, the attempt is settled; if not, it is sent again, until it lands or the session
    /// ends. A claim left standing would hold the job for the rest of the session.
    #[instrument(name = "settle", skip_all)]
    pub(super) async fn settle(&self, session: &Session, claimed: &Claimed, outcome: Outcome) -> AttemptEnd {
        let intended = match &outcome {
            Outcome::Done => AttemptEnd::Done,
            Outcome::Retry { .. } if claimed.job.has_attempts_left() => AttemptEnd::Retried,
            _ => AttemptEnd::Dead,
        };
        loop {
            match self
                .settle_once(session, claimed, outcome.clone(), intended)
                .await
            {
                Err(e) if e.is_outcome_unknown() => match settled_meanwhile(&session.client, claimed).await {
                    Ok(true) if self.cancelled_meanwhile(&session.client, claimed).await => {
                        info!("the job was cancelled while the attempt's outcome was in flight");
                        return AttemptEnd::Cancelled;
                    }
                    Ok(true) => {
                        info!("the attempt's outcome committed before the connection dropped");
                        return intended;
                    }
                    Ok(false) => {
                        warn!("connection lost while settling, nothing committed; sending again")
                    }
                    Err(e) => return self.settle_failed(claimed, e),
                },
                Err(e) => return self.settle_failed(claimed, e),
                Ok(settle) => return settle,
            }
        }
    }

    pub(super) async fn settle_once(
        &self,
        session: &Session,
        claimed: &Claimed,
        outcome: Outcome,
        intended: AttemptEnd,
    ) -> Result<AttemptEnd> {
        let Session {
            client,
            producer,
            acks,
            ..
        } = session;
        let queue = claimed.queue().to_string();
        let mut job = claimed.job.clone();
        let result = match (outcome, intended) {
            (Outcome::Done, _) => {
                let ops = claimed.remove_ops();
                match acks.commit(ops.clone()).await {
                    Ok(()) => Ok(Settled::Committed),
                    Err(e) if crate::store::txn::lost_race(&e.source) => {
                        Ok(Settled::lost(e.index, &e.source))
                    }
                    Err(e) => Err(e.into_error("ack", &ops)),
                }
            }
            (Outcome::Retry { error, after }, AttemptEnd::Retried) => {
                job.record_error(&error);
                let config = producer.config(&queue).await?;
                let delay = after.unwrap_or_else(|| config.retry.delay(job.attempt));
                let due_ms = now_ms().saturating_add(crate::job::millis(delay.min(crate::limits::MAX_DELAY)));
                info!(%error, ?delay, "attempt failed; will retry");
                let placement = Placement::Delayed { job, due_ms };
                let remove = claimed.remove_ops();
                match producer
                    .commit(&queue, &config, vec![placement], remove.clone())
                    .await
                {
                    Ok(()) => Ok(Settled::Committed),
                    // A race lost on the claim's own ops: the claim or the job is gone.
                    Err(e) => {
                        let lost = e.lost_race().and_then(|(path, source)| {
                            let index = remove.iter().position(|op| op.path() == path)?;
                            Some(Settled::lost(Some(index), source))
                        });
                        lost.ok_or(e)
                    }
                }
            }
            (Outcome::Retry { error, .. } | Outcome::Dead { error }, _) => {
                job.record_error(&error);
                let mut ops = claimed.remove_ops();
                ops.push(crate::producer::dead_letter_op(&self.layout, &queue, &job)?);
                let result = settle(client, self.layout.acl(), "dead-letter", ops).await;
                if let Ok(Settled::Committed) = result {
                    warn!(%error, attempts = job.attempt, "job dead-lettered");
                }
                result
            }
        };
        match result? {
            Settled::Committed => {
                debug!("attempt settled");
                Ok(intended)
            }
            Settled::ClaimLost => {
                warn!("claim lost before the attempt settled (its session ended, or the job was claimed again): nothing written; the job runs again");
                Ok(AttemptEnd::Lost)
            }
            Settled::JobGone => {
                warn!("the job is gone (settled elsewhere after this claim was lost, or removed): nothing written");
                Ok(AttemptEnd::Lost)
            }
        }
    }

    /// Whether the claim of `claimed` is gone because its job was cancelled: the dead letter
    /// of this attempt ends with the error [`CANCELLED`]. Asked when a settle's reply was lost
    /// and the claim is gone, which is otherwise this settle having committed.
    async fn cancelled_meanwhile(&self, client: &zk::Client, claimed: &Claimed) -> bool {
        let path = self.layout.dead_job(claimed.queue(), &claimed.job.id.to_string());
        match client.get_data(&path).await {
            Ok((data, _)) => codec::decode::<Job>(&path, &data).is_ok_and(|dead| {
                dead.attempt == claimed.job.attempt
                    && dead.errors.last().is_some_and(|e| e.message == CANCELLED)
            }),
            Err(_) => false,
        }
    }

    pub(super) fn settle_failed(&self, claimed: &Claimed, e: Error) -> AttemptEnd {
        // The claim stays until the session ends; the job then runs again (at-least-once).
        error!(id = %claimed.job.id, error = %e, "cannot settle attempt");
        AttemptEnd::Lost
    }
}

/// Whether a settle step of `claimed` whose reply was lost with the connection committed: once
/// connected again, the claim node is gone, or is a newer claim than this one.
///
/// # Errors
/// [`Error::SessionLost`] when the session ends first (the claim went with it: nothing of this
/// attempt can commit any more).
pub(crate) async fn settled_meanwhile(client: &zk::Client, claimed: &Claimed) -> Result<bool> {
    Ok(claim::own_claim(client, &claimed.claim_path).await? != Some(claimed.token))
}

/// Commits `ops` that settle a claim, telling a lost claim apart from other errors.
pub(crate) async fn settle(
    client: &zk::Client,
    acl: &AclPolicy,
    what: &'static str,
    ops: Vec<Op>,
) -> Result<Settled> {
    match txn::commit(client, acl, &ops).await {
        Ok(_) => Ok(Settled::Committed),
        Err(e) if txn::lost_race(&e.source) => Ok(Settled::lost(e.index, &e.source)),
        Err(e) => Err(e.into_error(what, &ops)),
    }
}

/// How settling a claim went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Committed,
    /// The claim was gone (the session ended, the job was taken over): nothing was written.
    ClaimLost,
    /// The job znode was gone (removed by someone else while it ran): nothing was written.
    JobGone,
}

impl Settled {
    /// A settle step that failed its checks at op `index` with `source`. Every settle step
    /// starts with a versioned write of the job, so `NoNode` there means the job itself is gone;
    /// anything else means the claim is.
    pub(crate) fn lost(index: Option<usize>, source: &zk::Error) -> Settled {
        match (index, source) {
            (Some(0), zk::Error::NoNode) => Settled::JobGone,
            _ => Settled::ClaimLost,
        }
    }
}

/// Ends the claim and puts the job back as ready, not counting the interrupted attempt. A
/// release whose reply is lost with the connection is reconciled and, if it did not commit,
/// sent again.
pub(crate) async fn release(client: &zk::Client, claimed: &Claimed) -> Result<Settled> {
    loop {
        match release_once(client, claimed).await {
            Err(e) if e.is_outcome_unknown() => {
                if settled_meanwhile(client, claimed).await? {
                    return Ok(Settled::Committed);
                }
            }
            other => return other,
        }
    }
}

pub(crate) async fn release_once(client: &zk::Client, claimed: &Claimed) -> Result<Settled> {
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
    // Creates nothing: the ACL is not used.
    settle(client, &AclPolicy::open(), "release claim", ops).await
}

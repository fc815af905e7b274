//! Stop notices: how a cancelled attempt reaches the worker that runs it.
//!
//! `zkq-admin job cancel` moves a running job to the dead letters itself, in one `multi` that
//! deletes the job znode and its claim (an ephemeral of the worker's session: any client may
//! delete it) and creates the dead letter. The worker learns of it through the same `multi`,
//! which also creates `<root>/stops/<job-id>-<seq>` naming the worker and the claim.
//!
//! Every worker keeps a one-shot child watch on `<root>/stops` (re-armed after each event; the
//! client sets one-shot watches again after a reconnect). Cancels are rare, so every worker
//! listing the notices on each one costs little. The worker running the named claim stops the
//! attempt (its command gets SIGTERM, then SIGKILL after the stop grace) without settling it
//! (the job is already dead) and then deletes the notice; the admin waits for that deletion to
//! report the process gone. A notice nobody takes (its worker died, and with it the attempt's
//! process) is deleted by the scheduler leader's trim pass after [`NOTICE_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::{now_ms, JobId};
use crate::store::codec::{self, Record};
use crate::store::layout::Layout;
use crate::store::txn::{NodeKind, Op};
use crate::store::znode;

/// How long an untaken notice is kept. A live worker takes its notices within milliseconds; a
/// worker cut off from ZooKeeper for this long has stopped its attempts itself (self-fencing).
pub(crate) const NOTICE_TTL: Duration = Duration::from_secs(60);

/// A request to stop one attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StopNotice {
    pub v: u8,
    /// The worker running the attempt.
    pub worker: String,
    pub job: JobId,
    /// The attempt's claim path.
    pub claim: String,
}

impl Record for StopNotice {
    const WHAT: &'static str = "stop notice";
    const VERSION: u8 = 1;
    fn version(&self) -> u8 {
        self.v
    }
}

/// The create of a notice asking `worker` to stop the attempt holding `claim`.
pub(crate) fn notice_op(layout: &Layout, worker: &str, job: JobId, claim: &str) -> Result<Op> {
    let notice = StopNotice {
        v: StopNotice::VERSION,
        worker: worker.to_string(),
        job,
        claim: claim.to_string(),
    };
    Ok(Op::Create {
        path: format!("{}/{job}-", layout.stops()),
        data: codec::encode(&notice)?,
        kind: NodeKind::Sequential,
    })
}

/// Whether an attempt of job `id` is still being stopped (a notice for it is untaken).
pub(crate) async fn pending(client: &zk::Client, layout: &Layout, id: &str) -> Result<bool> {
    let prefix = format!("{id}-");
    let names = znode::children(client, &layout.stops()).await?;
    Ok(names.iter().any(|n| n.starts_with(&prefix)))
}

/// Deletes notices older than [`NOTICE_TTL`]; returns how many.
pub(crate) async fn trim(client: &zk::Client, layout: &Layout) -> Result<usize> {
    let dir = layout.stops();
    let names = znode::children(client, &dir).await?;
    let cutoff = now_ms().saturating_sub(NOTICE_TTL.as_millis() as u64) as i64;
    let mut trimmed = 0;
    for (name, stat) in znode::stat_children(client, &dir, names).await? {
        if stat.ctime < cutoff {
            let path = format!("{dir}/{name}");
            match client.delete(&path, None).await {
                Ok(()) => trimmed += 1,
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(Error::zk("delete stop notice", path, e)),
            }
        }
    }
    Ok(trimmed)
}

/// An attempt that a notice can stop.
#[derive(Debug, Default)]
pub(crate) struct Stoppable {
    /// Cancelled when a notice asks for the stop.
    pub token: CancellationToken,
    /// The notice that asked, to delete once the attempt stopped.
    notice: Mutex<Option<String>>,
}

impl Stoppable {
    /// The notice that cancelled this attempt, if any.
    pub(crate) fn notice(&self) -> Option<String> {
        self.notice.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The attempts a worker session runs, by claim path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<Mutex<HashMap<String, Arc<Stoppable>>>>);

impl Running {
    /// Registers the attempt holding `claim`; [`Running::remove`] it when it ends.
    pub(crate) fn add(&self, claim: &str) -> Arc<Stoppable> {
        let stoppable = Arc::new(Stoppable::default());
        self.lock().insert(claim.to_string(), stoppable.clone());
        stoppable
    }

    pub(crate) fn remove(&self, claim: &str) {
        self.lock().remove(claim);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Stoppable>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the attempt holding `claim` on behalf of `notice`. False when no such attempt runs.
    fn stop(&self, claim: &str, notice: &str) -> bool {
        let Some(stoppable) = self.lock().get(claim).cloned() else {
            return false;
        };
        *stoppable.notice.lock().unwrap_or_else(|p| p.into_inner()) = Some(notice.to_string());
        stoppable.token.cancel();
        true
    }
}

/// Follows the notices for `worker` until the session ends: stops the attempts they name, and
/// deletes those naming attempts that no longer run.
pub(crate) async fn follow(client: zk::Client, layout: Layout, worker: String, running: Running) {
    let dir = layout.stops();
    if let Err(e) = znode::ensure_path(&client, &dir).await {
        warn!(error = %e, "cannot watch stop notices: cancelled attempts will run to their end");
        return;
    }
    let mut seen: HashSet<String> = HashSet::new();
    loop {
        let (names, _, watcher) = match client.get_and_watch_children(&dir).await {
            Ok(found) => found,
            Err(e) if crate::store::session::is_final(&e) => return,
            Err(e) => {
                warn!(error = %e, "cannot list stop notices; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        seen.retain(|n| names.contains(n));
        for name in names {
            if !seen.insert(name.clone()) {
                continue;
            }
            let path = format!("{dir}/{name}");
            let notice = match client.get_data(&path).await {
                Ok((data, _)) => codec::decode::<StopNotice>(&path, &data),
                Err(_) => continue,
            };
            let notice = match notice {
                Ok(n) if n.worker == worker => n,
                _ => continue,
            };
            if running.stop(&notice.claim, &path) {
                info!(id = %notice.job, "attempt cancelled: stopping it");
            } else {
                // Ended already: nothing to stop.
                znode::delete_surely(&client, path);
            }
        }
        let event = watcher.changed().await;
        if event.session_state.is_terminated() {
            return;
        }
    }
}

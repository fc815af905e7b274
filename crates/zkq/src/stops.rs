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
//! report the process gone. A notice can come before its attempt is registered (the claim's
//! reply and the cancel cross): it is kept [`ORPHAN_GRACE`] for that attempt, which then stops
//! at once, and deleted after that. A notice nobody takes (its worker died, and with it the attempt's
//! process) is deleted by the scheduler leader's trim pass after [`NOTICE_TTL`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// How long an untaken notice of a worker that is not registered any more is kept: its process
/// is gone or cut off, and a worker cut off from ZooKeeper this long has stopped its attempts
/// itself (self-fencing). A live worker's notices are never trimmed: it deletes them itself once
/// the attempt is over.
pub(crate) const NOTICE_TTL: Duration = Duration::from_secs(60);

/// The error a cancelled job's history ends with.
pub(crate) const CANCELLED: &str = "cancelled";

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

/// The ids of jobs whose cancelled attempt is still being stopped (a notice for it is untaken).
pub(crate) async fn pending(client: &zk::Client, layout: &Layout) -> Result<HashSet<String>> {
    let names = znode::children(client, &layout.stops()).await?;
    Ok(names
        .iter()
        .filter_map(|n| n.rsplit_once('-').map(|(id, _)| id.to_string()))
        .collect())
}

/// Deletes notices older than [`NOTICE_TTL`] whose worker is not registered; returns how many.
pub(crate) async fn trim(client: &zk::Client, layout: &Layout) -> Result<usize> {
    let dir = layout.stops();
    let names = znode::children(client, &dir).await?;
    let cutoff = now_ms().saturating_sub(NOTICE_TTL.as_millis() as u64) as i64;
    let mut trimmed = 0;
    for (name, stat) in znode::stat_children(client, &dir, names).await? {
        if stat.ctime >= cutoff {
            continue;
        }
        let path = format!("{dir}/{name}");
        let worker = match client.get_data(&path).await {
            Ok((data, _)) => codec::decode::<StopNotice>(&path, &data).ok().map(|n| n.worker),
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(Error::zk("read stop notice", path, e)),
        };
        if let Some(worker) = worker {
            let registration = layout.worker(&worker);
            match client.check_stat(&registration).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Err(Error::zk("stat worker", registration, e)),
            }
        }
        match client.delete(&path, None).await {
            Ok(()) => trimmed += 1,
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(Error::zk("delete stop notice", path, e)),
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

    fn stop(&self, notice: &str) {
        *self.notice.lock().unwrap_or_else(|p| p.into_inner()) = Some(notice.to_string());
        self.token.cancel();
    }
}

/// How long a notice naming no running attempt of this worker is kept for one that may still
/// start: a claim committed, its attempt not registered yet.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Attempts {
    running: HashMap<String, Arc<Stoppable>>,
    /// Notices for claims of no running attempt: claim -> (notice, when seen).
    orphans: HashMap<String, (String, Instant)>,
}

/// The attempts a worker session runs, by claim path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<Mutex<Attempts>>);

impl Running {
    /// Registers the attempt holding `claim`, stopped already if a notice for it came first;
    /// [`Running::remove`] it when it ends.
    pub(crate) fn add(&self, claim: &str) -> Arc<Stoppable> {
        let stoppable = Arc::new(Stoppable::default());
        let mut attempts = self.lock();
        if let Some((notice, _)) = attempts.orphans.remove(claim) {
            stoppable.stop(&notice);
        }
        attempts.running.insert(claim.to_string(), stoppable.clone());
        stoppable
    }

    /// Forgets the attempt holding `claim`, once it ended. Returns the notice that cancelled
    /// it, if one did (even one that came too late to stop it): the caller deletes it.
    pub(crate) fn remove(&self, claim: &str) -> Option<String> {
        self.lock().running.remove(claim).and_then(|s| s.notice())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attempts> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the attempt holding `claim` on behalf of `notice`, or keeps the notice for an
    /// attempt about to start. True when it stopped one.
    fn stop(&self, claim: &str, notice: &str) -> bool {
        let mut attempts = self.lock();
        match attempts.running.get(claim) {
            Some(stoppable) => {
                stoppable.stop(notice);
                true
            }
            None => {
                attempts
                    .orphans
                    .insert(claim.to_string(), (notice.to_string(), Instant::now()));
                false
            }
        }
    }

    /// Notices kept longer than [`ORPHAN_GRACE`] without their attempt: it had ended.
    fn expired_orphans(&self) -> Vec<String> {
        let mut attempts = self.lock();
        let mut expired = Vec::new();
        attempts.orphans.retain(|_, (notice, since)| {
            let keep = since.elapsed() < ORPHAN_GRACE;
            if !keep {
                expired.push(notice.clone());
            }
            keep
        });
        expired
    }
}

/// Follows the notices for `worker` until the session ends: stops the attempts they name, and
/// deletes those naming attempts that no longer run.
pub(crate) async fn follow(client: zk::Client, layout: Layout, worker: String, running: Running) {
    let dir = layout.stops();
    while let Err(e) = znode::ensure_path(&client, layout.acl(), &dir).await {
        if e.is_session_lost() {
            return;
        }
        warn!(error = %e, "cannot create the stop notices folder; trying again");
        tokio::time::sleep(Duration::from_secs(1)).await;
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
        // A notice that could not be read is read again after a pause.
        let mut unread = false;
        for name in names {
            if seen.contains(&name) {
                continue;
            }
            let path = format!("{dir}/{name}");
            let notice = match client.get_data(&path).await {
                Ok((data, _)) => codec::decode::<StopNotice>(&path, &data).ok(),
                Err(zk::Error::NoNode) => None,
                Err(_) => {
                    unread = true;
                    continue;
                }
            };
            seen.insert(name);
            let Some(notice) = notice.filter(|n| n.worker == worker) else {
                continue;
            };
            if running.stop(&notice.claim, &path) {
                info!(id = %notice.job, "attempt cancelled: stopping it");
            }
        }
        let changed = watcher.changed();
        tokio::pin!(changed);
        loop {
            tokio::select! {
                event = &mut changed => {
                    if event.session_state.is_terminated() {
                        return;
                    }
                    break;
                }
                _ = tokio::time::sleep(ORPHAN_GRACE / 2) => {
                    for notice in running.expired_orphans() {
                        znode::delete_surely(&client, notice);
                    }
                    if unread {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_that_comes_before_its_attempt_stops_it_as_it_starts() {
        let running = Running::default();
        assert!(!running.stop("/claims/c1", "/stops/n1"), "no attempt yet");
        let early = running.add("/claims/c1");
        assert!(early.token.is_cancelled());
        assert_eq!(running.remove("/claims/c1"), Some("/stops/n1".to_string()));

        let other = running.add("/claims/c2");
        assert!(!other.token.is_cancelled());
        assert!(running.stop("/claims/c2", "/stops/n2"));
        assert!(other.token.is_cancelled());
        assert_eq!(running.remove("/claims/c2"), Some("/stops/n2".to_string()));
        assert_eq!(running.remove("/claims/c3"), None);
        assert!(running.expired_orphans().is_empty(), "orphans are kept a while");
    }
}

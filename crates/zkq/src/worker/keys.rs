//! Lock keys: a job with a lock key is claimed only while this session holds the key's lock;
//! a busy key parks the job, unclaimed, until the holder lets go.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::job::JobId;
use crate::recipes::lock::{Lock, LockGuard};
use crate::worker::fetch::Found;

use super::session::Session;
use super::Worker;

pub(super) type Keys = Arc<std::sync::Mutex<HashSet<String>>>;

/// A job's lock, held for its attempt; lets go of the key in [`Keys`] too when dropped.
pub(super) struct KeyHold {
    pub(super) guard: LockGuard,
    pub(super) keys: Keys,
}

impl Drop for KeyHold {
    fn drop(&mut self) {
        lock_keys(&self.keys).remove(self.guard.key());
    }
}

pub(super) fn lock_keys(keys: &Keys) -> std::sync::MutexGuard<'_, HashSet<String>> {
    keys.lock().unwrap_or_else(|p| p.into_inner())
}

impl Worker {
    /// Takes the lock of each found job that has a lock key, before its claim: a job is claimed
    /// only while its key is held, so jobs of one key never run at once, and each claim's
    /// fencing token is larger than every earlier holder's. Jobs whose key is busy (here or
    /// elsewhere) go back to the fetcher to wait, unclaimed. Returns the jobs to claim and the
    /// locks taken, by job.
    pub(super) async fn take_keys(
        &self,
        session: &Session,
        found: Vec<Found>,
    ) -> (Vec<Found>, HashMap<JobId, KeyHold>) {
        let mut free = Vec::with_capacity(found.len());
        let mut trying = Vec::new();
        for f in found {
            let key = match &f {
                Found::Job { job, .. } => job.lock_key.clone(),
                Found::Garbage { .. } => None,
            };
            let Some(key) = key else {
                free.push(f);
                continue;
            };
            if !lock_keys(&session.keys).insert(key.clone()) {
                self.park(session, key, f);
                continue;
            }
            trying.push((key, f));
        }
        let tries = trying.iter().map(|(key, _)| async {
            Lock::new(session.client.clone(), &self.layout, key, &self.config.id)?
                .try_acquire()
                .await
        });
        let results = futures::future::join_all(tries).await;
        let mut holds = HashMap::new();
        for ((key, f), result) in trying.into_iter().zip(results) {
            match result {
                Ok(Some(guard)) => {
                    if let Found::Job { job, .. } = &f {
                        holds.insert(
                            job.id,
                            KeyHold {
                                guard,
                                keys: session.keys.clone(),
                            },
                        );
                    }
                    free.push(f);
                }
                other => {
                    if let Err(e) = other {
                        warn!(%key, error = %e, "cannot take a job's lock; it waits");
                    }
                    lock_keys(&session.keys).remove(&key);
                    self.park(session, key, f);
                }
            }
        }
        (free, holds)
    }

    pub(super) fn park(&self, session: &Session, key: String, found: Found) {
        if let Found::Job { candidate, .. } = found {
            debug!(%key, "lock key busy: the job waits");
            session.parking.park(key, candidate);
        }
    }
}

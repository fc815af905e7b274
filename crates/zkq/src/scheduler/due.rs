//! When promotion runs: at the due time of the earliest delayed job (less the scheduler's
//! `promote_ahead`), known without polling.
//!
//! The leader watches each queue's `delayed` folder (persistent, recursive). A delayed entry's
//! name starts with its due time (`<due ms>-<id>`), so its creation event alone says when it is
//! due: the leader keeps the earliest due time per queue, sleeps until the first one, and then
//! promotes that queue only. The watch costs nothing while idle; events come only for entries
//! made (and promoted).
//!
//! A pass over every queue runs first, at least every `look_again`, and at once when a queue is
//! added. A lost connection ends the leader's term (see [`crate::scheduler`]): the next term
//! starts with a pass over every queue and fresh watches, which matters because the client does
//! not set persistent watches again after a reconnect.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::job::now_ms;
use crate::store::layout::{parse_delayed_entry, Layout};

/// What a watch reports.
#[derive(Debug)]
enum Wake {
    /// An entry of `queue` due at `at_ms` was made.
    Due { queue: String, at_ms: u64 },
    /// A queue was added (or removed).
    LookAtAll,
}

/// The earliest known due time of each queue, and whether every queue must be looked at.
#[derive(Debug, Default)]
struct State {
    earliest: BTreeMap<String, u64>,
    look_at_all: bool,
}

impl State {
    fn due(&mut self, queue: String, at_ms: u64) {
        let earliest = self.earliest.entry(queue).or_insert(at_ms);
        *earliest = (*earliest).min(at_ms);
    }

    fn first(&self) -> Option<u64> {
        self.earliest.values().min().copied()
    }
}

/// The due times of every queue's delayed jobs, kept by watches, and the waits between passes.
pub(super) struct DueTimes {
    client: zk::Client,
    layout: Layout,
    look_again: Duration,
    /// How long before its due time a job is promoted.
    ahead: Duration,
    state: Arc<Mutex<State>>,
    wakes_tx: mpsc::UnboundedSender<Wake>,
    wakes: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Wake>>>,
    /// The watch forwarders, by the path watched.
    watching: HashMap<String, Forwarder>,
    /// When the last pass over every queue started.
    last_full: Instant,
}

impl DueTimes {
    pub(super) fn new(client: zk::Client, layout: Layout, look_again: Duration, ahead: Duration) -> DueTimes {
        let (wakes_tx, wakes) = mpsc::unbounded_channel();
        DueTimes {
            client,
            layout,
            look_again,
            ahead,
            state: Arc::new(Mutex::new(State {
                look_at_all: true,
                ..State::default()
            })),
            wakes_tx,
            wakes: Arc::new(tokio::sync::Mutex::new(wakes)),
            watching: HashMap::new(),
            last_full: Instant::now(),
        }
    }

    /// The queues to look at now: every queue (`None`) when a full pass is due, else those
    /// whose earliest entry is due within `ahead`. Their due times are forgotten until the pass
    /// reports them.
    pub(super) fn take_due(&mut self) -> Option<Vec<String>> {
        let mut state = lock(&self.state);
        if std::mem::take(&mut state.look_at_all) || self.last_full.elapsed() >= self.look_again {
            state.earliest.clear();
            self.last_full = Instant::now();
            return None;
        }
        let now = now_ms() + self.ahead.as_millis() as u64;
        let due: Vec<String> = state
            .earliest
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(q, _)| q.clone())
            .collect();
        for q in &due {
            state.earliest.remove(q);
        }
        Some(due)
    }

    /// Records the next due time a pass found for `queue` (`None`: nothing waits).
    pub(super) fn next(&self, queue: &str, at_ms: Option<u64>) {
        if let Some(at) = at_ms {
            lock(&self.state).due(queue.to_string(), at);
        }
    }

    /// Watches the queues folder (queues added) and the `delayed` folder of each of
    /// `queues` not watched yet. Call before listing them: a watch set before a listing
    /// reports every entry the listing misses.
    ///
    /// # Errors
    /// ZooKeeper errors.
    pub(super) async fn watch(&mut self, queues: &[String]) -> Result<()> {
        let folder = self.layout.queues();
        let mut wanted: Vec<(String, Option<String>)> = Vec::new();
        if !self.watching.contains_key(&folder) {
            wanted.push((folder, None));
        }
        for q in queues {
            let path = self.layout.delayed(q);
            if !self.watching.contains_key(&path) {
                wanted.push((path, Some(q.clone())));
            }
        }
        let queue_names: HashSet<&String> = queues.iter().collect();
        // Queues gone: their watches go too.
        let gone: Vec<String> = self
            .watching
            .iter()
            .filter(|(_, f)| f.queue.as_ref().is_some_and(|q| !queue_names.contains(q)))
            .map(|(path, _)| path.clone())
            .collect();
        for path in gone {
            self.watching.remove(&path);
        }
        for (path, queue) in wanted {
            let mode = match queue {
                Some(_) => zk::AddWatchMode::PersistentRecursive,
                None => zk::AddWatchMode::Persistent,
            };
            let watcher = self
                .client
                .watch(&path, mode)
                .await
                .map_err(|e| Error::zk("watch delayed jobs", &path, e))?;
            let task = tokio::spawn(forward(watcher, queue.clone(), self.wakes_tx.clone()));
            self.watching.insert(path, Forwarder { queue, task });
        }
        Ok(())
    }

    /// Waits until `ahead` before the earliest due time, a full pass is due, or a watch calls
    /// for one.
    pub(super) fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let state = self.state.clone();
        let wakes = self.wakes.clone();
        let full_at = self.last_full + self.look_again;
        let ahead = self.ahead.as_millis() as u64;
        async move {
            let mut wakes = wakes.lock().await;
            loop {
                let first = lock(&state).first();
                let due_at = first.and_then(|at| {
                    let wait = at.saturating_sub(ahead).saturating_sub(now_ms());
                    Instant::now().checked_add(Duration::from_millis(wait))
                });
                let until = due_at.map_or(full_at, |at| at.min(full_at));
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => return,
                    wake = wakes.recv() => match wake {
                        Some(Wake::Due { queue, at_ms }) => lock(&state).due(queue, at_ms),
                        Some(Wake::LookAtAll) => {
                            lock(&state).look_at_all = true;
                            return;
                        }
                        // Never: this holds a sender.
                        None => return,
                    },
                }
            }
        }
    }
}

/// A task forwarding one watch's events; stopped (and the watch dropped) with it.
struct Forwarder {
    /// The queue whose `delayed` folder it watches; `None` for the queues folder.
    queue: Option<String>,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards the due times of entries made under a queue's `delayed` folder (or, for the queues
/// folder, any change), until the session ends.
async fn forward(
    mut watcher: zk::PersistentWatcher,
    queue: Option<String>,
    wakes: mpsc::UnboundedSender<Wake>,
) {
    loop {
        let event = watcher.changed().await;
        let wake = match (event.event_type, &queue) {
            (zk::EventType::Session, _) if event.session_state.is_terminated() => return,
            (zk::EventType::NodeCreated, Some(queue)) => event
                .path
                .rsplit('/')
                .next()
                .and_then(parse_delayed_entry)
                .map(|at_ms| Wake::Due {
                    queue: queue.clone(),
                    at_ms,
                }),
            (zk::EventType::NodeChildrenChanged, None) => Some(Wake::LookAtAll),
            _ => None,
        };
        if let Some(wake) = wake {
            if wakes.send(wake).is_err() {
                return;
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_queue_keeps_its_earliest_due_time() {
        let mut state = State::default();
        state.due("a".into(), 500);
        state.due("a".into(), 300);
        state.due("a".into(), 900);
        state.due("b".into(), 400);
        assert_eq!(state.earliest.get("a"), Some(&300));
        assert_eq!(state.first(), Some(300));
    }
}

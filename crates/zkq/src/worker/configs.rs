//! Queue settings followed live, ZooKeeper's configuration publish/subscribe recipe: each queue
//! znode (its [`QueueConfig`]) is read with a data watch, and every change (a pause, new limits)
//! is published to the worker as soon as the watch fires. The client sets one-shot watches
//! again on a new connection, and the server fires one at once for a change made meanwhile, so
//! the watch survives a reconnect; each queue is still read again every minute, as a safety net
//! that costs an idle worker next to nothing.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;
use zookeeper_client as zk;

use crate::queue::QueueConfig;
use crate::store::codec;
use crate::store::layout::Layout;
use crate::store::session;

/// The latest settings of each queue this worker serves.
pub(crate) type Configs = watch::Receiver<HashMap<String, QueueConfig>>;

/// Longest wait between two reads of a queue's settings, in case a watch was lost.
const READ_AGAIN: Duration = Duration::from_secs(60);

/// Keeps `configs` current for `queue` until the session ends.
pub(crate) async fn follow(
    client: zk::Client,
    layout: Layout,
    queue: String,
    configs: watch::Sender<HashMap<String, QueueConfig>>,
) {
    let path = layout.queue(&queue);
    loop {
        let watcher = match client.get_and_watch_data(&path).await {
            Ok((data, _, watcher)) => {
                match codec::decode::<QueueConfig>(&path, &data) {
                    Ok(config) => {
                        configs.send_if_modified(|all| match all.get(&queue) {
                            Some(old) if *old == config => false,
                            _ => {
                                all.insert(queue.clone(), config);
                                true
                            }
                        });
                    }
                    Err(e) => warn!(%queue, error = %e, "queue settings unreadable; keeping the last ones"),
                }
                Some(watcher)
            }
            Err(e) if session::is_final(&e) => return,
            Err(e) => {
                warn!(%queue, error = %e, "cannot read queue settings; will retry");
                None
            }
        };
        match watcher {
            Some(w) => {
                let _ = tokio::time::timeout(READ_AGAIN, w.changed()).await;
            }
            None => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Whether `queue` is paused in `configs`.
pub(crate) fn is_paused(configs: &Configs, queue: &str) -> bool {
    configs.borrow().get(queue).is_some_and(|c| c.paused)
}

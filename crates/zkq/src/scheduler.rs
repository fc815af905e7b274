//! The scheduler: fleet-wide chores done by the elected leader only, each write fenced by its
//! epoch.
//!
//! Every worker is a candidate by default ([`crate::WorkerConfig::scheduler`]). While leader, a
//! candidate promotes due delayed and retry-waiting jobs of every queue under the root. When the
//! leadership is in doubt it stops at once and campaigns again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::election::{Election, Leadership};
use crate::error::Error;
use crate::producer::Producer;
use crate::{promoter, queue};

/// Campaigns and serves as scheduler until `stop` is cancelled or the session ends.
pub(crate) async fn run(
    producer: Arc<Producer>,
    election: Election,
    interval: Duration,
    stop: CancellationToken,
) {
    loop {
        let leadership = tokio::select! {
            _ = stop.cancelled() => return,
            l = election.campaign() => l,
        };
        let leadership = match leadership {
            Ok(l) => l,
            Err(e) if e.is_session_lost() => return,
            Err(e) => {
                warn!(error = %e, "campaign failed; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        serve(&producer, &leadership, interval, &stop).await;
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Runs the leader's services until the leadership is lost or `stop` is cancelled.
async fn serve(producer: &Producer, leadership: &Leadership, interval: Duration, stop: &CancellationToken) {
    let lost = leadership.lost();
    while !lost.is_cancelled() && !stop.is_cancelled() {
        let queues = match queue::list(producer.client(), producer.layout()).await {
            Ok(q) => q,
            Err(e) => {
                warn!(error = %e, "cannot list queues");
                Vec::new()
            }
        };
        for q in queues {
            if lost.is_cancelled() {
                break;
            }
            match promoter::promote_due(producer, &q, Some(leadership)).await {
                Ok(_) => {}
                Err(Error::Fenced { epoch }) => {
                    warn!(epoch, "deposed: a newer scheduler holds the epoch");
                    return;
                }
                Err(e) if e.is_session_lost() => return,
                Err(e) => warn!(queue = %q, error = %e, "promoting delayed jobs failed; will retry"),
            }
        }
        tokio::select! {
            _ = lost.cancelled() => {}
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

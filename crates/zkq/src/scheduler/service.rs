//! The loop every leader service runs: a pass, a wait, again, until stopped, with one triage of
//! errors. A fenced write or a lost session ends the service, and with it the leader's term
//! (see [`crate::scheduler`]); any other error is logged and the pass runs again after a pause.
//!
//! ```ignore
//! let mut passes = Passes::new(stop, "trimming dead letters failed", interval);
//! while passes.ready().await {
//!     let result = trim_all(..).await.map(|()| Next::After(interval));
//!     passes.ended(result)?;
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::error::{Error, Result};

/// What a service waits for before its next pass.
pub(crate) enum Next {
    /// This long.
    After(Duration),
    /// This future: a watch firing, say.
    When(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// Whether `e` ends a leader service: a newer leader holds the epoch, or the session is gone.
pub(crate) fn ends_service(e: &Error) -> bool {
    matches!(e, Error::Fenced { .. }) || e.is_session_lost()
}

/// The passes of one service: when the next may start, and what a failed one means.
pub(crate) struct Passes<'a> {
    stop: &'a CancellationToken,
    failed: &'static str,
    retry: Duration,
    next: Option<Next>,
}

impl<'a> Passes<'a> {
    /// Passes until `stop`; a pass that fails is logged as `"<failed>; will retry"` and runs
    /// again after `retry`.
    pub(crate) fn new(stop: &'a CancellationToken, failed: &'static str, retry: Duration) -> Passes<'a> {
        Passes {
            stop,
            failed,
            retry,
            next: None,
        }
    }

    /// Waits for what the last pass asked for (nothing before the first); false once stopped.
    pub(crate) async fn ready(&mut self) -> bool {
        let wait = match self.next.take() {
            None => None,
            Some(Next::After(pause)) => Some(Box::pin(tokio::time::sleep(pause)) as Pin<Box<_>>),
            Some(Next::When(event)) => Some(event),
        };
        if let Some(wait) = wait {
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = wait => {}
            }
        }
        !self.stop.is_cancelled()
    }

    /// Takes how a pass ended: what to wait for, or an error.
    ///
    /// # Errors
    /// An error that ends the service ([`ends_service`]).
    pub(crate) fn ended(&mut self, result: Result<Next>) -> Result<()> {
        self.next = Some(match result {
            Ok(next) => next,
            Err(e) if ends_service(&e) => return Err(e),
            Err(e) => {
                warn!(error = %e, "{}; will retry", self.failed);
                Next::After(self.retry)
            }
        });
        Ok(())
    }
}

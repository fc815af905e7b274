//! The dashboard's ZooKeeper session, made again when it is lost.
//!
//! A dashboard runs for weeks; its session can expire (a long network cut, a paused VM). The
//! client never comes back from that, so the next request after a lost session opens a new one.
//! One request connects while the others wait for its result; a failure is answered at once for
//! a few seconds, so that pages report an outage quickly instead of each trying in turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use zkq::{Admin, ZkConfig};

/// How long a failed connect is the answer before another is tried.
const RETRY_AFTER: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Connection {
    zk: ZkConfig,
    root: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The admin in use; `None` after its session was lost, until one is opened again.
    admin: Option<Arc<Admin>>,
    /// The last failed connect: when, the address, and why.
    failed: Option<(Instant, String, String)>,
}

impl Connection {
    /// Connects once, so that a wrong address or credentials stop the server at start.
    pub async fn open(zk: ZkConfig, root: String) -> zkq::Result<Connection> {
        let admin = Admin::connect(&zk, &root).await?;
        Ok(Connection {
            zk,
            root,
            state: Mutex::new(State {
                admin: Some(Arc::new(admin)),
                failed: None,
            }),
        })
    }

    /// The admin to use, connected again if the last one lost its session.
    pub async fn admin(&self) -> zkq::Result<Arc<Admin>> {
        let mut state = self.state.lock().await;
        if let Some(admin) = state.admin.as_ref() {
            return Ok(admin.clone());
        }
        if let Some((at, address, reason)) = &state.failed {
            if at.elapsed() < RETRY_AFTER {
                return Err(zkq::Error::Unreachable {
                    address: address.clone(),
                    reason: reason.clone(),
                });
            }
        }
        match Admin::connect(&self.zk, &self.root).await {
            Ok(admin) => {
                let admin = Arc::new(admin);
                state.admin = Some(admin.clone());
                state.failed = None;
                Ok(admin)
            }
            Err(e) => {
                let (address, reason) = match &e {
                    zkq::Error::Unreachable { address, reason } => (address.clone(), reason.clone()),
                    other => (self.zk.address.clone(), other.to_string()),
                };
                state.failed = Some((Instant::now(), address, reason));
                Err(e)
            }
        }
    }

    /// Runs `f` on the admin; a lost session is dropped so that the next call opens another.
    pub async fn run<T, F, Fut>(&self, f: F) -> zkq::Result<T>
    where
        F: FnOnce(Arc<Admin>) -> Fut,
        Fut: std::future::Future<Output = zkq::Result<T>>,
    {
        let admin = self.admin().await?;
        let result = f(admin.clone()).await;
        if matches!(&result, Err(e) if e.is_session_lost()) {
            let mut state = self.state.lock().await;
            if state.admin.as_ref().is_some_and(|c| Arc::ptr_eq(c, &admin)) {
                state.admin = None;
            }
        }
        result
    }

    /// Closes the session, if no request still holds it.
    pub async fn close(self) {
        if let Some(admin) = self
            .state
            .into_inner()
            .admin
            .and_then(|a| Arc::try_unwrap(a).ok())
        {
            admin.close().await;
        }
    }
}

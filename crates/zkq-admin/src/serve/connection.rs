//! The dashboard's ZooKeeper session, made again when it is lost.
//!
//! A dashboard runs for weeks; its session can expire (a long network cut, a paused VM). The
//! client never comes back from that, so the next request after a lost session opens a new one.

use std::sync::Arc;

use tokio::sync::Mutex;
use zkq::{Admin, ZkConfig};

#[derive(Debug)]
pub struct Connection {
    zk: ZkConfig,
    root: String,
    /// The admin in use; `None` after its session was lost, until one is opened again.
    current: Mutex<Option<Arc<Admin>>>,
}

impl Connection {
    /// Connects once, so that a wrong address or credentials stop the server at start.
    pub async fn open(zk: ZkConfig, root: String) -> zkq::Result<Connection> {
        let admin = Admin::connect(&zk, &root).await?;
        Ok(Connection {
            zk,
            root,
            current: Mutex::new(Some(Arc::new(admin))),
        })
    }

    /// The admin to use, connected again if the last one lost its session.
    pub async fn admin(&self) -> zkq::Result<Arc<Admin>> {
        let mut current = self.current.lock().await;
        if let Some(admin) = current.as_ref() {
            return Ok(admin.clone());
        }
        let admin = Arc::new(Admin::connect(&self.zk, &self.root).await?);
        *current = Some(admin.clone());
        Ok(admin)
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
            let mut current = self.current.lock().await;
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &admin)) {
                *current = None;
            }
        }
        result
    }

    /// Closes the session, if no request still holds it.
    pub async fn close(self) {
        if let Some(admin) = self.current.into_inner().and_then(|a| Arc::try_unwrap(a).ok()) {
            admin.close().await;
        }
    }
}

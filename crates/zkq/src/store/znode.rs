//! Small ZooKeeper helpers shared by the modules: sessions, paths, create modes.

use std::time::Duration;

use zookeeper_client as zk;

use crate::error::{Error, Result};

pub(crate) const PERSISTENT: zk::CreateOptions<'static> =
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
pub(crate) const PERSISTENT_SEQUENTIAL: zk::CreateOptions<'static> =
    zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
pub(crate) const EPHEMERAL_SEQUENTIAL: zk::CreateOptions<'static> =
    zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
pub(crate) const EPHEMERAL: zk::CreateOptions<'static> =
    zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// How to reach ZooKeeper.
#[derive(Debug, Clone)]
pub struct ZkConfig {
    /// Connect string, `host:port[,host:port...]`. Defaults to `127.0.0.1:2181`.
    pub address: String,
    /// Session timeout asked of the server: how long a silent process keeps its ephemerals
    /// (claims, registration). Defaults to 10 s.
    pub session_timeout: Duration,
    /// How long to try to establish a session before giving up. Defaults to 10 s.
    pub connect_timeout: Duration,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            address: "127.0.0.1:2181".into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl ZkConfig {
    /// The defaults, at `address`.
    pub fn new(address: impl Into<String>) -> ZkConfig {
        ZkConfig {
            address: address.into(),
            ..ZkConfig::default()
        }
    }

    /// Opens a session, retrying until `connect_timeout`.
    ///
    /// # Errors
    /// [`Error::Unreachable`] with the address and the last reason when no server answered.
    pub async fn connect(&self) -> Result<zk::Client> {
        self.connect_with(zk::Client::connector()).await
    }

    /// Like [`ZkConfig::connect`], but the session is left to expire instead of being closed when
    /// the client is dropped, as if the process had crashed.
    pub async fn connect_detached(&self) -> Result<zk::Client> {
        self.connect_with(zk::Client::connector().with_detached()).await
    }

    async fn connect_with(&self, connector: zk::Connector) -> Result<zk::Client> {
        let unreachable = |reason: String| Error::Unreachable {
            address: self.address.clone(),
            reason,
        };
        if self.address.trim().is_empty() {
            return Err(unreachable("the connect string is empty".into()));
        }
        let connector = connector
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly();
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = String::from("timed out");
        loop {
            let attempt = connector.clone().connect(&self.address);
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(zk::Error::BadArguments(reason))) => {
                    return Err(unreachable(format!("bad connect string: {reason}")))
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => {
                    return Err(unreachable(format!(
                        "no session within {:?} ({last})",
                        self.connect_timeout
                    )))
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
                return Err(unreachable(format!(
                    "no session within {:?} ({last})",
                    self.connect_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Creates `path` and its missing ancestors as empty persistent znodes.
pub(crate) async fn ensure_path(client: &zk::Client, path: &str) -> Result<()> {
    match client.check_stat(path).await {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => {}
        Err(e) => return Err(Error::zk("stat", path, e)),
    }
    let mut prefix = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        prefix.push('/');
        prefix.push_str(part);
        match client.create(&prefix, &[], &PERSISTENT).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(Error::zk("create", prefix, e)),
        }
    }
    Ok(())
}

/// Closes the session of `client`, the last handle on it, and waits up to `within` for the
/// close to go out. Dropping the last handle only asks the session task to close; a process
/// that exits right after would leave its session (and its ephemeral znodes: registration,
/// claims, election candidacy) to linger until the server expires it.
pub(crate) async fn close(client: zk::Client, within: Duration) {
    let mut states = client.state_watcher();
    drop(client);
    let closed = async {
        while !states.state().is_terminated() {
            states.changed().await;
        }
    };
    let _ = tokio::time::timeout(within, closed).await;
}

/// Waits until `client` is connected again.
///
/// # Errors
/// [`Error::SessionLost`] when the session ends instead.
pub(crate) async fn connected(client: &zk::Client) -> Result<()> {
    let mut states = client.state_watcher();
    let mut state = states.peek_state();
    loop {
        if state == zk::SessionState::SyncConnected {
            return Ok(());
        }
        // A session already over sends no more changes: waiting for one would never end.
        if state.is_terminated() {
            return Err(Error::SessionLost(zk::Error::SessionExpired));
        }
        state = states.changed().await;
    }
}

/// Deletes the ephemeral `path` of `client`'s session (a lock node, a place in line) for sure:
/// the delete is sent at once, and when the connection drops with it in flight, it is sent again
/// once the connection is back, until it lands or the session is over (which deletes the node
/// anyway). A delete lost with the connection would otherwise leave the node for as long as the
/// session lives: a lock never released. Without a runtime, the delete is only sent.
pub(crate) fn delete_surely(client: &zk::Client, path: String) {
    let first = client.delete(&path, None);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        drop(first);
        return;
    };
    let client = client.clone();
    runtime.spawn(async move {
        let mut sent = first.await;
        loop {
            match sent {
                Ok(()) | Err(zk::Error::NoNode) => return,
                Err(e) if is_final(&e) => return,
                Err(_) => {
                    if connected(&client).await.is_err() {
                        return;
                    }
                    sent = client.delete(&path, None).await;
                }
            }
        }
    });
}

/// Whether a request failed because the session is gone for good (retrying on this client is
/// pointless).
pub(crate) fn is_final(e: &zk::Error) -> bool {
    matches!(
        e,
        zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::NoHosts | zk::Error::AuthFailed
    )
}

/// A new session for a process that runs session after session: the first failure to connect
/// is returned (a wrong address should fail fast), later ones are retried every second.
pub(crate) async fn reconnect(zk: &ZkConfig, first: bool) -> Result<zk::Client> {
    loop {
        match zk.connect().await {
            Ok(client) => return Ok(client),
            Err(e) if first => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reconnect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Most reads in one multi-read.
const READ_BATCH: usize = 64;

/// The data and stat of each of `paths`, in order, read in multi-reads that are all sent at once;
/// `None` for a znode that is gone.
pub(crate) async fn get_many(
    client: &zk::Client,
    what: &'static str,
    paths: &[String],
) -> Result<Vec<Option<(Vec<u8>, zk::Stat)>>> {
    let mut sent = Vec::new();
    for chunk in paths.chunks(READ_BATCH) {
        let mut reader = client.new_multi_reader();
        for path in chunk {
            reader.add_get_data(path).map_err(|e| Error::zk(what, path, e))?;
        }
        let first = chunk.first().cloned().unwrap_or_default();
        let reply = reader.commit();
        sent.push(async move { reply.await.map_err(|e| Error::zk(what, first, e)) });
    }
    let mut out = Vec::with_capacity(paths.len());
    for results in futures::future::join_all(sent).await {
        out.extend(results?.into_iter().map(|r| match r {
            zk::MultiReadResult::Data { data, stat } => Some((data, stat)),
            _ => None,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_connection_ends_when_the_session_is_already_over() {
        let server = zkq_testkit::shared();
        let proxy = zkq_testkit::Proxy::start(&server.connect_string()).unwrap();
        let zk = ZkConfig {
            address: proxy.address(),
            session_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(20),
        };
        let client = zk.connect().await.unwrap();
        // Cut off until the session has expired, then let the client find out.
        proxy.partition();
        tokio::time::sleep(Duration::from_millis(3000)).await;
        proxy.heal();
        let mut states = client.state_watcher();
        tokio::time::timeout(Duration::from_secs(20), async {
            while !states.state().is_terminated() {
                states.changed().await;
            }
        })
        .await
        .expect("the client learns that its session expired");
        // The session ended before anyone asked: the wait must end too, not wait for a change.
        let waited = tokio::time::timeout(Duration::from_secs(5), connected(&client)).await;
        assert!(matches!(waited, Ok(Err(Error::SessionLost(_)))), "{waited:?}");
    }
}

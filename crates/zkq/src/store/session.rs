//! Sessions: [`ZkConfig`] and connecting with a deadline and clear errors, waiting for a
//! connection (which ends when the session does), closing within a bound, and telling a final
//! error from a passing one.

use std::time::Duration;

use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::store::tls::TlsConfig;

/// Credentials for one ZooKeeper authentication scheme, such as `digest` with `user:password`,
/// or `sasl` with `user:password` for SASL DIGEST-MD5 ([`SASL`]).
/// Sent on every connection before any request, so a reconnected or new session has them too.
/// Never printed: `Debug` shows the scheme and, for `digest`, the user.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    scheme: String,
    secret: String,
}

impl Credentials {
    /// Parses `SCHEME:CREDENTIALS`, such as `digest:user:password`. The error never repeats the
    /// credentials.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a missing scheme or credentials, or a `digest` without a
    /// `user:password` pair.
    pub fn parse(text: &str) -> Result<Credentials> {
        let text = text.trim();
        let Some((scheme, secret)) = text.split_once(':') else {
            return Err(Error::InvalidConfig(
                "credentials must look like SCHEME:CREDENTIALS, such as digest:user:password".into(),
            ));
        };
        if scheme.is_empty() || secret.is_empty() {
            return Err(Error::InvalidConfig(
                "credentials need a scheme and credentials, such as digest:user:password".into(),
            ));
        }
        if (scheme == "digest" || scheme == SASL)
            && !secret
                .split_once(':')
                .is_some_and(|(u, p)| !u.is_empty() && !p.is_empty())
        {
            return Err(Error::InvalidConfig(format!(
                "{scheme} credentials must be {scheme}:user:password"
            )));
        }
        Ok(Credentials {
            scheme: scheme.to_string(),
            secret: secret.to_string(),
        })
    }

    /// Reads credentials from a file, one `SCHEME:CREDENTIALS` per line (blank lines and lines
    /// starting with `#` skipped). The file must not be readable or writable by group or
    /// others.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a file that cannot be read, is open to group or others, holds
    /// no credentials, or holds a malformed line (named by number, not repeated).
    pub fn from_file(path: &std::path::Path) -> Result<Vec<Credentials>> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::InvalidConfig(format!("cannot read the auth file {shown}: {e}")))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::InvalidConfig(format!(
                "the auth file {shown} is open to group or others (mode {mode:03o}): make it private with chmod 600"
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidConfig(format!("cannot read the auth file {shown}: {e}")))?;
        let mut found = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            found.push(
                Credentials::parse(line).map_err(|e| {
                    Error::InvalidConfig(format!("the auth file {shown}, line {}: {e}", n + 1))
                })?,
            );
        }
        if found.is_empty() {
            return Err(Error::InvalidConfig(format!(
                "the auth file {shown} holds no credentials"
            )));
        }
        Ok(found)
    }

    /// The credentials proper (`user:password` for digest and SASL).
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// The scheme, such as `digest`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.scheme.as_str(), self.secret.split_once(':')) {
            ("digest" | SASL, Some((user, _))) => write!(f, "Credentials({}:{user}:…)", self.scheme),
            (scheme, _) => write!(f, "Credentials({scheme}:…)"),
        }
    }
}

/// Environment variables that carry zkq's own ZooKeeper credentials (or point to them): removed
/// from the environment of every command zkq starts, which runs job payloads, not zkq.
pub const CREDENTIAL_VARS: &[&str] = &["ZKQ_AUTH", "ZKQ_AUTH_FILE", "ZKQ_TLS_KEY"];

/// The scheme of credentials sent over SASL (DIGEST-MD5) rather than as an `addauth`: the server
/// checks them against its JAAS `Server` section, and the session's identity is `sasl:<user>`.
pub const SASL: &str = "sasl";

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
    /// Credentials added to every session (none by default). With credentials, every znode
    /// zkq creates is creator-all ([`crate::AclPolicy`]).
    pub auth: Vec<Credentials>,
    /// Identities given read-only access to every znode zkq creates (with credentials only).
    pub acl_read: Vec<zk::AuthId>,
    /// TLS to ZooKeeper's secure client port; every server of `address` is then reached over
    /// TLS (none by default).
    pub tls: Option<TlsConfig>,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            address: "127.0.0.1:2181".into(),
            session_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            auth: Vec::new(),
            acl_read: Vec::new(),
            tls: None,
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

    /// Opens a session with `connector`'s own settings (detached, a connection timeout), as
    /// [`ZkConfig::connect`] does.
    pub(crate) async fn connect_with(&self, connector: zk::Connector) -> Result<zk::Client> {
        let unreachable = |reason: String| Error::Unreachable {
            address: self.address.clone(),
            reason,
        };
        if self.address.trim().is_empty() {
            return Err(unreachable("the connect string is empty".into()));
        }
        let mut connector = connector
            .with_session_timeout(self.session_timeout)
            .with_fail_eagerly();
        let mut sasl = None;
        for credentials in &self.auth {
            if credentials.scheme == SASL {
                if sasl.is_some() {
                    return Err(Error::InvalidConfig(
                        "one session authenticates over SASL once: give one sasl:user:password".into(),
                    ));
                }
                let (user, password) = credentials.secret.split_once(':').unwrap_or_default();
                sasl = Some(zk::SaslOptions::digest_md5(
                    user.to_string(),
                    password.to_string(),
                ));
            } else {
                connector = connector.with_auth(&credentials.scheme, credentials.secret.as_bytes());
            }
        }
        if let Some(sasl) = sasl {
            connector = connector.with_sasl(sasl);
        }
        if let Some(tls) = &self.tls {
            connector = connector.with_tls(tls.options()?);
        }
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let mut last = String::from("timed out");
        loop {
            let attempt = {
                let connector = connector.clone();
                let tls = self.tls.is_some();
                async move {
                    if tls {
                        // Every `host:port` over TLS (`tcp://host:port` would opt one out).
                        connector.secure_connect(&self.address).await
                    } else {
                        connector.connect(&self.address).await
                    }
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(client)) => return Ok(client),
                Ok(Err(zk::Error::BadArguments(reason))) => {
                    return Err(unreachable(format!("bad connect string: {reason}")))
                }
                Ok(Err(zk::Error::AuthFailed)) => {
                    let schemes: Vec<&str> = self.auth.iter().map(|c| c.scheme()).collect();
                    return Err(unreachable(format!(
                        "ZooKeeper refused the credentials given (schemes: {})",
                        schemes.join(", ")
                    )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_parsed_and_never_printed() {
        let c = Credentials::parse("digest:ops:s3cr3t:with:colons").unwrap();
        assert_eq!(c.scheme(), "digest");
        let shown = format!(
            "{c:?} {:?}",
            ZkConfig {
                auth: vec![c.clone()],
                ..ZkConfig::default()
            }
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("digest:ops:"), "{shown}");
        for bad in [
            "",
            "digest",
            "digest:",
            ":x",
            "digest:nopassword",
            "digest::p",
            "digest:u:",
            "sasl:nopassword",
        ] {
            let e = Credentials::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("nopassword"), "{e}");
        }
        let sasl = Credentials::parse("sasl:zkq:s3cr3t").unwrap();
        let shown = format!("{sasl:?}");
        assert!(
            shown.contains("sasl:zkq:") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn an_auth_file_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("zkq-auth-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth");
        std::fs::write(&path, "# ops\ndigest:ops:s3cr3t\n\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Credentials::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("open to group or others (mode 644)"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Credentials::from_file(&path).unwrap().len(), 1);
        std::fs::write(&path, "digest:ops\n").unwrap();
        let e = Credentials::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("digest:ops"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_for_a_connection_ends_when_the_session_is_already_over() {
        let server = zkq_testkit::shared();
        let proxy = zkq_testkit::Proxy::start(&server.connect_string()).unwrap();
        let zk = ZkConfig {
            address: proxy.address(),
            session_timeout: Duration::from_millis(1000),
            connect_timeout: Duration::from_secs(20),
            ..ZkConfig::default()
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

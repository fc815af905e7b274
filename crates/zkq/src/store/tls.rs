//! TLS to ZooKeeper's secure client port (`secureClientPort`, served by the Netty connection
//! factory): the certificate authority that signed the servers' certificates, and this client's
//! own certificate and key, which ZooKeeper asks for by default (`ssl.clientAuth=need`).
//!
//! Files are read once, when the config is made, so that a wrong path or a malformed PEM is an
//! error at start rather than a session that never comes.

use std::path::Path;

use zookeeper_client as zk;

use crate::error::{Error, Result};

/// TLS settings for every session of a [`crate::ZkConfig`]. The private key is never printed.
#[derive(Clone)]
pub struct TlsConfig {
    ca: String,
    identity: Option<(String, String)>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// TLS trusting the certificates in `ca` (PEM), presenting `identity` (certificate chain and
    /// private key, PEM) when given.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a PEM holds no certificate or no key.
    pub fn from_pem(ca: &str, identity: Option<(&str, &str)>) -> Result<TlsConfig> {
        let config = TlsConfig {
            ca: ca.to_string(),
            identity: identity.map(|(cert, key)| (cert.to_string(), key.to_string())),
        };
        config.options()?;
        Ok(config)
    }

    /// TLS with the PEM files at these paths: the CA certificates, and this client's certificate
    /// and key (both or neither).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the file that cannot be read or used, a certificate
    /// without its key (or the other way round), or a key file others may read.
    pub fn from_files(ca: &Path, cert: Option<&Path>, key: Option<&Path>) -> Result<TlsConfig> {
        let read = |what: &str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| {
                Error::InvalidConfig(format!("cannot read the TLS {what} {}: {e}", path.display()))
            })
        };
        let ca_pem = read("CA file", ca)?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => {
                refuse_shared_key(key)?;
                Some((read("certificate", cert)?, read("key", key)?))
            }
            (None, None) => None,
            _ => {
                return Err(Error::InvalidConfig(
                    "--tls-cert and --tls-key go together: a client certificate needs its key".into(),
                ))
            }
        };
        let config = TlsConfig { ca: ca_pem, identity };
        let options = zk::TlsOptions::new()
            .with_pem_ca(&config.ca)
            .map_err(|e| Error::InvalidConfig(format!("unusable TLS CA file {}: {e}", ca.display())))?;
        if let (Some((cert_pem, key_pem)), Some(cert)) = (&config.identity, cert) {
            options.with_pem_identity(cert_pem, key_pem).map_err(|e| {
                Error::InvalidConfig(format!(
                    "unusable TLS client certificate {} or key: {e}",
                    cert.display()
                ))
            })?;
        }
        Ok(config)
    }

    /// The client crate's options for these settings.
    pub(crate) fn options(&self) -> Result<zk::TlsOptions> {
        let bad = |what: &str, e: zk::Error| Error::InvalidConfig(format!("unusable TLS {what}: {e}"));
        let mut options = zk::TlsOptions::new()
            .with_pem_ca(&self.ca)
            .map_err(|e| bad("CA certificates", e))?;
        if let Some((cert, key)) = &self.identity {
            options = options
                .with_pem_identity(cert, key)
                .map_err(|e| bad("client certificate or key", e))?;
        }
        Ok(options)
    }
}

/// A private key that any local user may read is refused, as an auth file is.
fn refuse_shared_key(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::InvalidConfig(format!("cannot read the TLS key {}: {e}", path.display())))?;
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(Error::InvalidConfig(format!(
            "the TLS key {} is readable by every local user: chmod o-r it (0600 or 0640)",
            path.display()
        )));
    }
    Ok(())
}

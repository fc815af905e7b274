//! The ACL zkq gives every znode it creates, and how an existing tree is checked against it.
//!
//! Without credentials every znode is open (`world:anyone:cdrwa`), as ZooKeeper's own default.
//! With credentials ([`ZkConfig::auth`]) the default is creator-all for the identities of those
//! credentials, named explicitly: `digest:user:HASH` for digest credentials (HASH being
//! `base64(sha1(user:password))`, as ZooKeeper computes it) and `sasl:user` for SASL ones. Not
//! ZooKeeper's `auth` scheme, which the server expands into every identity of the creating
//! session: over TLS that includes the client certificate's `x509:` name, so each znode would
//! then grant all to whichever certificate made it, and processes with different certificates
//! would leave different ACLs. Credentials of other schemes, whose identity zkq cannot tell, do
//! fall back to the `auth` scheme. Monitoring identities get read-only access with
//! [`ZkConfig::acl_read`] (`world:anyone`, `digest:monitor:HASH`, ...).
//!
//! Every create goes through [`AclPolicy::options`], so the policy covers ephemerals (claims,
//! worker registrations, places in line) as much as jobs and queue configs.

use std::sync::Arc;

use zookeeper_client as zk;

use crate::error::{Error, Result};
use crate::store::session::{Credentials, ZkConfig, SASL};

/// The ACL of every znode zkq creates under one root. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclPolicy {
    acls: Arc<Vec<zk::Acl>>,
}

impl Default for AclPolicy {
    fn default() -> Self {
        AclPolicy::open()
    }
}

impl AclPolicy {
    /// Everyone may do everything: the policy without credentials.
    pub fn open() -> AclPolicy {
        AclPolicy {
            acls: Arc::new(zk::Acls::anyone_all().to_vec()),
        }
    }

    /// Only the identities of `credentials` may do anything; each of `readers` may read.
    pub fn creator_all(credentials: &[Credentials], readers: &[zk::AuthId]) -> AclPolicy {
        let mut acls: Vec<zk::Acl> = Vec::new();
        for credentials in credentials {
            let owner = identity(credentials).map_or_else(
                // An identity zkq cannot tell: the server's expansion of the session's.
                || zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
                |id| zk::Acl::new(zk::Permission::ALL, id),
            );
            if !acls.contains(&owner) {
                acls.push(owner);
            }
        }
        for reader in readers {
            acls.push(zk::Acl::new(zk::Permission::READ, reader.clone()));
        }
        AclPolicy { acls: Arc::new(acls) }
    }

    /// The policy `config` asks for: creator-all plus its readers when it has credentials, open
    /// otherwise.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for readers without credentials: every znode would be open to
    /// everyone anyway, which is surely not what was meant.
    pub fn for_config(config: &ZkConfig) -> Result<AclPolicy> {
        if config.auth.is_empty() {
            if !config.acl_read.is_empty() {
                return Err(Error::InvalidConfig(
                    "--acl-read (or ZKQ_ACL_READ) needs credentials (--auth): without them every \
                     znode zkq creates is open to everyone"
                        .into(),
                ));
            }
            return Ok(AclPolicy::open());
        }
        Ok(AclPolicy::creator_all(&config.auth, &config.acl_read))
    }

    /// Whether this is the open policy.
    pub fn is_open(&self) -> bool {
        self.acls.as_slice() == &*zk::Acls::anyone_all()
    }

    /// The ACL entries, as given to create.
    pub fn acls(&self) -> &[zk::Acl] {
        &self.acls
    }

    /// Whether the server expands an entry of this policy into the creating session's
    /// identities (credentials of a scheme zkq cannot name).
    pub(crate) fn expanded_by_server(&self) -> bool {
        self.acls.iter().any(|a| a.scheme() == "auth")
    }

    /// Create options for a znode of `mode` under this policy.
    pub(crate) fn options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'_> {
        mode.with_acls(zk::Acls::new(&self.acls))
    }
}

/// The identity ZooKeeper gives a session holding `credentials`, for the schemes zkq knows.
fn identity(credentials: &Credentials) -> Option<zk::AuthId> {
    use base64::Engine;
    let (user, password) = credentials.secret().split_once(':')?;
    match credentials.scheme() {
        "digest" => {
            let hash = sha1_smol::Sha1::from(format!("{user}:{password}"))
                .digest()
                .bytes();
            let hash = base64::engine::general_purpose::STANDARD.encode(hash);
            Some(zk::AuthId::new("digest", &format!("{user}:{hash}")))
        }
        SASL => Some(zk::AuthId::new(SASL, user)),
        _ => None,
    }
}

/// Parses an ACL identity `SCHEME:ID`, such as `world:anyone`, `digest:monitor:HASH` (the id is
/// `user:base64(sha1(user:password))`, as `zkCli` and ZooKeeper's `DigestAuthenticationProvider`
/// print it), `ip:10.0.0.0/8`, `sasl:monitor` or `x509:CN=monitor`.
///
/// # Errors
/// A message naming the expected form; a digest id is checked for its `user:hash` shape, so
/// that a password given by mistake is refused rather than stored in an ACL.
pub fn parse_acl_id(text: &str) -> std::result::Result<zk::AuthId, String> {
    let form = "expected SCHEME:ID, such as world:anyone, digest:USER:HASH, ip:10.0.0.0/8";
    let Some((scheme, id)) = text.split_once(':') else {
        return Err(form.into());
    };
    if scheme.is_empty() || id.is_empty() {
        return Err(form.into());
    }
    match scheme {
        "world" if id != "anyone" => Err("the world scheme has one id: world:anyone".into()),
        "digest" => {
            let Some((user, hash)) = id.split_once(':') else {
                return Err("a digest id is digest:USER:HASH, HASH being base64(sha1(USER:PASSWORD))".into());
            };
            // A SHA-1 digest in base64 is 28 characters ending in '='.
            let base64 = |c: char| c.is_ascii_alphanumeric() || c == '+' || c == '/';
            if user.is_empty() || hash.len() != 28 || !hash.ends_with('=') || !hash[..27].chars().all(base64)
            {
                return Err(
                    "a digest id is digest:USER:HASH, HASH being base64(sha1(USER:PASSWORD)), 28 \
                     characters (not the password)"
                        .into(),
                );
            }
            Ok(zk::AuthId::new(scheme, id))
        }
        "world" | "ip" | "sasl" | "x509" => Ok(zk::AuthId::new(scheme, id)),
        _ => Err(format!(
            "unknown ACL scheme {scheme:?}; zkq knows world, digest, ip, sasl and x509"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_ids_are_parsed_and_passwords_are_refused() {
        let id = parse_acl_id("world:anyone").unwrap();
        assert_eq!((id.scheme(), id.id()), ("world", "anyone"));
        let id = parse_acl_id("digest:monitor:KO7IZMyjYmQpoqSFCn3ZZHj6fFE=").unwrap();
        assert_eq!(
            (id.scheme(), id.id()),
            ("digest", "monitor:KO7IZMyjYmQpoqSFCn3ZZHj6fFE=")
        );
        assert_eq!(parse_acl_id("ip:10.0.0.0/8").unwrap().id(), "10.0.0.0/8");
        for bad in [
            "",
            "world",
            "world:",
            ":x",
            "world:everyone",
            "digest:monitor:secret",
            "digest:monitor",
            "foo:bar",
        ] {
            let err = parse_acl_id(bad).expect_err(bad);
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn credentials_make_creator_all_with_readers_and_none_make_open() {
        let mut config = ZkConfig::default();
        assert!(AclPolicy::for_config(&config).unwrap().is_open());
        config.acl_read = vec![zk::AuthId::anyone()];
        assert!(
            AclPolicy::for_config(&config).is_err(),
            "readers without credentials"
        );
        config.auth = vec![
            Credentials::parse("digest:zkq:pw").unwrap(),
            Credentials::parse("sasl:svc:pw2").unwrap(),
        ];
        let policy = AclPolicy::for_config(&config).unwrap();
        assert!(!policy.is_open() && !policy.expanded_by_server());
        // The digest id as ZooKeeper's DigestAuthenticationProvider computes it.
        assert_eq!(
            policy.acls(),
            [
                zk::Acl::new(
                    zk::Permission::ALL,
                    zk::AuthId::new("digest", "zkq:uPhTktmrlIeEg30WtBX/hL3eskM=")
                ),
                zk::Acl::new(zk::Permission::ALL, zk::AuthId::new("sasl", "svc")),
                zk::Acl::new(zk::Permission::READ, zk::AuthId::anyone()),
            ]
        );
        // A scheme whose identity zkq cannot name falls back to the server's expansion.
        config.auth = vec![Credentials::parse("custom:token").unwrap()];
        assert!(AclPolicy::for_config(&config).unwrap().expanded_by_server());
    }
}

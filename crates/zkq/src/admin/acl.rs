//! ACLs of an existing tree checked against the configured policy, and fixed: for a tree made
//! before credentials were turned on (every znode `world:anyone:cdrwa`), or with other readers.
//!
//! The ACL to expect is the policy's, as the server stores it: the credentials' identities named
//! explicitly, plus the readers. Only for credentials of a scheme zkq cannot name is it read back
//! from an ephemeral probe, created under the policy and expanded by the server.

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use zookeeper_client as zk;

use super::{Admin, STATS_IN_FLIGHT};
use crate::error::{Error, Result};

/// Paths listed in an [`AclReport`] at most; the counts cover all.
const LISTED: usize = 100;

/// One ACL entry as ZooKeeper shows it (`digest`, `zkq:HASH`, `cdrwa`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AclEntry {
    pub scheme: String,
    pub id: String,
    /// Permissions as zkCli prints them: a subset of `cdrwa`.
    pub perms: String,
}

impl AclEntry {
    fn from_zk(acl: &zk::Acl) -> AclEntry {
        let perms = [
            (zk::Permission::CREATE, 'c'),
            (zk::Permission::DELETE, 'd'),
            (zk::Permission::READ, 'r'),
            (zk::Permission::WRITE, 'w'),
            (zk::Permission::ADMIN, 'a'),
        ]
        .iter()
        .filter(|(p, _)| acl.permission().has(*p))
        .map(|(_, c)| *c)
        .collect();
        AclEntry {
            scheme: acl.scheme().to_string(),
            id: acl.id().to_string(),
            perms,
        }
    }
}

impl std::fmt::Display for AclEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.scheme, self.id, self.perms)
    }
}

/// What a check (or an apply) found under the root.
#[derive(Debug, Clone, Serialize)]
pub struct AclReport {
    /// The ACL every znode should have.
    pub expected: Vec<AclEntry>,
    /// Znodes looked at (the root and everything below it).
    pub checked: usize,
    /// Znodes whose ACL differed.
    pub differing: usize,
    /// Of those, the ACLs set to the expected one (by `apply`; 0 for a check).
    pub fixed: usize,
    /// The first differing znodes with their ACL, in the order found (at most 100).
    pub examples: Vec<AclDifference>,
}

/// A znode whose ACL is not the expected one.
#[derive(Debug, Clone, Serialize)]
pub struct AclDifference {
    pub path: String,
    pub acl: Vec<AclEntry>,
}

impl Admin {
    /// The ACL every znode under the root should have, as the server stores it: the policy's
    /// own entries, or, when the policy leaves the identities to the server (credentials of a
    /// scheme zkq cannot name), what the server stored for an ephemeral probe just created.
    ///
    /// # Errors
    /// With a probe: [`Error::NotFound`] when the root does not exist; [`Error::NotAuthorized`]
    /// when this session may not create under it.
    pub async fn acl_expected(&self) -> Result<Vec<zk::Acl>> {
        let policy = self.layout.acl();
        if !policy.expanded_by_server() {
            return Ok(policy.acls().to_vec());
        }
        let root = self.layout.root();
        let probe = format!(
            "{}/acl-probe-{}",
            root.trim_end_matches('/'),
            uuid::Uuid::new_v4().simple()
        );
        let options = policy.options(zk::CreateMode::Ephemeral);
        match self.client.create(&probe, &[], &options).await {
            Ok(_) => {}
            Err(zk::Error::NoNode) => return Err(Error::NotFound(format!("no zkq tree at {root}"))),
            Err(e) => return Err(Error::zk("create ACL probe", probe, e)),
        }
        let acl = self.client.get_acl(&probe).await;
        crate::store::znode::delete_surely(&self.client, probe.clone());
        let (acl, _) = acl.map_err(|e| Error::zk("read ACL probe", probe, e))?;
        Ok(acl)
    }

    /// Every znode under the root (the root included) whose ACL is not [`Admin::acl_expected`].
    /// Reads the ACL of every znode: on a large backlog this takes a while (about a minute per
    /// million znodes).
    ///
    /// # Errors
    /// [`Error::NotFound`] when the root does not exist; a znode this session may not list or
    /// read the ACL of is an [`Error::NotAuthorized`] naming it.
    pub async fn acl_check(&self) -> Result<AclReport> {
        self.walk(false).await
    }

    /// Sets the expected ACL on every znode whose ACL differs (see [`Admin::acl_check`]).
    ///
    /// # Errors
    /// As [`Admin::acl_check`]; a znode whose ACL this session may not change (it lacks ADMIN)
    /// is an [`Error::NotAuthorized`] naming it.
    pub async fn acl_apply(&self) -> Result<AclReport> {
        self.walk(true).await
    }

    /// Walks the tree depth first, reading (and with `fix`, setting) ACLs, a bounded number of
    /// znodes in flight: memory stays that of the paths waiting their turn, not of a whole level
    /// of a million jobs, and the first refusal ends the walk at once.
    async fn walk(&self, fix: bool) -> Result<AclReport> {
        let expected = sorted(self.acl_expected().await?);
        let mut report = AclReport {
            expected: expected.iter().map(AclEntry::from_zk).collect(),
            checked: 0,
            differing: 0,
            fixed: 0,
            examples: Vec::new(),
        };
        let root = self.layout.root().to_string();
        match self.client.check_stat(&root).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::NotFound(format!("no zkq tree at {root}"))),
            Err(e) => return Err(Error::zk("stat", root, e)),
        }
        let mut waiting = vec![root];
        let mut in_flight = FuturesUnordered::new();
        while !waiting.is_empty() || !in_flight.is_empty() {
            while in_flight.len() < STATS_IN_FLIGHT {
                let Some(path) = waiting.pop() else { break };
                in_flight.push(self.visit(path, &expected, fix));
            }
            let Some(visit) = in_flight.next().await else {
                break;
            };
            // A znode gone meanwhile (a job done, a claim released) is simply not counted.
            let Some(visit) = visit? else { continue };
            report.checked += 1;
            if let Some(acl) = visit.differing {
                report.differing += 1;
                report.fixed += usize::from(fix);
                if report.examples.len() < LISTED {
                    report.examples.push(AclDifference {
                        path: visit.path,
                        acl: acl.iter().map(AclEntry::from_zk).collect(),
                    });
                }
            }
            waiting.extend(visit.children);
        }
        Ok(report)
    }

    /// Reads the ACL of `path` (setting `expected` when it differs and `fix`) and lists its
    /// children. `None` when the znode is gone.
    async fn visit(&self, path: String, expected: &[zk::Acl], fix: bool) -> Result<Option<Visit>> {
        let acl = match self.client.get_acl(&path).await {
            Ok((acl, _)) => sorted(acl),
            Err(zk::Error::NoNode) => return Ok(None),
            Err(e) => return Err(Error::zk("read ACL", path, e)),
        };
        let differing = (acl != expected).then_some(acl);
        if fix && differing.is_some() {
            match self.client.set_acl(&path, expected, None).await {
                Ok(_) => {}
                Err(zk::Error::NoNode) => return Ok(None),
                Err(e) => return Err(Error::zk("acl set", path, e)),
            }
        }
        let children = match self.client.list_children(&path).await {
            Ok(children) => children,
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(Error::zk("list", path, e)),
        };
        let children = children
            .into_iter()
            .filter(|c| !(path == "/" && c == "zookeeper"))
            .map(|c| {
                if path == "/" {
                    format!("/{c}")
                } else {
                    format!("{path}/{c}")
                }
            })
            .collect();
        Ok(Some(Visit {
            path,
            differing,
            children,
        }))
    }
}

/// One znode looked at.
struct Visit {
    path: String,
    /// Its ACL, when it was not the expected one.
    differing: Option<Vec<zk::Acl>>,
    children: Vec<String>,
}

/// `acl` in a canonical order, so that two ACLs compare as sets.
fn sorted(mut acl: Vec<zk::Acl>) -> Vec<zk::Acl> {
    acl.sort_by_cached_key(|a| {
        let entry = AclEntry::from_zk(a);
        (entry.scheme, entry.id, entry.perms)
    });
    acl
}

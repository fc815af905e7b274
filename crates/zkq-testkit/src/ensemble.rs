//! A standalone ZooKeeper server or a quorum of members, started and torn down by tests.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::install;
use crate::server::{Member, Mode, BENCHMARK_JVM, TEST_JVM};

/// What a test server adds to plain connections.
#[derive(Clone, Copy)]
enum Security<'a> {
    None,
    Tls(&'a crate::tls::TestCerts),
    Sasl(&'a [(&'a str, &'a str)]),
}

/// Settings a benchmark server adds to the production-like defaults, to measure their effect.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// JVM flags after the defaults' (`-Xms1g -Xmx4g`), so a later `-Xmx` wins.
    pub jvm: Vec<String>,
    /// `key=value` lines appended to each member's `zoo.cfg`, overriding the defaults;
    /// `{member}` in a value is replaced by the member's id (for directories of its own).
    pub config: Vec<String>,
}

/// A running ZooKeeper service: one standalone server, or a quorum of members.
///
/// Dropping it kills every member and removes the data directory.
#[derive(Debug)]
pub struct Ensemble {
    members: Vec<Member>,
    // Dropped after the members, so their files outlive the processes. `None` once kept.
    dir: Option<tempfile::TempDir>,
    path: std::path::PathBuf,
}

impl Ensemble {
    /// Starts one standalone server and waits until it serves.
    pub fn standalone() -> Result<Ensemble, String> {
        Self::start(1, TEST_JVM)
    }

    /// Starts one standalone server that also serves TLS with `certs` (on
    /// [`Ensemble::secure_connect_string`]), asking clients for a certificate signed by the same
    /// CA, as ZooKeeper does by default.
    pub fn standalone_tls(certs: &crate::tls::TestCerts) -> Result<Ensemble, String> {
        Self::start_with(1, TEST_JVM, Security::Tls(certs))
    }

    /// Starts one standalone server that authenticates `users` (name, password) over SASL
    /// DIGEST-MD5, from a JAAS file it writes.
    pub fn standalone_sasl(users: &[(&str, &str)]) -> Result<Ensemble, String> {
        Self::start_with(1, TEST_JVM, Security::Sasl(users))
    }

    /// Starts one standalone server sized and tuned as in production (a 4 GiB heap, the default
    /// collector and compiler), for benchmarks with millions of znodes.
    pub fn standalone_for_benchmark() -> Result<Ensemble, String> {
        Self::for_benchmark(1, &Tuning::default())
    }

    /// Starts `size` members tuned as [`Ensemble::standalone_for_benchmark`] (3 or 5, as in
    /// production), each with its own data directory, and waits until every one serves.
    pub fn quorum_for_benchmark(size: u32) -> Result<Ensemble, String> {
        Self::for_benchmark(size, &Tuning::default())
    }

    /// Starts `size` members (1 for a standalone server) tuned as
    /// [`Ensemble::standalone_for_benchmark`], plus `tuning`.
    pub fn for_benchmark(size: u32, tuning: &Tuning) -> Result<Ensemble, String> {
        let jvm = BENCHMARK_JVM
            .iter()
            .map(|f| f.to_string())
            .chain(tuning.jvm.iter().cloned());
        Self::start_tuned(size, jvm.collect(), tuning.config.clone(), Security::None)
    }

    /// Starts `size` members (3 for a quorum that survives one failure) and waits until every
    /// one of them serves as leader or follower.
    pub fn quorum(size: u32) -> Result<Ensemble, String> {
        Self::start(size, TEST_JVM)
    }

    fn start(size: u32, jvm: &'static [&'static str]) -> Result<Ensemble, String> {
        Self::start_with(size, jvm, Security::None)
    }

    fn start_with(
        size: u32,
        jvm: &'static [&'static str],
        security: Security<'_>,
    ) -> Result<Ensemble, String> {
        let jvm = jvm.iter().map(|f| f.to_string()).collect();
        Self::start_tuned(size, jvm, Vec::new(), security)
    }

    fn start_tuned(
        size: u32,
        jvm: Vec<String>,
        config: Vec<String>,
        security: Security<'_>,
    ) -> Result<Ensemble, String> {
        let install = install::find()?;
        let dir = tempfile::Builder::new()
            .prefix("zkq-zookeeper-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let mut members = Vec::new();
        for id in 1..=size {
            let member_dir = dir.path().join(format!("member-{id}"));
            std::fs::create_dir_all(&member_dir).map_err(|e| e.to_string())?;
            let mut member = Member::new(id, member_dir, install.clone(), jvm.clone(), config.clone())
                .map_err(|e| e.to_string())?;
            match security {
                Security::None => {}
                Security::Tls(certs) => member = member.with_tls(certs.clone()).map_err(|e| e.to_string())?,
                Security::Sasl(users) => member = member.with_sasl(users),
            }
            members.push(member);
        }
        let refs: Vec<&Member> = members.iter().collect();
        for member in &members {
            member
                .write_config(&refs)
                .map_err(|e| format!("cannot write zoo.cfg: {e}"))?;
            member.start().map_err(|e| format!("cannot start java: {e}"))?;
        }
        let path = dir.path().to_path_buf();
        let ensemble = Ensemble {
            members,
            dir: Some(dir),
            path,
        };
        ensemble.wait_ready(Duration::from_secs(60))?;
        // `wait_ready` skips members that are not running (stopped on purpose in a test); at
        // start, one not running died of its config.
        if let Some(dead) = ensemble.members.iter().find(|m| !m.is_running()) {
            return Err(format!(
                "ZooKeeper member {} exited as it started; log tail:\n{}",
                dead.id,
                dead.log_tail(30)
            ));
        }
        Ok(ensemble)
    }

    /// The connect string of every member's secure (TLS) client port; empty without TLS.
    pub fn secure_connect_string(&self) -> String {
        let secure: Vec<String> = self.members.iter().filter_map(Member::secure_address).collect();
        secure.join(",")
    }

    /// The connect string of every member, `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn connect_string(&self) -> String {
        self.members
            .iter()
            .map(Member::address)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keeps the ensemble's directory (each member's config, server log, snapshots and
    /// transaction logs) when the ensemble is dropped, for a post-mortem. Returns its path.
    pub fn keep_files(&mut self) -> std::path::PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }

    /// The members, in id order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// One member by index (0-based).
    pub fn member(&self, index: usize) -> &Member {
        &self.members[index]
    }

    /// The index of the member that currently leads the quorum, if one does.
    pub fn leader(&self) -> Option<usize> {
        self.members.iter().position(|m| m.mode() == Some(Mode::Leader))
    }

    /// Waits until every running, unfrozen member serves clients.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let waiting: Vec<&Member> = self
                .members
                .iter()
                .filter(|m| m.is_running() && m.mode().is_none())
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let m = waiting[0];
                return Err(format!(
                    "ZooKeeper member {} on port {} did not start serving within {:?}; log tail:\n{}",
                    m.id,
                    m.client_port,
                    timeout,
                    m.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

static SHARED: OnceLock<Ensemble> = OnceLock::new();

/// One standalone server shared by every test in this process, started on first use.
///
/// It lives until the process exits (the server is tied to the process with
/// `PR_SET_PDEATHSIG`), and its directory is removed then: a static is never dropped, so an
/// exit handler does what `Drop` does for the other ensembles. Tests sharing it keep apart
/// through [`unique_root`].
pub fn shared() -> &'static Ensemble {
    SHARED.get_or_init(|| match Ensemble::standalone() {
        Ok(ensemble) => {
            // SAFETY: registers a plain `extern "C"` function with no arguments.
            unsafe { libc::atexit(remove_shared) };
            ensemble
        }
        Err(e) => panic!("cannot start the shared ZooKeeper server: {e}"),
    })
}

/// Stops the shared server and removes its directory, at process exit.
extern "C" fn remove_shared() {
    if let Some(ensemble) = SHARED.get() {
        for member in &ensemble.members {
            member.kill();
        }
        if ensemble.dir.is_some() {
            let _ = std::fs::remove_dir_all(&ensemble.path);
        }
    }
}

/// A root path no other test uses, such as `/t-fifo-3f2a9c1e`.
pub fn unique_root(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("/t-{clean}-{}", &id[..8])
}

//! Real ZooKeeper servers for tests, benchmarks and chaos runs.
//!
//! Nothing here fakes ZooKeeper: [`Ensemble`] starts the real server (`QuorumPeerMain`) from the
//! installed jars, on free loopback ports, with its data in a temporary directory. A one-member
//! ensemble runs standalone; three members form a quorum. Single members can be stopped, killed,
//! restarted, frozen (`SIGSTOP`) and thawed (`SIGCONT`) to inject faults, and a [`Proxy`] cuts
//! one client off from the servers.
//!
//! Tests in one binary share one standalone server through [`shared`] and isolate themselves with
//! a unique root path from [`unique_root`], so they can run in parallel.
//!
//! # Layout
//! - [`install`]: finds the ZooKeeper jars and `java`.
//! - [`server`]: one member process: config, start, stop, kill, freeze.
//! - [`ensemble`]: a standalone server or a quorum of members, readiness checks.
//! - [`proxy`]: a loopback TCP proxy that partitions one client from the server.
//! - [`tls`]: certificates made in the test, for servers that serve TLS.
//! - [`browser`]: chromedriver and headless Chromium, for tests of web pages.

pub mod browser;
pub mod ensemble;
pub mod install;
pub mod proxy;
pub mod server;
pub mod tls;

pub use browser::Chromedriver;
pub use ensemble::{shared, unique_root, Ensemble, Tuning};
pub use proxy::Proxy;
pub use server::Member;
pub use tls::TestCerts;

/// Sends `sig` to the process `pid` (a child the caller spawned and has not reaped): SIGSTOP to
/// freeze it, SIGCONT to thaw it, SIGKILL to crash it.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; the caller names its own unreaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// What ZooKeeper's own command-line client (`zkCli`, the class `ZooKeeperMain` of the installed
/// jars) printed for one command, such as `["get", "/zkq/queues/q"]`, run without credentials
/// against `address`; and whether it exited 0. An outsider's view, from a client zkq did not
/// write.
pub fn zk_cli(address: &str, command: &[&str]) -> Result<(bool, String), String> {
    let install = install::find()?;
    let output = std::process::Command::new(&install.java)
        .arg("-cp")
        .arg(&install.classpath)
        .arg("org.apache.zookeeper.ZooKeeperMain")
        .args(["-server", address])
        .args(command)
        .output()
        .map_err(|e| format!("cannot run zkCli: {e}"))?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

//! A real headless Chromium for tests of web pages, driven over WebDriver.
//!
//! [`Chromedriver`] starts Debian's `chromedriver` (package `chromium-driver`, installed by
//! `scripts/setup.sh`) on a free loopback port; a WebDriver client (the tests use fantoccini)
//! opens sessions on it with [`Chromedriver::chrome_args`], which run Chromium headless.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{free_port, spawn_tied_to_process};

/// How long chromedriver may take to listen.
const START_WITHIN: Duration = Duration::from_secs(30);

/// A running chromedriver, stopped when dropped, with a directory for Chromium's profile that
/// goes with it (Chromium's own temporary profiles stay behind when chromedriver is killed).
#[derive(Debug)]
pub struct Chromedriver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    /// Starts chromedriver (`$CHROMEDRIVER`, or `chromedriver` on the `PATH`) and waits until
    /// it listens.
    ///
    /// # Errors
    /// No chromedriver or Chromium installed (the message says what to install), or it did
    /// not start.
    pub fn start() -> Result<Chromedriver, String> {
        let driver = find("CHROMEDRIVER", &["chromedriver"]).ok_or(
            "chromedriver not found: install Debian's chromium and chromium-driver (scripts/setup.sh), or set CHROMEDRIVER",
        )?;
        chromium()
            .ok_or("chromium not found: install Debian's chromium (scripts/setup.sh), or set CHROME")?;
        let port = free_port().map_err(|e| format!("no free port: {e}"))?;
        let profile = tempfile::Builder::new()
            .prefix("zkq-chromium-")
            .tempdir()
            .map_err(|e| format!("no directory for Chromium's profile: {e}"))?;
        let mut command = Command::new(&driver);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child =
            spawn_tied_to_process(command).map_err(|e| format!("cannot start {}: {e}", driver.display()))?;
        let started = Instant::now();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("{} exited at start: {status}", driver.display()));
            }
            if started.elapsed() > START_WITHIN {
                let _ = child.kill();
                return Err(format!(
                    "{} did not listen within {START_WITHIN:?}",
                    driver.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Chromedriver { child, port, profile })
    }

    /// The WebDriver URL to open sessions on.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Chromium's arguments for a session on this driver: headless, no sandbox (CI runs as
    /// root), a fixed window so that screenshots are alike from run to run, and the profile in
    /// this driver's directory.
    pub fn chrome_args(&self) -> Vec<String> {
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
            "--no-first-run",
            "--disable-extensions",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        args.push(format!("--user-data-dir={}", self.profile.path().display()));
        args
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Chromium binary: `$CHROME`, or `chromium` (Debian) or `chromium-browser` on the `PATH`.
pub fn chromium() -> Option<PathBuf> {
    find("CHROME", &["chromium", "chromium-browser"])
}

/// `$var` if set, else the first of `names` on the `PATH`.
fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    names
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

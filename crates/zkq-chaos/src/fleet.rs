//! The processes under test: zkq-worker job workers (each also a scheduler candidate), each
//! reaching ZooKeeper through proxies the harness can cut, and `zkq-worker singleton` masters.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zkq_testkit::Proxy;

/// What a slot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes jobs from the queue and stands for scheduler.
    Worker,
    /// A batch-job master candidate.
    Master,
}

/// One process of the fleet, restarted under a new id after each crash.
#[derive(Debug)]
pub struct Slot {
    pub role: Role,
    pub index: usize,
    generation: u32,
    child: Option<Child>,
    /// One proxy per ensemble member (workers only): cutting them all partitions the worker.
    proxies: Vec<Proxy>,
}

/// How to start the fleet's processes.
#[derive(Debug, Clone)]
pub struct Setup {
    pub worker_bin: PathBuf,
    pub self_bin: PathBuf,
    pub members: Vec<String>,
    pub root: String,
    pub session_timeout: Duration,
    pub job_ledger: PathBuf,
    pub master_ledger: PathBuf,
    pub concurrency: usize,
    /// Where each process writes its log, `<id>.log`.
    pub logs: PathBuf,
    /// Credentials every process of the fleet gets (`ZKQ_AUTH`), if any.
    pub auth: Option<String>,
}

impl Slot {
    pub fn new(role: Role, index: usize, setup: &Setup) -> std::io::Result<Slot> {
        let proxies = match role {
            Role::Worker => setup
                .members
                .iter()
                .map(|m| Proxy::start(m))
                .collect::<std::io::Result<Vec<_>>>()?,
            Role::Master => Vec::new(),
        };
        Ok(Slot {
            role,
            index,
            generation: 0,
            child: None,
            proxies,
        })
    }

    /// The id of the process now in this slot: `w2-3` is worker slot 2, third process.
    pub fn id(&self) -> String {
        let letter = match self.role {
            Role::Worker => 'w',
            Role::Master => 'm',
        };
        format!("{letter}{}-{}", self.index, self.generation)
    }

    /// The slot's name in fault records (`w2`, `m0`).
    pub fn name(&self) -> String {
        self.id().split('-').next().unwrap_or_default().to_string()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts a new process in the slot (under a new id: the old one's session may live on).
    pub fn start(&mut self, setup: &Setup) -> std::io::Result<()> {
        self.generation += 1;
        let id = self.id();
        let timeout = format!("{}ms", setup.session_timeout.as_millis());
        let mut cmd = Command::new(&setup.worker_bin);
        if let Some(auth) = &setup.auth {
            cmd.env("ZKQ_AUTH", auth);
        }
        match self.role {
            Role::Worker => {
                let zk: Vec<String> = self.proxies.iter().map(Proxy::address).collect();
                let job = format!(
                    "*=exec '{}' job '{}'",
                    setup.self_bin.display(),
                    setup.job_ledger.display()
                );
                cmd.args([
                    "--zk",
                    &zk.join(","),
                    "--root",
                    &setup.root,
                    "--session-timeout",
                    &timeout,
                ])
                .args(["--queue", "chaos", "--id", &id, "--exec", &job])
                .args([
                    "--concurrency",
                    &setup.concurrency.to_string(),
                    "--stop-grace",
                    "1s",
                ])
                .args(["--job-timeout", "60s", "--shutdown-grace", "5s"]);
            }
            Role::Master => {
                cmd.args(["--zk", &setup.members.join(","), "--root", &setup.root])
                    .args(["--session-timeout", &timeout, "singleton", "--name", "chaos"])
                    .args(["--id", &id, "--restart-delay", "200ms", "--"])
                    .arg(&setup.self_bin)
                    .arg("master")
                    .arg(&setup.master_ledger);
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(setup.logs.join(format!("{id}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            zkq_testkit::signal(pid, sig);
        }
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Asks the process to shut down gracefully (thawing it first, in case it is frozen).
    pub fn terminate(&self) {
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
    }

    /// Waits until `deadline` for the process to exit. One still running then is killed
    /// (kill -9): a graceful shutdown must end within the shutdown grace (plus the stop grace of
    /// its commands), whatever its session does. Returns whether it exited in time.
    pub fn wait_exit(&mut self, deadline: std::time::Instant) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn partition(&self) {
        self.proxies.iter().for_each(Proxy::partition);
    }

    /// Drops every connection of the process; it may reconnect at once.
    pub fn cut(&self) {
        self.proxies.iter().for_each(Proxy::cut);
    }

    pub fn heal(&self) {
        self.proxies.iter().for_each(Proxy::heal);
    }

    /// Whether the process exited on its own (it should not).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

/// `name` next to this executable (cargo puts every binary of a workspace in one directory).
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let path = me.parent().unwrap_or(Path::new(".")).join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: build it first (cargo build -p zkq-worker, with the same profile)",
            path.display()
        ))
    }
}

//! One ZooKeeper server process (a member of an ensemble, or a standalone server).
//!
//! Processes are spawned from one long-lived thread with `PR_SET_PDEATHSIG`, so a test binary
//! that exits or crashes never leaves a server running behind it, whichever thread asked for it.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::install::Install;

/// The role a running server reports for itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Standalone,
    Leader,
    Follower,
}

/// One server process with its ports and data directory.
#[derive(Debug)]
pub struct Member {
    /// Server id (`myid`), from 1.
    pub id: u32,
    /// Client port on 127.0.0.1.
    pub client_port: u16,
    pub(crate) quorum_port: u16,
    pub(crate) election_port: u16,
    /// With TLS: the secure client port on 127.0.0.1 and the certificates it serves.
    secure: Option<(u16, crate::tls::TestCerts)>,
    /// With SASL: the users (and passwords) of the JAAS `Server` section for DIGEST-MD5.
    sasl_users: Vec<(String, String)>,
    dir: PathBuf,
    install: Install,
    jvm: Vec<String>,
    /// Lines appended to `zoo.cfg` (a later line overrides an earlier one); `{member}` in them
    /// is replaced by the member's id.
    config: Vec<String>,
    child: Mutex<Option<Child>>,
}

/// JVM flags for test servers: small, quick to start, enough for test-sized data.
pub(crate) const TEST_JVM: &[&str] = &["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"];

/// JVM flags for benchmark servers, as ZooKeeper is run in production: a heap for millions of
/// znodes, the default collector and the optimizing compiler.
pub(crate) const BENCHMARK_JVM: &[&str] = &["-Xms1g", "-Xmx4g"];

impl Member {
    pub(crate) fn new(
        id: u32,
        dir: PathBuf,
        install: Install,
        jvm: Vec<String>,
        config: Vec<String>,
    ) -> std::io::Result<Member> {
        Ok(Member {
            jvm,
            config,
            id,
            client_port: free_port()?,
            quorum_port: free_port()?,
            election_port: free_port()?,
            secure: None,
            sasl_users: Vec::new(),
            dir,
            install,
            child: Mutex::new(None),
        })
    }

    /// `127.0.0.1:<client port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<secure client port>`, for a member serving TLS.
    pub fn secure_address(&self) -> Option<String> {
        self.secure.as_ref().map(|(port, _)| format!("127.0.0.1:{port}"))
    }

    /// This member, authenticating `users` (name, password) over SASL DIGEST-MD5.
    pub(crate) fn with_sasl(mut self, users: &[(&str, &str)]) -> Member {
        self.sasl_users = users
            .iter()
            .map(|(u, p)| (u.to_string(), p.to_string()))
            .collect();
        self
    }

    fn jaas_file(&self) -> PathBuf {
        self.dir.join("jaas.conf")
    }

    /// This member, serving TLS with `certs` on a secure client port of its own too.
    pub(crate) fn with_tls(mut self, certs: crate::tls::TestCerts) -> std::io::Result<Member> {
        self.secure = Some((free_port()?, certs));
        Ok(self)
    }

    /// The member's working directory (config, data, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn write_config(&self, peers: &[&Member]) -> std::io::Result<()> {
        let data = self.dir.join("data");
        fs::create_dir_all(&data)?;
        let mut cfg = format!(
            "tickTime=250\n\
             initLimit=40\n\
             syncLimit=20\n\
             dataDir={data}\n\
             clientPort={port}\n\
             clientPortAddress=127.0.0.1\n\
             minSessionTimeout=500\n\
             maxSessionTimeout=120000\n\
             maxClientCnxns=0\n\
             preAllocSize=4096\n\
             admin.enableServer=false\n\
             4lw.commands.whitelist=*\n\
             autopurge.purgeInterval=1\n\
             autopurge.snapRetainCount=3\n",
            data = data.display(),
            port = self.client_port,
        );
        if let Some((port, certs)) = &self.secure {
            // Netty serves TLS; the plain port stays for the readiness checks.
            let (key_store, trust_store) = certs.write_server_stores(&self.dir)?;
            cfg.push_str(&format!(
                "secureClientPort={port}\n\
                 secureClientPortAddress=127.0.0.1\n\
                 serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n\
                 ssl.keyStore.location={}\n\
                 ssl.keyStore.type=PEM\n\
                 ssl.trustStore.location={}\n\
                 ssl.trustStore.type=PEM\n",
                key_store.display(),
                trust_store.display(),
            ));
        }
        if !self.sasl_users.is_empty() {
            cfg.push_str("authProvider.sasl=org.apache.zookeeper.server.auth.SASLAuthenticationProvider\n");
            let users: Vec<String> = self
                .sasl_users
                .iter()
                .map(|(user, password)| format!("  user_{user}=\"{password}\""))
                .collect();
            fs::write(
                self.jaas_file(),
                format!(
                    "Server {{\n  org.apache.zookeeper.server.auth.DigestLoginModule required\n{};\n}};\n",
                    users.join("\n")
                ),
            )?;
        }
        for line in &self.config {
            cfg.push_str(&line.replace("{member}", &self.id.to_string()));
            cfg.push('\n');
        }
        if peers.len() > 1 {
            for peer in peers {
                cfg.push_str(&format!(
                    "server.{}=127.0.0.1:{}:{}\n",
                    peer.id, peer.quorum_port, peer.election_port
                ));
            }
            fs::write(data.join("myid"), format!("{}\n", self.id))?;
        }
        fs::write(self.dir.join("zoo.cfg"), cfg)
    }

    /// Starts the process if it is not running. Does not wait for it to serve.
    pub fn start(&self) -> std::io::Result<()> {
        let mut child = lock(&self.child);
        if let Some(running) = child.as_mut() {
            if running.try_wait()?.is_none() {
                return Ok(());
            }
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        let mut cmd = Command::new(&self.install.java);
        if !self.sasl_users.is_empty() {
            cmd.arg(format!(
                "-Djava.security.auth.login.config={}",
                self.jaas_file().display()
            ));
        }
        cmd.args(&self.jvm)
            .args([
                // Times in the log (slf4j-simple), to set it against a client's own.
                "-Dorg.slf4j.simpleLogger.showDateTime=true",
                "-Dorg.slf4j.simpleLogger.dateTimeFormat=HH:mm:ss.SSS",
                "-Dzookeeper.admin.enableServer=false",
                "-cp",
                &self.install.classpath,
                "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            ])
            .arg(self.dir.join("zoo.cfg"))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        *child = Some(spawn_tied_to_process(cmd)?);
        Ok(())
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn stop(&self) {
        self.signal_and_reap(libc::SIGTERM);
    }

    /// Kills the process with SIGKILL (a crash) and waits for it to exit.
    pub fn kill(&self) {
        self.signal_and_reap(libc::SIGKILL);
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing. Returns once the
    /// kernel reports the process stopped (signal delivery is asynchronous).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state is the first field after the parenthesised command name.
            let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
            if matches!(state, Some('T') | Some('t') | None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Kills and starts the process again with the same data.
    pub fn restart(&self) -> std::io::Result<()> {
        self.kill();
        self.start()
    }

    /// Whether the process is alive (frozen counts as alive).
    pub fn is_running(&self) -> bool {
        let mut child = lock(&self.child);
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        lock(&self.child).as_ref().map(Child::id)
    }

    /// Asks the server for its mode with the `srvr` four-letter command.
    pub fn mode(&self) -> Option<Mode> {
        let reply = four_letter(self.client_port, "srvr").ok()?;
        let mode = reply.lines().find_map(|l| l.strip_prefix("Mode: "))?;
        match mode.trim() {
            "standalone" => Some(Mode::Standalone),
            "leader" => Some(Mode::Leader),
            "follower" => Some(Mode::Follower),
            _ => None,
        }
    }

    /// The tail of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we spawned and still hold (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    fn signal_and_reap(&self, sig: libc::c_int) {
        let mut child = lock(&self.child);
        if let Some(mut c) = child.take() {
            // A frozen process must be resumed to act on SIGTERM.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe {
                libc::kill(c.id() as libc::pid_t, sig);
                libc::kill(c.id() as libc::pid_t, libc::SIGCONT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A port that was free a moment ago on 127.0.0.1, and that this process has not handed out
/// before. The port is released at once, so the system may well give it again to the next
/// `bind` on port 0: a member given the same port twice (client and election) died at start.
pub fn free_port() -> std::io::Result<u16> {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> = Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other(
        "every free port the system offered was handed out already",
    ))
}

/// Sends a four-letter command to the server on `port` of 127.0.0.1 and returns the reply.
pub fn four_letter(port: u16, cmd: &str) -> std::io::Result<String> {
    four_letter_to(SocketAddr::from(([127, 0, 0, 1], port)), cmd)
}

/// Sends a four-letter command to the server at `address` (`host:port`) and returns the reply.
pub fn four_letter_at(address: &str, cmd: &str) -> std::io::Result<String> {
    use std::net::ToSocketAddrs;
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{address} resolves to no address")))?;
    four_letter_to(addr, cmd)
}

/// The number after `key` in a four-letter word's `key<TAB>value` or `key:value` lines (as in
/// `mntr`'s `zk_packets_received` or `wchs`' `Total watches`).
pub fn four_letter_number(reply: &str, key: &str) -> Option<u64> {
    reply.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?;
        rest.trim_start_matches([':', '\t', ' ']).trim().parse().ok()
    })
}

fn four_letter_to(addr: SocketAddr, cmd: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(cmd.as_bytes())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply)
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process, with `PR_SET_PDEATHSIG`, so the
/// child dies with this process even if it is killed, and never earlier.
pub fn spawn_tied_to_process(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("zk-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn the zk-spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    lock(spawner)
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("zk-spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("zk-spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let port = super::free_port().unwrap();
            assert!(seen.insert(port), "port {port} handed out twice");
        }
    }
}

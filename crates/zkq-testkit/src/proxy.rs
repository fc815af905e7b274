//! A loopback TCP proxy that can cut a client off from ZooKeeper: a network partition of one
//! process, with the server and every other client untouched.
//!
//! Point a client at [`Proxy::address`] instead of the server. [`Proxy::partition`] closes every
//! connection through the proxy and refuses new ones until [`Proxy::heal`], so the client keeps
//! trying to reconnect while its session times out on the server. [`Proxy::cut`] only closes the
//! connections: the client reconnects at once, within its session.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A proxy to one server address.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every connection since the last partition, to close them on the next.
    streams: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn close_all(&self) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        for s in streams.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards each connection to `target` (`host:port`).
    pub fn start(target: &str) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared::default());
        let target = target.to_string();
        let accepting = shared.clone();
        thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept(listener, &target, &accepting))?;
        Ok(Proxy { port, shared })
    }

    /// The address clients connect to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones.
    pub fn partition(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Closes every connection now, but lets the client connect again at once: a dropped
    /// connection, not a partition, so the session survives and requests in flight lose their
    /// replies.
    pub fn cut(&self) {
        self.shared.close_all();
    }

    /// Lets connections through again.
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so that it sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn accept(listener: TcpListener, target: &str, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.cut.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let ends = (client.try_clone(), server.try_clone());
        let (Ok(client_end), Ok(server_end)) = ends else {
            continue;
        };
        {
            let mut streams = shared.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams.extend([client_end, server_end]);
        }
        pump(&client, &server);
        pump(&server, &client);
    }
}

/// Copies bytes from `from` to `to` on a thread of its own until either side closes.
fn pump(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let _ = thread::Builder::new().name("proxy-pump".into()).spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

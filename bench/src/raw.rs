//! ZooKeeper's own ceiling on this machine: what a client can get without any queue logic.

use std::time::{Duration, Instant};

use futures::StreamExt;
use zkq::zookeeper_client as zk;

use crate::cpu;
use crate::progress::{rate, Progress};
use crate::stamp;

const PERSISTENT: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
const EPHEMERAL: zk::CreateOptions<'static> = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
/// Children per parent, so no raw workload builds a huge child list.
const PER_PARENT: usize = 5000;
const MULTI: usize = 100;

/// Raw workloads on one session.
#[derive(Debug)]
pub struct Raw<'a> {
    pub client: &'a zk::Client,
    pub progress: &'a Progress,
    pub payload: Vec<u8>,
    pub window: usize,
    /// The servers, whose CPU time each measured workload reports.
    pub server: &'a cpu::Processes,
}

/// A measured raw workload: its rate, and what each node cost the servers' CPU.
#[derive(Debug, Clone, Copy)]
pub struct Rated {
    pub per_s: f64,
    pub server: Option<cpu::Cost>,
}

impl Raw<'_> {
    async fn parents(&self, base: &str, n: usize) -> Result<Vec<String>, String> {
        let _ = self.client.create("/bench-raw", &[], &PERSISTENT).await;
        let base = format!("/bench-raw/{base}");
        self.client
            .create(&base, &[], &PERSISTENT)
            .await
            .map_err(|e| format!("create {base}: {e}"))?;
        let mut parents = Vec::new();
        for p in 0..n.div_ceil(PER_PARENT) {
            let path = format!("{base}/{p}");
            self.client
                .create(&path, &[], &PERSISTENT)
                .await
                .map_err(|e| format!("create {path}: {e}"))?;
            parents.push(path);
        }
        Ok(parents)
    }

    fn node(parents: &[String], i: usize) -> String {
        format!("{}/n-{i}", parents[i / PER_PARENT])
    }

    /// Single creates that are not measured: the server's JIT compiles its request path first,
    /// so that the ceiling is that of a warm server.
    pub async fn warm_up(&self, n: usize) -> Result<(), String> {
        self.creates("warm-up", "raw warm-up", n).await.map(drop)
    }

    /// Single creates, `window` in flight.
    pub async fn single_creates(&self, n: usize) -> Result<Rated, String> {
        self.creates("single", "raw single create", n).await
    }

    async fn creates(&self, base: &str, phase: &str, n: usize) -> Result<Rated, String> {
        let parents = self.parents(base, n).await?;
        let paths: Vec<String> = (0..n).map(|i| Self::node(&parents, i)).collect();
        let cpu = self.server.start();
        let started = self.progress.phase(phase);
        let mut results = futures::stream::iter(paths.iter())
            .map(|path| self.client.create(path, &self.payload, &PERSISTENT))
            .buffer_unordered(self.window);
        while let Some(r) = results.next().await {
            r.map_err(|e| format!("raw create: {e}"))?;
            self.progress.add(1);
        }
        Ok(Rated {
            per_s: rate(phase, n, started),
            server: cpu.per_job(n),
        })
    }

    /// Creates inside multis of 100, then deletes of the same nodes inside multis of 100.
    pub async fn multi_creates_and_deletes(&self, n: usize) -> Result<(f64, f64), String> {
        let parents = self.parents("multi", n).await?;
        let paths: Vec<String> = (0..n).map(|i| Self::node(&parents, i)).collect();
        let in_flight = (self.window / MULTI).max(4);

        let started = self.progress.phase("raw multi create");
        self.create_in_multis(&paths, in_flight, "raw multi create")
            .await?;
        let create = rate("raw multi create", n, started);

        let started: Instant = self.progress.phase("raw multi delete");
        let mut results = futures::stream::iter(paths.chunks(MULTI))
            .map(|chunk| {
                let mut multi = self.client.new_multi_writer();
                for path in chunk {
                    let _ = multi.add_delete(path, None);
                }
                let sent = multi.commit();
                async move { sent.await.map(|_| chunk.len()) }
            })
            .buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            self.progress
                .add(r.map_err(|e| format!("raw multi delete: {e}"))? as u64);
        }
        Ok((create, rate("raw multi delete", n, started)))
    }

    /// Creates `paths` with the payload, [`MULTI`] per `multi`, `in_flight` of them under way,
    /// counting progress.
    async fn create_in_multis(&self, paths: &[String], in_flight: usize, what: &str) -> Result<(), String> {
        let mut created = futures::stream::iter(paths.chunks(MULTI))
            .map(|chunk| async move {
                let mut multi = self.client.new_multi_writer();
                for path in chunk {
                    multi
                        .add_create(path, &self.payload, &PERSISTENT)
                        .map_err(|e| format!("{what} {path}: {e}"))?;
                }
                multi
                    .commit()
                    .await
                    .map(|_| chunk.len())
                    .map_err(|e| format!("{what}: {e}"))
            })
            .buffer_unordered(in_flight);
        while let Some(r) = created.next().await {
            self.progress.add(r? as u64);
        }
        Ok(())
    }

    /// ZooKeeper's ceiling for zkq's drain: the requests a job costs the server, with no queue
    /// logic. `n` nodes are created beforehand (not measured); then, 64 nodes at a time with
    /// `window / 64` groups (at least 4) under way, a multi-read of their data, a `multi`
    /// claiming them (each a `set_data` at version 0 and an empty ephemeral create) and a
    /// `multi` settling them (each two deletes). Returns the nodes cycled per second.
    pub async fn job_cycles(&self, n: usize) -> Result<Rated, String> {
        const GROUP: usize = 64;
        let parents = self.parents("cycle", n).await?;
        let claims = "/bench-raw/cycle-claims";
        self.client
            .create(claims, &[], &PERSISTENT)
            .await
            .map_err(|e| format!("create {claims}: {e}"))?;
        let paths: Vec<String> = (0..n).map(|i| Self::node(&parents, i)).collect();
        self.progress.phase("raw job cycle: create");
        self.create_in_multis(&paths, 4, "raw cycle create").await?;

        let phase = "raw job cycle";
        let cpu = self.server.start();
        let started = self.progress.phase(phase);
        let groups = paths
            .chunks(GROUP)
            .enumerate()
            .map(|(g, group)| (group, format!("{claims}/{g}-")));
        let mut cycles = futures::stream::iter(groups)
            .map(|(group, prefix)| async move { self.cycle(group, &prefix).await })
            .buffer_unordered((self.window / GROUP).max(4));
        while let Some(r) = cycles.next().await {
            self.progress.add(r? as u64);
        }
        Ok(Rated {
            per_s: rate(phase, n, started),
            server: cpu.per_job(n),
        })
    }

    /// One group of `job_cycles`: read, claim, settle.
    async fn cycle(&self, group: &[String], claim_prefix: &str) -> Result<usize, String> {
        let mut reader = self.client.new_multi_reader();
        for path in group {
            reader
                .add_get_data(path)
                .map_err(|e| format!("raw cycle read: {e}"))?;
        }
        let read = reader
            .commit()
            .await
            .map_err(|e| format!("raw cycle read: {e}"))?;
        for (path, result) in group.iter().zip(read) {
            match result {
                zk::MultiReadResult::Data { stat, .. } if stat.version == 0 => {}
                other => return Err(format!("raw cycle read {path}: {other:?}")),
            }
        }
        let claims: Vec<String> = (0..group.len()).map(|i| format!("{claim_prefix}{i}")).collect();
        let mut claim = self.client.new_multi_writer();
        for (path, claim_path) in group.iter().zip(&claims) {
            claim
                .add_set_data(path, &self.payload, Some(0))
                .and_then(|()| claim.add_create(claim_path, &[], &EPHEMERAL))
                .map_err(|e| format!("raw cycle claim {path}: {e}"))?;
        }
        claim
            .commit()
            .await
            .map_err(|e| format!("raw cycle claim: {e}"))?;
        let mut settle = self.client.new_multi_writer();
        for (path, claim_path) in group.iter().zip(&claims) {
            settle
                .add_delete(path, Some(1))
                .and_then(|()| settle.add_delete(claim_path, None))
                .map_err(|e| format!("raw cycle settle {path}: {e}"))?;
        }
        settle
            .commit()
            .await
            .map_err(|e| format!("raw cycle settle: {e}"))?;
        Ok(group.len())
    }

    /// The floor of enqueue-to-start latency on this server: the steps of a zkq start with no
    /// queue logic around them. Nodes stamped with their send time are created at `rate` per
    /// second for `duration` on this session; `reader` learns of each from a persistent recursive
    /// watch and reads it; `claimer` commits a `multi` of `set_data` at version 0 and an
    /// ephemeral create (deleted once measured, as a job's end deletes its claim). Returns each
    /// node's send-to-committed latency in µs.
    pub async fn start_chain(
        &self,
        name: &str,
        reader: &zk::Client,
        claimer: &zk::Client,
        rate: f64,
        duration: Duration,
    ) -> Result<Vec<u64>, String> {
        let total = (rate * duration.as_secs_f64()).round() as usize;
        let parents = self.parents(name, total).await?;
        let claims = &format!("/bench-raw/{name}-claims");
        self.client
            .create(claims, &[], &PERSISTENT)
            .await
            .map_err(|e| format!("create {claims}: {e}"))?;
        let watched = format!("/bench-raw/{name}");
        let mut watcher = reader
            .watch(&watched, zk::AddWatchMode::PersistentRecursive)
            .await
            .map_err(|e| format!("watch {watched}: {e}"))?;
        let (done, mut latencies) = tokio::sync::mpsc::unbounded_channel();
        let consumer = async {
            let mut starts = futures::stream::FuturesUnordered::new();
            let mut seen = 0;
            while seen < total || !starts.is_empty() {
                tokio::select! {
                    event = watcher.changed(), if seen < total => {
                        if event.event_type != zk::EventType::NodeCreated
                            || !event.path.rsplit('/').next().is_some_and(|n| n.starts_with("n-"))
                        {
                            continue;
                        }
                        seen += 1;
                        starts.push(start(reader, claimer, claims, event.path));
                    }
                    Some(latency) = starts.next() => {
                        let _ = done.send(latency?);
                    }
                }
            }
            Ok::<(), String>(())
        };
        let producer = async {
            let started = self.progress.phase("raw start chain");
            let mut sent = 0;
            let mut creates = futures::stream::FuturesUnordered::new();
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while sent < total || !creates.is_empty() {
                tokio::select! {
                    _ = tick.tick(), if sent < total => {
                        let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(total);
                        while sent < due {
                            let path = Self::node(&parents, sent);
                            creates.push(async move {
                                let data = stamp::payload(self.payload.len().max(32));
                                self.client.create(&path, &data, &PERSISTENT).await.map(drop)
                            });
                            sent += 1;
                        }
                    }
                    Some(created) = creates.next() => {
                        created.map_err(|e| format!("raw create: {e}"))?;
                        self.progress.add(1);
                    }
                }
            }
            Ok::<(), String>(())
        };
        tokio::try_join!(consumer, producer)?;
        drop(done);
        let mut all = Vec::with_capacity(total);
        while let Some(latency) = latencies.recv().await {
            all.push(latency);
        }
        Ok(all)
    }
}

/// One start of the raw chain: read the node, claim it. Returns its latency in µs. The claim is
/// deleted afterwards, as a job's end deletes its claim: a session that ends holding tens of
/// thousands of ephemerals makes a `closeSession` transaction that lists them all, over
/// `jute.maxbuffer`, which an ensemble's followers refuse (they drop out and resync forever).
async fn start(reader: &zk::Client, claimer: &zk::Client, claims: &str, path: String) -> Result<u64, String> {
    let (data, _) = reader
        .get_data(&path)
        .await
        .map_err(|e| format!("read {path}: {e}"))?;
    let sent = stamp::read(&data).ok_or_else(|| format!("{path} has no stamp"))?;
    let claim = format!("{claims}/{}", path.replace('/', "."));
    let mut multi = claimer.new_multi_writer();
    multi
        .add_set_data(&path, &data, Some(0))
        .map_err(|e| format!("claim {path}: {e}"))?;
    multi
        .add_create(&claim, &[], &EPHEMERAL)
        .map_err(|e| format!("claim {path}: {e}"))?;
    multi.commit().await.map_err(|e| format!("claim {path}: {e}"))?;
    let latency = stamp::now_us().saturating_sub(sent);
    claimer
        .delete(&claim, None)
        .await
        .map_err(|e| format!("delete claim {claim}: {e}"))?;
    Ok(latency)
}

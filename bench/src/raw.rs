//! ZooKeeper's own ceiling on this machine: what a client can get without any queue logic.

use std::time::Instant;

use futures::StreamExt;
use zkq::zookeeper_client as zk;

use crate::progress::{rate, Progress};

const PERSISTENT: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
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
    pub async fn single_creates(&self, n: usize) -> Result<f64, String> {
        self.creates("single", "raw single create", n).await
    }

    async fn creates(&self, base: &str, phase: &str, n: usize) -> Result<f64, String> {
        let parents = self.parents(base, n).await?;
        let paths: Vec<String> = (0..n).map(|i| Self::node(&parents, i)).collect();
        let started = self.progress.phase(phase);
        let mut results = futures::stream::iter(paths.iter())
            .map(|path| self.client.create(path, &self.payload, &PERSISTENT))
            .buffer_unordered(self.window);
        while let Some(r) = results.next().await {
            r.map_err(|e| format!("raw create: {e}"))?;
            self.progress.add(1);
        }
        Ok(rate(phase, n, started))
    }

    /// Creates inside multis of 100, then deletes of the same nodes inside multis of 100.
    pub async fn multi_creates_and_deletes(&self, n: usize) -> Result<(f64, f64), String> {
        let parents = self.parents("multi", n).await?;
        let chunks: Vec<Vec<String>> = (0..n)
            .map(|i| Self::node(&parents, i))
            .collect::<Vec<_>>()
            .chunks(MULTI)
            .map(<[String]>::to_vec)
            .collect();
        let in_flight = (self.window / MULTI).max(4);

        let started = self.progress.phase("raw multi create");
        let mut results = futures::stream::iter(chunks.iter())
            .map(|chunk| {
                let mut multi = self.client.new_multi_writer();
                for path in chunk {
                    let _ = multi.add_create(path, &self.payload, &PERSISTENT);
                }
                let sent = multi.commit();
                async move { sent.await.map(|_| chunk.len()) }
            })
            .buffer_unordered(in_flight);
        while let Some(r) = results.next().await {
            self.progress
                .add(r.map_err(|e| format!("raw multi create: {e}"))? as u64);
        }
        let create = rate("raw multi create", n, started);

        let started: Instant = self.progress.phase("raw multi delete");
        let mut results = futures::stream::iter(chunks.iter())
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
}

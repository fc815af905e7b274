//! Helpers shared by the integration tests: a real ZooKeeper per test binary, a unique root per
//! test, recording handlers, and waits that end on events rather than sleeps.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use zkq::zookeeper_client as zk;
use zkq::{JobContext, Outcome, Producer, QueueConfig, Worker, WorkerConfig, ZkConfig};

/// Milliseconds since the Unix epoch: the clock of a job's timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Upper bound for any single wait in a test: generous, since a failing test should fail, not
/// hang, and a loaded CI machine is slow.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A test's own namespace on the shared ZooKeeper server.
#[derive(Debug, Clone)]
pub struct Env {
    pub zk: ZkConfig,
    pub root: String,
}

impl Env {
    /// A fresh root on the shared server; sessions time out after 2 s so crash tests are quick.
    pub fn new(name: &str) -> Env {
        let server = zkq_testkit::shared();
        let zk = ZkConfig {
            address: server.connect_string(),
            session_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(20),
            ..ZkConfig::default()
        };
        Env {
            zk,
            root: zkq_testkit::unique_root(name),
        }
    }

    /// A fresh root on `ensemble` (for tests that need a 3-node ensemble), sessions as in
    /// [`Env::new`].
    pub fn on(ensemble: &zkq_testkit::Ensemble, name: &str) -> Env {
        Env {
            zk: ZkConfig {
                address: ensemble.connect_string(),
                ..Env::new(name).zk
            },
            root: zkq_testkit::unique_root(name),
        }
    }

    pub async fn producer(&self) -> Producer {
        Producer::connect(&self.zk, &self.root)
            .await
            .expect("producer connects")
    }

    /// A producer that creates `queue` with `config` first.
    pub async fn producer_for(&self, queue: &str, config: &QueueConfig) -> Producer {
        let producer = self.producer().await;
        producer.create_queue(queue, config).await.expect("queue created");
        producer
    }

    pub async fn client(&self) -> zk::Client {
        self.zk.connect().await.expect("client connects")
    }

    pub fn worker_config(&self, queue: &str, concurrency: usize) -> WorkerConfig {
        WorkerConfig {
            queues: vec![queue.to_string()],
            concurrency,
            poll_interval: Duration::from_millis(500),
            scheduling: zkq::SchedulerConfig {
                promote_interval: Duration::from_millis(50),
                rebalance_delay: Duration::from_millis(200),
                ..Default::default()
            },
            ..WorkerConfig::default()
        }
    }

    pub fn worker(&self, config: WorkerConfig) -> Worker {
        Worker::new(self.zk.clone(), &self.root, config).expect("valid worker config")
    }
}

/// A queue config for tests: one partition and fast retries unless a test says otherwise.
pub fn small_queue() -> QueueConfig {
    let mut config = QueueConfig {
        partitions: 1,
        ..QueueConfig::default()
    };
    config.retry.base_ms = 20;
    config.retry.max_ms = 100;
    config
}

/// One handler run, as seen by a recording handler.
#[derive(Debug, Clone)]
pub struct Run {
    pub payload: Vec<u8>,
    pub attempt: u32,
    pub id: zkq::JobId,
    pub worker: String,
    pub started_ms: u64,
    /// The job's `ready_at_ms`: its due time for a delayed job or a retry.
    pub ready_at_ms: u64,
}

impl Run {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A handler that reports every run on a channel, then returns what `decide` says.
pub fn recording<F>(decide: F) -> (impl zkq::Handler, mpsc::UnboundedReceiver<Run>)
where
    F: Fn(&Run) -> Outcome + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = move |ctx: JobContext| {
        let run = Run {
            payload: ctx.job.payload.clone(),
            attempt: ctx.job.attempt,
            id: ctx.job.id,
            worker: ctx.worker_id.clone(),
            started_ms: now_ms(),
            ready_at_ms: ctx.job.ready_at_ms,
        };
        let outcome = decide(&run);
        let _ = tx.send(run);
        async move { outcome }
    };
    (handler, rx)
}

/// Receives `n` runs, failing the test if they do not come within [`PATIENCE`].
pub async fn take(rx: &mut mpsc::UnboundedReceiver<Run>, n: usize) -> Vec<Run> {
    let mut runs = Vec::with_capacity(n);
    while runs.len() < n {
        match tokio::time::timeout(PATIENCE, rx.recv()).await {
            Ok(Some(run)) => runs.push(run),
            Ok(None) => panic!("handler channel closed after {} of {n} runs", runs.len()),
            Err(_) => panic!("only {} of {n} runs within {PATIENCE:?}", runs.len()),
        }
    }
    runs
}

/// Runs `worker` in the background until the returned sender fires (or is dropped).
pub fn spawn_worker(
    worker: Worker,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<zkq::Result<zkq::WorkerSummary>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = stopped.await;
    }));
    (stop, handle)
}

/// Waits until `path` exists, on watches.
pub async fn wait_for_node(client: &zk::Client, path: &str) {
    within(async {
        loop {
            let (stat, watcher) = client.check_and_watch_stat(path).await.expect("watch");
            if stat.is_some() {
                return;
            }
            watcher.changed().await;
        }
    })
    .await
}

/// Runs `f`, failing the test if it takes longer than [`PATIENCE`].
pub async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .expect("timed out waiting")
}

/// Counts the ready jobs of a queue by walking its segments.
pub async fn count_ready(client: &zk::Client, root: &str, queue: &str) -> usize {
    let mut count = 0;
    let partitions = format!("{root}/queues/{queue}/p");
    for p in client.list_children(&partitions).await.expect("partitions") {
        for lane in client
            .list_children(&format!("{partitions}/{p}"))
            .await
            .expect("lanes")
        {
            if lane == "claims" {
                continue;
            }
            let lane = format!("{partitions}/{p}/{lane}");
            for segment in client.list_children(&lane).await.expect("segments") {
                let jobs = client
                    .list_children(&format!("{lane}/{segment}"))
                    .await
                    .unwrap_or_default();
                count += jobs.iter().filter(|j| j.starts_with("j-")).count();
            }
        }
    }
    count
}

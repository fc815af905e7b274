//! zkq-worker's `--metrics-addr` endpoint, scraped over HTTP as Prometheus would: job counters by
//! outcome, the leader's queue depth against `Admin::stats` (what `zkq-admin stats` prints), and
//! readiness following the ZooKeeper connection through a proxy that cuts it.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use zkq::{Admin, NewJob, Producer, QueueConfig, ZkConfig};

/// A free loopback port.
fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` on `addr`: the status code and the body; `None` when nothing answers.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let status = reply.split_whitespace().nth(1)?.parse().ok()?;
    let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `probe` until it holds, at most 60 s.
async fn eventually(what: &str, mut probe: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !probe() {
        assert!(tokio::time::Instant::now() < deadline, "{what} within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn worker(zk: &str, root: &str, metrics: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_zkq-worker"))
        .args(["--zk", zk, "--root", root, "--metrics-addr", metrics])
        .args(["--queue", "q", "--exec", "k=read p; [ \"$p\" != fail ]"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("zkq-worker starts")
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_outcome_and_the_leaders_depth_matches_stats() {
    let root = zkq_testkit::unique_root("metrics");
    let zk = ZkConfig::new(zkq_testkit::shared().connect_string());
    let producer = Producer::connect(&zk, &root).await.unwrap();
    let config = QueueConfig {
        partitions: 2,
        max_attempts: 1,
        ..QueueConfig::default()
    };
    producer.create_queue("q", &config).await.unwrap();
    let addr = free_addr();
    let child = worker(&zk.address, &root, &addr, &[]);
    eventually("/healthz answers", || {
        get(&addr, "/healthz").is_some_and(|(s, _)| s == 200)
    })
    .await;

    let jobs: Vec<NewJob> = (0..100)
        .map(|n| NewJob::new("k", if n % 20 == 0 { "fail" } else { "ok" }))
        .collect();
    producer.enqueue_batch("q", jobs).await.unwrap();
    let scrape = || get(&addr, "/metrics").map(|(_, body)| body).unwrap_or_default();
    eventually("100 attempts finished", || {
        sample(&scrape(), "zkq_jobs_finished_total", &[]) >= 100.0
    })
    .await;
    let text = scrape();
    let finished = |outcome: &str| {
        sample(
            &text,
            "zkq_jobs_finished_total",
            &["queue=\"q\"", "kind=\"k\"", &format!("outcome=\"{outcome}\"")],
        )
    };
    assert_eq!(finished("done"), 95.0, "{text}");
    assert_eq!(finished("dead"), 5.0, "{text}");
    assert_eq!(sample(&text, "zkq_jobs_finished_total", &[]), 100.0);
    assert_eq!(
        sample(&text, "zkq_jobs_started_total", &["queue=\"q\"", "kind=\"k\""]),
        100.0
    );
    assert_eq!(
        sample(&text, "zkq_job_duration_seconds_count", &["kind=\"k\""]),
        100.0
    );
    assert_eq!(
        sample(&text, "zkq_job_start_delay_seconds_count", &["queue=\"q\""]),
        100.0
    );
    assert_eq!(sample(&text, "zkq_claims_total", &["queue=\"q\""]), 100.0);
    assert_eq!(sample(&text, "zkq_jobs_running", &["queue=\"q\""]), 0.0);
    assert_eq!(sample(&text, "zkq_session_connected", &[]), 1.0);
    assert_eq!(sample(&text, "zkq_scheduler_leader", &[]), 1.0);

    // The leader's depth gauges, refreshed every few seconds, agree with the stats.
    let admin = Admin::connect(&zk, &root).await.unwrap();
    eventually("the depth shows the dead letters", || {
        sample(&scrape(), "zkq_queue_dead", &["queue=\"q\""]) == 5.0
    })
    .await;
    let stats = admin.stats(Some("q")).await.unwrap();
    let q = &stats.queues[0];
    let text = scrape();
    assert_eq!(sample(&text, "zkq_queue_dead", &["queue=\"q\""]), q.dead as f64);
    assert_eq!(
        sample(&text, "zkq_queue_ready", &["queue=\"q\""]),
        q.ready.iter().sum::<u64>() as f64
    );
    assert_eq!(
        sample(&text, "zkq_queue_delayed", &["queue=\"q\""]),
        q.delayed as f64
    );
    assert_eq!(
        sample(&text, "zkq_queue_running", &["queue=\"q\""]),
        q.running as f64
    );
    assert_eq!(sample(&text, "zkq_queue_paused", &["queue=\"q\""]), 0.0);
    assert_eq!(sample(&text, "zkq_workers", &["queue=\"q\""]), 1.0);
    assert_eq!(get(&addr, "/readyz").map(|(s, _)| s), Some(200));
    stop(child);
    admin.close().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_zookeeper_connection() {
    let root = zkq_testkit::unique_root("readyz");
    let proxy = zkq_testkit::Proxy::start(&zkq_testkit::shared().connect_string()).unwrap();
    let addr = free_addr();
    let child = worker(
        &proxy.address(),
        &root,
        &addr,
        &["--session-timeout", "20s", "--no-scheduler"],
    );
    let status = || get(&addr, "/readyz").map(|(s, _)| s);
    eventually("ready once connected", || status() == Some(200)).await;
    proxy.partition();
    eventually("unready when cut off", || status() == Some(503)).await;
    let (_, body) = get(&addr, "/readyz").unwrap();
    assert!(body.contains("not ready"), "{body}");
    assert_eq!(
        get(&addr, "/healthz").map(|(s, _)| s),
        Some(200),
        "the process is alive"
    );
    proxy.heal();
    eventually("ready again after it reconnects", || status() == Some(200)).await;
    let text = get(&addr, "/metrics").unwrap().1;
    assert!(sample(&text, "zkq_reconnects_total", &[]) >= 1.0, "{text}");
    stop(child);
}

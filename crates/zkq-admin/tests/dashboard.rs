//! `zkq-admin serve` in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! against a real ZooKeeper and real workers. Screenshots go to `target/screenshots/`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use zkq::{Admin, JobContext, NewJob, Outcome, Producer, Worker, WorkerConfig, ZkConfig};
use zkq_testkit::browser::chromium;
use zkq_testkit::Chromedriver;

/// How long a test waits for something that should happen in well under a second.
const PATIENCE: Duration = Duration::from_secs(60);

fn zk() -> ZkConfig {
    ZkConfig::new(zkq_testkit::shared().connect_string())
}

/// A `zkq-admin serve` process, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Served {
    fn start(root: &str, args: &[&str]) -> Served {
        Served::start_with_env(root, args, &[])
    }

    fn start_with_env(root: &str, args: &[&str], env: &[(&str, &str)]) -> Served {
        let port = zkq_testkit::server::free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_zkq-admin"));
        command
            .args([
                "--zk",
                &zkq_testkit::shared().connect_string(),
                "--root",
                root,
                "serve",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null());
        // Tied to the test process: a test killed midway leaves no server behind.
        let child = zkq_testkit::server::spawn_tied_to_process(command).expect("zkq-admin serve starts");
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            assert!(started.elapsed() < PATIENCE, "the dashboard did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Served {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

/// `GET path` with the header `Host: host`, without a browser: the status and the body.
fn get(served: &Served, host: &str, path: &str) -> (u16, String) {
    let address = served.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session; its chromedriver stops when this is dropped.
struct Browser {
    client: Client,
    _driver: Chromedriver,
}

impl Browser {
    async fn open() -> Browser {
        let driver = Chromedriver::start().unwrap_or_else(|e| panic!("{e}"));
        let mut options = json!({ "args": driver.chrome_args() });
        if let Some(binary) = chromium() {
            options["binary"] = json!(binary);
        }
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&driver.url())
            .await
            .expect("a WebDriver session");
        Browser {
            client,
            _driver: driver,
        }
    }

    /// The text of the first element `css` selects, once it exists.
    async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// Waits until the element `css` selects has the text `want` (pages refresh on their own).
    async fn wait_text(&self, css: &str, want: &str) {
        let started = Instant::now();
        loop {
            let seen = self.text(css).await;
            if seen.as_deref() == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{css}: waited for {want:?}, saw {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clicks the button of the form posting to `action`, waits for the page it leads to, and
    /// checks that this page's message starts with `message`.
    async fn click_action(&self, action: &str, message: &str) {
        // A mark on this page's window: gone once the next page has loaded.
        self.client
            .execute("window.zkqBefore = true;", vec![])
            .await
            .unwrap();
        let css = format!("form[action='{action}'] button");
        let button = self
            .client
            .find(Locator::Css(&css))
            .await
            .expect("the action's button");
        button.click().await.expect("a click");
        let started = Instant::now();
        let before = "return window.zkqBefore === true;";
        while self.client.execute(before, vec![]).await.ok() != Some(json!(false)) {
            assert!(started.elapsed() < PATIENCE, "no page after clicking {action}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let flash = self.text("#flash").await.unwrap_or_default();
        assert!(flash.starts_with(message), "after {action}: {flash:?}");
    }

    /// Saves the window as `target/screenshots/<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshots();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is in target/")
        .join("screenshots")
}

/// Runs a worker on `queues` until the returned sender is dropped or sent to; each job takes
/// `work`, then `handle` picks its outcome. Jobs of every kind are taken.
fn start_worker(
    root: &str,
    queues: &[&str],
    work: Duration,
    handle: impl Fn(JobContext) -> Outcome + Send + Sync + 'static,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let config = WorkerConfig {
        queues: queues.iter().map(ToString::to_string).collect(),
        concurrency: 2,
        poll_interval: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let handle = Arc::new(handle);
    let worker = Worker::new(zk(), root, config)
        .unwrap()
        .handle_any(move |ctx: JobContext| {
            let handle = handle.clone();
            async move {
                tokio::time::sleep(work).await;
                handle(ctx)
            }
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_shows_each_queue_with_its_ready_count_and_refreshes_it_live() {
    let root = zkq_testkit::unique_root("dashboard-overview");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    for i in 0..5 {
        producer
            .enqueue("emails", NewJob::new("send", format!("{i}")))
            .await
            .unwrap();
    }
    let served = Served::start(&root, &["--allow-actions", "--refresh", "1s"]);
    let browser = Browser::open().await;
    browser.client.goto(&served.url).await.unwrap();
    browser.wait_text("tr[data-queue='emails'] td.ready", "5").await;
    browser
        .wait_text("tr[data-queue='emails'] td.state", "active")
        .await;

    // More jobs show up without a reload: a mark left on the window survives.
    browser
        .client
        .execute("window.zkqMark = 42;", vec![])
        .await
        .unwrap();
    for i in 0..3 {
        producer
            .enqueue("emails", NewJob::new("send", format!("more {i}")))
            .await
            .unwrap();
    }
    browser.wait_text("tr[data-queue='emails'] td.ready", "8").await;
    let mark = browser
        .client
        .execute("return window.zkqMark;", vec![])
        .await
        .unwrap();
    assert_eq!(mark, json!(42), "the page was reloaded instead of refreshed");

    // A fleet at work, for the picture: a worker, a delayed job, a dead letter, the chart.
    producer
        .enqueue(
            "reports",
            NewJob::new("build", "weekly").delay(Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    producer
        .enqueue("reports", NewJob::new("build", "broken").max_attempts(1))
        .await
        .unwrap();
    let batch = (0..400)
        .map(|i| NewJob::new("send", format!("batch {i}")))
        .collect();
    producer.enqueue_batch("emails", batch).await.unwrap();
    let (stop, worker) = start_worker(&root, &["emails", "reports"], Duration::from_millis(100), |ctx| {
        if ctx.job.payload == b"broken" {
            return Outcome::Dead {
                error: "template not found: weekly.html".into(),
            };
        }
        Outcome::Done
    });
    // Two throughput samples make a line.
    let started = Instant::now();
    loop {
        let caption = browser.text("figure.chart figcaption").await.unwrap_or_default();
        if caption.starts_with("Now") && !caption.starts_with("Now 0.0") {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "no throughput drawn: {caption:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.wait_text("tr[data-queue='reports'] td.dead", "1").await;
    browser
        .wait_text("tr[data-queue='reports'] td.delayed", "1")
        .await;
    browser.screenshot("overview").await;
    let _ = stop.send(());
    worker.await.unwrap();
    browser.close().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_pause_pauses_the_queue_and_workers_stop_claiming() {
    let root = zkq_testkit::unique_root("dashboard-pause");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let admin = Admin::connect(&zk(), &root).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let (stop, worker) = start_worker(&root, &["q"], Duration::ZERO, move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Outcome::Done
    });
    producer.enqueue("q", NewJob::new("k", "first")).await.unwrap();
    wait_for("the first job to run", || runs.load(Ordering::SeqCst) == 1).await;

    let served = Served::start(&root, &["--allow-actions", "--refresh", "1h"]);
    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/queues/q", served.url))
        .await
        .unwrap();

    // A POST without the page's token is refused, even with actions allowed.
    let status = browser
        .client
        .execute_async(
            "const done = arguments[0];
             fetch('/queues/q/pause', { method: 'POST', body: new URLSearchParams({ csrf: 'forged' }) })
               .then(r => done(r.status));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert!(!admin.stats(Some("q")).await.unwrap().queues[0].paused);

    browser.click_action("/queues/q/pause", "Queue paused").await;
    assert_eq!(browser.text("h1 .badge").await.as_deref(), Some("paused"));
    browser.screenshot("queue-paused").await;
    assert!(admin.stats(Some("q")).await.unwrap().queues[0].paused);

    // Paused for real: new jobs wait.
    for i in 0..2 {
        producer
            .enqueue("q", NewJob::new("k", format!("{i}")))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "a worker claimed from a paused queue"
    );
    assert_eq!(
        admin.stats(Some("q")).await.unwrap().queues[0].ready,
        vec![2, 0, 0]
    );

    browser.click_action("/queues/q/resume", "Queue resumed").await;
    wait_for("the waiting jobs to run after resume", || {
        runs.load(Ordering::SeqCst) == 3
    })
    .await;

    let _ = stop.send(());
    worker.await.unwrap();
    browser.close().await;
    admin.close().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicking_retry_on_a_dead_letter_runs_the_job_again() {
    let root = zkq_testkit::unique_root("dashboard-retry");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let admin = Admin::connect(&zk(), &root).await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    // Fails its first run (one attempt allowed: it dies), succeeds the next. Its error and
    // payload are markup, which the pages must show as text.
    let (stop, worker) = start_worker(&root, &["q"], Duration::ZERO, move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Outcome::Dead {
                error: "upstream said 503 <img src=x onerror=\"window.pwned=1\">".into(),
            }
        } else {
            Outcome::Done
        }
    });
    let payload = "<script>window.pwned=2</script>";
    let id = producer
        .enqueue("q", NewJob::new("flaky", payload).max_attempts(1))
        .await
        .unwrap()
        .to_string();
    let started = Instant::now();
    while admin.dead_letters(Some("q"), None, 10).await.unwrap().is_empty() {
        assert!(started.elapsed() < PATIENCE, "the job never died");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let served = Served::start(&root, &["--allow-actions", "--refresh", "1h"]);
    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/queues/q", served.url))
        .await
        .unwrap();
    let row = format!("#dead-letters tr[data-job='{id}']");
    assert_eq!(
        browser.text(&format!("{row} td.error")).await.as_deref(),
        Some("upstream said 503 <img src=x onerror=\"window.pwned=1\">")
    );
    browser.screenshot("dead-letters").await;
    browser
        .client
        .goto(&format!("{}/jobs/{id}", served.url))
        .await
        .unwrap();
    assert_eq!(browser.text("pre.payload").await.as_deref(), Some(payload));
    let pwned = browser
        .client
        .execute("return window.pwned === undefined;", vec![])
        .await
        .unwrap();
    assert_eq!(pwned, json!(true), "markup from a job ran in the page");

    browser
        .client
        .goto(&format!("{}/queues/q", served.url))
        .await
        .unwrap();
    let retry = format!("/jobs/{id}/retry");
    browser
        .click_action(&retry, "1 dead letter(s) sent back to work.")
        .await;
    wait_for("the retried job to run again", || {
        runs.load(Ordering::SeqCst) == 2
    })
    .await;
    // Done this time: no dead letter left, and the job is gone.
    let started = Instant::now();
    while !admin.dead_letters(Some("q"), None, 10).await.unwrap().is_empty() || admin.job(&id).await.is_ok() {
        assert!(started.elapsed() < PATIENCE, "the retried job did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop.send(());
    worker.await.unwrap();
    browser.close().await;
    admin.close().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_actions_disabled_the_pages_say_so_and_a_post_is_refused() {
    let root = zkq_testkit::unique_root("dashboard-read-only");
    let producer = Producer::connect(&zk(), &root).await.unwrap();
    let admin = Admin::connect(&zk(), &root).await.unwrap();
    producer.enqueue("q", NewJob::new("k", "x")).await.unwrap();

    let served = Served::start(&root, &["--refresh", "1h"]);
    let browser = Browser::open().await;
    browser
        .client
        .goto(&format!("{}/queues/q", served.url))
        .await
        .unwrap();
    let notice = browser.text("#read-only").await.expect("a read-only notice");
    assert!(notice.contains("--allow-actions"), "{notice}");
    let button = browser
        .client
        .find(Locator::Css("form[action='/queues/q/pause'] button"))
        .await
        .unwrap();
    assert!(!button.is_enabled().await.unwrap(), "the pause button is enabled");
    browser.screenshot("read-only").await;

    // The page's own token does not help: the server refuses every action.
    let reply = browser
        .client
        .execute_async(
            "const done = arguments[0];
             const csrf = document.querySelector('input[name=csrf]').value;
             fetch('/queues/q/pause', { method: 'POST', body: new URLSearchParams({ csrf }) })
               .then(r => r.text().then(t => done([r.status, t])));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(reply[0], json!(403), "{reply}");
    assert!(
        reply[1].as_str().unwrap().contains("actions are disabled"),
        "{reply}"
    );
    assert!(!admin.stats(Some("q")).await.unwrap().queues[0].paused);

    // A request for another host name (a hostile page's name pointed at this machine) gets
    // nothing.
    let (status, body) = get(&served, "rebound.example:80", "/");
    assert_eq!(status, 421, "{body}");
    assert!(!body.contains("/queues/q"), "{body}");

    browser.close().await;
    admin.close().await;
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_with_the_fleets_credentials_and_says_when_it_may_not() {
    let root = zkq_testkit::unique_root("dashboard-auth");
    let zk = ZkConfig {
        auth: vec![zkq::Credentials::parse("digest:zkq:pw-dashboard").unwrap()],
        ..zk()
    };
    let producer = Producer::connect(&zk, &root).await.unwrap();
    producer.enqueue("secret", NewJob::new("k", "x")).await.unwrap();

    let with = Served::start_with_env(&root, &[], &[("ZKQ_AUTH", "digest:zkq:pw-dashboard")]);
    let (status, body) = get(&with, "localhost", "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("data-queue=\"secret\""), "{body}");

    // Without the credentials: the page says what was refused, with 403.
    let without = Served::start(&root, &[]);
    let (status, body) = get(&without, "localhost", "/");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not authorized"), "{body}");
    assert!(!body.contains("data-queue"), "{body}");
    producer.close().await;
}

//! zkq-producer driven as a user would, against a real ZooKeeper.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use zkq::zookeeper_client as zk;

fn producer(root: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args(["--zk", &zkq_testkit::shared().connect_string(), "--root", root])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zkq-producer starts");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn ready_jobs(root: &str, queue: &str) -> Vec<zkq::Job> {
    let client = zkq::ZkConfig::new(zkq_testkit::shared().connect_string())
        .connect()
        .await
        .unwrap();
    let mut jobs = Vec::new();
    let lanes = format!("{root}/queues/{queue}/p");
    for p in client.list_children(&lanes).await.unwrap() {
        for lane in client.list_children(&format!("{lanes}/{p}")).await.unwrap() {
            let lane = format!("{lanes}/{p}/{lane}");
            for seg in client.list_children(&lane).await.unwrap() {
                let seg = format!("{lane}/{seg}");
                for j in client.list_children(&seg).await.unwrap_or_default() {
                    if j.starts_with("j-") {
                        let path = format!("{seg}/{j}");
                        let (data, _): (Vec<u8>, zk::Stat) = client.get_data(&path).await.unwrap();
                        jobs.push(zkq::Job::decode(&path, &data).unwrap());
                    }
                }
            }
        }
    }
    jobs.sort_by_key(|j| j.enqueued_at_ms);
    jobs
}

#[tokio::test]
async fn enqueue_one_prints_its_id_and_stores_the_job_with_its_options() {
    let root = zkq_testkit::unique_root("cli-one");
    let out = producer(
        &root,
        &[
            "enqueue",
            "--queue",
            "q",
            "--kind",
            "email",
            "--priority",
            "2",
            "--max-attempts",
            "7",
            "--header",
            "a=b",
            "hello",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let jobs = ready_jobs(&root, "q").await;
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.id.to_string(), id);
    assert_eq!(
        (
            job.kind.as_str(),
            job.payload.as_slice(),
            job.priority,
            job.max_attempts
        ),
        ("email", &b"hello"[..], 2, 7)
    );
    assert_eq!(job.headers.get("a").map(String::as_str), Some("b"));
}

#[tokio::test]
async fn enqueue_reads_a_payload_from_stdin_or_a_file() {
    let root = zkq_testkit::unique_root("cli-stdin");
    let out = producer(
        &root,
        &["enqueue", "-q", "q", "-k", "k", "-"],
        Some(b"from stdin\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    let arg = format!("@{}", file.display());
    let out = producer(&root, &["enqueue", "-q", "q", "-k", "k", &arg], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let payloads: Vec<Vec<u8>> = ready_jobs(&root, "q")
        .await
        .into_iter()
        .map(|j| j.payload)
        .collect();
    assert_eq!(payloads, vec![b"from stdin\n".to_vec(), vec![0, 1, 2, 255]]);
}

#[tokio::test]
async fn enqueue_file_sends_one_job_per_json_line_in_order() {
    let root = zkq_testkit::unique_root("cli-file");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.jsonl");
    let lines: Vec<String> = (0..1200).map(|i| format!("{{\"n\":{i}}}")).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let out = producer(
        &root,
        &[
            "enqueue",
            "-q",
            "q",
            "-k",
            "k",
            "--file",
            file.to_str().unwrap(),
            "--json",
            "--batch-size",
            "100",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed.len(), 1200);
    assert_eq!(printed[0]["queue"], "q");
    let jobs = ready_jobs(&root, "q").await;
    assert_eq!(jobs.len(), 1200);
    // Each printed id is a stored job, printed in file order.
    let line_of: std::collections::HashMap<String, String> = jobs
        .iter()
        .map(|j| (j.id.to_string(), String::from_utf8_lossy(&j.payload).into_owned()))
        .collect();
    let in_print_order: Vec<String> = printed
        .iter()
        .map(|p| line_of[p["id"].as_str().unwrap()].clone())
        .collect();
    assert_eq!(in_print_order, lines);
}

#[tokio::test]
async fn a_bad_json_line_enqueues_nothing_and_names_the_line() {
    let root = zkq_testkit::unique_root("cli-badline");
    let out = producer(
        &root,
        &["enqueue", "-q", "q", "-k", "k", "--file", "-"],
        Some(b"{\"ok\":1}\n{oops\n"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("error: line 2 of - is not valid JSON"), "{err}");
    assert!(err.contains("nothing was enqueued"), "{err}");
    let client = zkq::ZkConfig::new(zkq_testkit::shared().connect_string())
        .connect()
        .await
        .unwrap();
    assert_eq!(
        client.check_stat(&root).await.unwrap(),
        None,
        "not even the queue was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_line_enqueues_nothing_even_after_thousands_of_good_ones() {
    let root = zkq_testkit::unique_root("cli-bigline");
    // 5,000 good lines, then one over the queue's payload limit (valid JSON all the same).
    let mut file = String::new();
    for i in 0..5_000 {
        file.push_str(&format!("{{\"n\":{i}}}\n"));
    }
    file.push_str(&format!("\"{}\"\n", "x".repeat(600 * 1024)));
    for i in 0..1_000 {
        file.push_str(&format!("{{\"m\":{i}}}\n"));
    }
    let out = producer(
        &root,
        &["enqueue", "-q", "q", "-k", "k", "--file", "-"],
        Some(file.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("job 5001 of -"), "{err}");
    assert!(err.contains("nothing was enqueued"), "{err}");
    assert_eq!(text(&out.stdout), "", "no id printed");
    assert_eq!(ready_jobs(&root, "q").await.len(), 0);

    // A single job that fails says nothing about ids printed above.
    let big = "y".repeat(600 * 1024);
    let out = producer(
        &root,
        &["enqueue", "-q", "q", "-k", "k", "-"],
        Some(big.as_bytes()),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("over the limit"), "{err}");
    assert!(!err.contains("printed above"), "{err}");
}

#[test]
fn bad_values_and_an_unreachable_zookeeper_give_clear_errors() {
    let out = producer("/zkq", &["enqueue", "-q", "bad/name", "-k", "k", "x"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("invalid queue name \"bad/name\""),
        "{}",
        text(&out.stderr)
    );

    let out = producer(
        "/zkq",
        &["enqueue", "-q", "q", "-k", "k", "--delay", "soon", "x"],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid value 'soon' for '--delay <DURATION>'"),
        "{}",
        text(&out.stderr)
    );

    let port = zkq_testkit::server::free_port().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args([
            "--zk",
            &format!("127.0.0.1:{port}"),
            "--connect-timeout",
            "1s",
            "enqueue",
            "-q",
            "q",
            "-k",
            "k",
            "x",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "error: cannot reach ZooKeeper at 127.0.0.1:{port}: no session within 1s (no available hosts)"
        )
    );
}

#[test]
fn help_lists_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args(["enqueue", "--help"])
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for flag in [
        "--queue",
        "--kind",
        "--file",
        "--priority",
        "--delay",
        "--partition-key",
        "--lock-key",
        "--max-attempts",
        "--timeout",
        "--header",
        "--batch-size",
        "--json",
        "[PAYLOAD]",
    ] {
        assert!(help.contains(flag), "enqueue --help lacks {flag}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .arg("--help")
        .output()
        .unwrap();
    let help = text(&out.stdout);
    for word in [
        "--zk",
        "ZKQ_ZK",
        "--root",
        "ZKQ_ROOT",
        "enqueue",
        "create-queue",
        "--session-timeout",
    ] {
        assert!(help.contains(word), "--help lacks {word}");
    }
}

#[test]
fn cron_set_list_and_delete_manage_periodic_jobs() {
    let root = zkq_testkit::unique_root("cli-cron");
    let out = producer(
        &root,
        &[
            "cron",
            "set",
            "nightly",
            "--cron",
            "0 30 2 * * *",
            "-q",
            "reports",
            "-k",
            "report",
            "full",
            "--catch-up",
            "all",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Replacing keeps one entry.
    let out = producer(
        &root,
        &[
            "cron",
            "set",
            "nightly",
            "--cron",
            "0 0 3 * * *",
            "-q",
            "reports",
            "-k",
            "report",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = producer(&root, &["cron", "list"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "nightly");
    assert_eq!(listed[0]["cron"], "0 0 3 * * *");
    assert_eq!(listed[0]["queue"], "reports");

    let out = producer(&root, &["cron", "delete", "nightly"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = producer(&root, &["cron", "delete", "nightly"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no periodic job named \"nightly\""));
    assert!(text(&producer(&root, &["cron", "list"], None).stdout).is_empty());
}

#[test]
fn a_bad_cron_expression_is_refused_before_connecting() {
    let out = Command::new(env!("CARGO_BIN_EXE_zkq-producer"))
        .args([
            "--zk",
            "127.0.0.1:1",
            "cron",
            "set",
            "n",
            "--cron",
            "every day",
            "-q",
            "q",
            "-k",
            "k",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("bad cron expression \"every day\"") && stderr.contains("seconds first"),
        "{stderr}"
    );
}

#[test]
fn create_queue_on_an_existing_queue_with_other_settings_is_refused() {
    let root = zkq_testkit::unique_root("cli-create-twice");
    let create = |partitions: &str| {
        producer(
            &root,
            &[
                "create-queue",
                "--queue",
                "q",
                "--partitions",
                partitions,
                "--max-attempts",
                "3",
            ],
            None,
        )
    };
    let out = create("4");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = create("4");
    assert_eq!(
        out.status.code(),
        Some(0),
        "the same settings again: {}",
        text(&out.stderr)
    );
    let out = create("16");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("queue q already exists with other settings (partitions 4 (asked 16))"),
        "{err}"
    );
    assert!(err.contains("zkq-admin queue set"), "{err}");
    assert!(!err.contains("QueueConfig {"), "no Debug dump: {err}");
}

//! Output: a table for people, JSON for scripts (`--json`, one document per command).

use serde_json::{json, Value};
use zkq::{DeadLetter, LockView, QueueConfig, Stats, WorkerView};

/// Longest payload preview, in characters.
const PREVIEW_CHARS: usize = 200;

pub fn print_stats(stats: &Stats, json: bool) {
    if json {
        println!("{}", serde_json::to_string(stats).unwrap_or_default());
        return;
    }
    let rows = stats
        .queues
        .iter()
        .map(|q| {
            let ready: Vec<String> = q.ready.iter().map(u64::to_string).collect();
            vec![
                q.queue.clone(),
                q.ready.iter().sum::<u64>().to_string(),
                ready.join("/"),
                q.delayed.to_string(),
                q.running.to_string(),
                q.dead.to_string(),
                q.partitions.to_string(),
                if q.paused { "yes" } else { "no" }.to_string(),
                q.problem.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "QUEUE",
                "READY",
                "BY PRIORITY",
                "DELAYED",
                "RUNNING",
                "DEAD",
                "PARTITIONS",
                "PAUSED",
                "PROBLEM"
            ],
            rows
        )
    );
    let f = &stats.fleet;
    println!(
        "\nworkers: {}   scheduler: {}   epoch: {}",
        f.workers,
        f.scheduler_leader.as_deref().unwrap_or("(none)"),
        f.scheduler_epoch
            .map(|e| e.to_string())
            .unwrap_or_else(|| "-".into())
    );
}

/// A queue's settings after a change.
pub fn print_queue(queue: &str, config: &QueueConfig, json: bool) {
    if json {
        println!("{}", json!({ "queue": queue, "config": config }));
        return;
    }
    let dead_max = config
        .dead_max
        .map(|n| n.to_string())
        .unwrap_or_else(|| "all".into());
    let dead_age = config
        .dead_max_age_ms
        .map(|ms| format!("{ms} ms"))
        .unwrap_or_else(|| "forever".into());
    println!(
        "queue {queue}: {}; max attempts {}, retry {}-{} ms, max payload {} bytes, dead letters kept: {dead_max}, for {dead_age}",
        if config.paused { "paused" } else { "running" },
        config.max_attempts,
        config.retry.base_ms,
        config.retry.max_ms,
        config.max_payload_bytes,
    );
}

pub fn print_workers(workers: &[WorkerView], json: bool) {
    if json {
        println!("{}", serde_json::to_string(workers).unwrap_or_default());
        return;
    }
    let rows = workers
        .iter()
        .map(|w| {
            let partitions: Vec<String> = w
                .partitions
                .iter()
                .map(|(q, ps)| {
                    let ps: Vec<String> = ps.iter().map(u32::to_string).collect();
                    format!("{q}:{}", ps.join(","))
                })
                .collect();
            vec![
                w.id.clone(),
                w.host.clone(),
                w.pid.to_string(),
                w.queues.join(","),
                w.kinds.join(","),
                format!("{}/{}", w.running, w.concurrency),
                partitions.join(" "),
                w.started_at_ms.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "HOST",
                "PID",
                "QUEUES",
                "KINDS",
                "RUNNING",
                "PARTITIONS",
                "STARTED (MS)"
            ],
            rows
        )
    );
}

pub fn print_locks(locks: &[LockView], json: bool) {
    if json {
        println!("{}", serde_json::to_string(locks).unwrap_or_default());
        return;
    }
    let rows = locks
        .iter()
        .map(|l| {
            vec![
                l.key.clone(),
                l.holder.clone(),
                l.held_since_ms.to_string(),
                l.token.to_string(),
                l.waiters.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["KEY", "HOLDER", "SINCE (MS)", "TOKEN", "WAITERS"], rows)
    );
}

pub fn print_dead_letters(letters: &[DeadLetter], json: bool) {
    if json {
        let list: Vec<Value> = letters.iter().map(summary).collect();
        println!("{}", Value::Array(list));
        return;
    }
    let rows = letters
        .iter()
        .map(|l| {
            vec![
                l.job.id.to_string(),
                l.queue.clone(),
                l.job.kind.clone(),
                format!("{}/{}", l.job.attempt, l.job.max_attempts),
                l.died_at_ms.to_string(),
                last_error(l).chars().take(80).collect(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "QUEUE", "KIND", "ATTEMPTS", "DIED (MS)", "LAST ERROR"],
            rows
        )
    );
}

pub fn print_dead_letter(letter: &DeadLetter, json: bool) {
    let full = full(letter);
    if json {
        println!("{full}");
        return;
    }
    let job = &letter.job;
    println!("id:            {}", job.id);
    println!("queue:         {}", letter.queue);
    println!("kind:          {}", job.kind);
    println!("priority:      {}", job.priority);
    println!("attempts:      {}/{}", job.attempt, job.max_attempts);
    println!("enqueued (ms): {}", job.enqueued_at_ms);
    println!("died (ms):     {}", letter.died_at_ms);
    if let Some(key) = &job.lock_key {
        println!("lock key:      {key}");
    }
    if let Some(key) = &job.partition_key {
        println!("partition key: {key}");
    }
    for (k, v) in &job.headers {
        println!("header:        {k}={v}");
    }
    println!(
        "payload:       {} bytes: {}",
        job.payload.len(),
        preview(&job.payload)
    );
    println!("errors:");
    for e in &job.errors {
        println!("  attempt {} at {} ms: {}", e.attempt, e.at_ms, e.message);
    }
}

/// A dead letter in `dead list --json`.
fn summary(letter: &DeadLetter) -> Value {
    json!({
        "id": letter.job.id.to_string(),
        "queue": letter.queue,
        "kind": letter.job.kind,
        "attempts": letter.job.attempt,
        "max_attempts": letter.job.max_attempts,
        "died_at_ms": letter.died_at_ms,
        "last_error": letter.job.errors.last().map(|e| e.message.clone()),
    })
}

/// A dead letter in `dead show --json`.
fn full(letter: &DeadLetter) -> Value {
    let job = &letter.job;
    let errors: Vec<Value> = job
        .errors
        .iter()
        .map(|e| json!({ "attempt": e.attempt, "at_ms": e.at_ms, "message": e.message }))
        .collect();
    json!({
        "id": job.id.to_string(),
        "queue": letter.queue,
        "kind": job.kind,
        "priority": job.priority,
        "attempts": job.attempt,
        "max_attempts": job.max_attempts,
        "enqueued_at_ms": job.enqueued_at_ms,
        "died_at_ms": letter.died_at_ms,
        "lock_key": job.lock_key,
        "partition_key": job.partition_key,
        "headers": job.headers,
        "errors": errors,
        "payload_bytes": job.payload.len(),
        "payload_preview": preview(&job.payload),
    })
}

fn last_error(letter: &DeadLetter) -> String {
    letter
        .job
        .errors
        .last()
        .map(|e| e.message.replace('\n', " "))
        .unwrap_or_default()
}

/// The payload's start as text, invalid UTF-8 replaced.
fn preview(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut preview: String = text.chars().take(PREVIEW_CHARS).collect();
    if text.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    preview
}

/// Left-aligned columns, two spaces apart, each as wide as its widest cell.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

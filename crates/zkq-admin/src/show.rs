//! Output: a table for people, JSON for scripts (`--json`, one document per command).

use serde_json::{json, Value};
use zkq::{
    AclReport, Cancelled, DeadLetter, Job, JobState, JobView, LockView, QueueConfig, Stats, WorkerView,
};

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
    for q in &stats.queues {
        for u in &q.unhandled {
            println!(
                "{}: {} ready jobs of kind {:?}, which no live worker runs",
                q.queue, u.ready, u.kind
            );
        }
    }
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

pub fn print_acl(report: &AclReport, applied: bool, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    let expected: Vec<String> = report.expected.iter().map(ToString::to_string).collect();
    println!("expected ACL: {}", expected.join(", "));
    let rows = report
        .examples
        .iter()
        .map(|d| {
            let acl: Vec<String> = d.acl.iter().map(ToString::to_string).collect();
            vec![d.path.clone(), acl.join(", ")]
        })
        .collect();
    let header = if applied {
        ["PATH", "ACL BEFORE"]
    } else {
        ["PATH", "ACL"]
    };
    if !report.examples.is_empty() {
        print!("{}", table(&header, rows));
    }
    if report.differing > report.examples.len() {
        println!("... and {} more", report.differing - report.examples.len());
    }
    if applied {
        println!(
            "{} znodes checked, {} set to the expected ACL",
            report.checked, report.fixed
        );
    } else if report.differing == 0 {
        println!("{} znodes checked, all with the expected ACL", report.checked);
    } else {
        println!(
            "{} znodes checked, {} with another ACL: zkq-admin acl apply sets the expected one",
            report.checked, report.differing
        );
    }
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
    if json {
        println!("{}", full(letter));
        return;
    }
    println!("id:            {}", letter.job.id);
    println!("queue:         {}", letter.queue);
    println!("died (ms):     {}", letter.died_at_ms);
    print_record(&letter.job);
}

pub fn print_job(view: &JobView, json: bool) {
    if json {
        let mut value = record(&view.job);
        value["queue"] = json!(view.queue);
        value["state"] = json!(view.state.name());
        match &view.state {
            JobState::Ready { partition } => value["partition"] = json!(partition),
            JobState::Running {
                partition,
                worker,
                attempt,
                since_ms,
            } => {
                value["partition"] = json!(partition);
                value["worker"] = json!(worker);
                value["running_attempt"] = json!(attempt);
                value["running_since_ms"] = json!(since_ms);
            }
            JobState::Delayed { due_ms } => value["due_at_ms"] = json!(due_ms),
            JobState::Dead { died_ms } => value["died_at_ms"] = json!(died_ms),
        }
        println!("{value}");
        return;
    }
    println!("id:            {}", view.job.id);
    println!("queue:         {}", view.queue);
    let state = match &view.state {
        JobState::Ready { partition } => format!("ready (partition {partition})"),
        JobState::Running {
            partition,
            worker,
            attempt,
            since_ms,
        } => format!(
            "running attempt {attempt} on worker {worker} since {since_ms} ms (partition {partition})"
        ),
        JobState::Delayed { due_ms } => format!("delayed until {due_ms} ms"),
        JobState::Dead { died_ms } => format!("dead since {died_ms} ms"),
    };
    println!("state:         {state}");
    print_record(&view.job);
}

pub fn print_cancelled(id: &str, cancelled: &Cancelled, json: bool) {
    let (state, worker, stopped) = match cancelled {
        Cancelled::Waiting => ("cancelled", None, None),
        Cancelled::Running { worker, stopped } => ("cancelled", Some(worker.as_str()), Some(*stopped)),
        Cancelled::AlreadyDead => ("already dead", None, None),
    };
    if json {
        println!(
            "{}",
            json!({ "id": id, "result": state, "worker": worker, "stopped": stopped })
        );
        return;
    }
    match cancelled {
        Cancelled::Waiting => println!("job {id} cancelled: now a dead letter (error \"cancelled\")"),
        Cancelled::Running { worker, stopped: true } => println!(
            "job {id} cancelled: its attempt on worker {worker} is stopped; now a dead letter (error \"cancelled\")"
        ),
        Cancelled::Running { worker, stopped: false } => println!(
            "job {id} cancelled: now a dead letter; worker {worker} has not confirmed yet that its attempt stopped"
        ),
        Cancelled::AlreadyDead => println!("job {id} is already a dead letter: nothing to cancel"),
    }
}

/// The lines every job record shows, for people.
fn print_record(job: &Job) {
    println!("kind:          {}", job.kind);
    println!("priority:      {}", job.priority);
    println!("attempts:      {}/{}", job.attempt, job.max_attempts);
    println!("enqueued (ms): {}", job.enqueued_at_ms);
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
    let mut value = record(&letter.job);
    value["queue"] = json!(letter.queue);
    value["died_at_ms"] = json!(letter.died_at_ms);
    value
}

/// A job record's fields in JSON (`dead show`, `job show`).
fn record(job: &Job) -> Value {
    let errors: Vec<Value> = job
        .errors
        .iter()
        .map(|e| json!({ "attempt": e.attempt, "at_ms": e.at_ms, "message": e.message }))
        .collect();
    json!({
        "id": job.id.to_string(),
        "kind": job.kind,
        "priority": job.priority,
        "attempts": job.attempt,
        "max_attempts": job.max_attempts,
        "enqueued_at_ms": job.enqueued_at_ms,
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

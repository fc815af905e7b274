//! The dashboard's pages, rendered on the server from the [`zkq::Admin`] API.
//!
//! Each page is one HTML document; its `<main>` is what the refresh script swaps in place.
//! Values people write (queue names, kinds, payloads, errors, headers) are escaped by maud.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use zkq::{DeadLetter, Job, JobState, JobView, QueueDetail, Stats, WorkerView};

use super::{chart, now_ms, Dashboard, Shared};

/// Dead letters listed on a queue's page.
const DEAD_LETTERS_SHOWN: usize = 50;

/// Payload bytes shown on a job's page.
const PAYLOAD_SHOWN: usize = 4096;

/// The page a navigation link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Overview,
    Workers,
    Cron,
    Locks,
    Jobs,
}

/// A flash message after an action: `?done=<what>&n=<count>`. Only these words are shown, so a
/// link cannot make the page say anything else.
#[derive(Debug, Deserialize, Default)]
pub struct Flash {
    done: Option<String>,
    /// Text, so that a link with a bad count still shows the page.
    n: Option<String>,
}

impl Flash {
    fn message(&self) -> Option<String> {
        let n: u64 = self.n.as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
        Some(match self.done.as_deref()? {
            "paused" => "Queue paused: workers stop claiming its jobs within a second.".to_string(),
            "resumed" => "Queue resumed.".to_string(),
            "retried" => format!("{n} dead letter(s) sent back to work."),
            "purged" => format!("{n} dead letter(s) deleted."),
            "cancelled" => "Job cancelled: it is a dead letter now.".to_string(),
            "cancel-unconfirmed" => {
                "Job cancelled: it is a dead letter now; its worker has not yet confirmed that the attempt stopped."
                    .to_string()
            }
            _ => return None,
        })
    }
}

/// The overview: every queue's depth, the throughput chart, the fleet.
pub async fn overview(State(d): State<Shared>, Query(flash): Query<Flash>) -> Result<Response, Response> {
    let (stats, workers) = load(&d, "Overview", Section::Overview, |admin| async move {
        let stats = admin.stats(None).await?;
        let workers = admin.workers().await?;
        Ok((stats, workers))
    })
    .await?;
    let body = html! {
        h1 { "Queues" }
        (queues_table(&d, &stats))
        h2 { "Throughput" }
        (chart::throughput(&d.throughput.series(None), d.throughput.uncountable(None), now_ms()))
        h2 { "Fleet" }
        (fleet(&stats, &workers))
    };
    Ok(page(&d, "Overview", Section::Overview, &flash, body))
}

fn queues_table(d: &Dashboard, stats: &Stats) -> Markup {
    html! {
        @if stats.queues.is_empty() {
            p.empty { "No queues yet: a queue is made by its first enqueue." }
        } @else {
            table #queues {
                thead { tr {
                    th { "Queue" } th { "State" } th.num { "Ready" } th.num { "Delayed" }
                    th.num { "Running" } th.num { "Dead" } th { "" }
                } }
                tbody {
                    @for q in &stats.queues {
                        tr data-queue=(q.queue) {
                            td { a href=(format!("/queues/{}", segment(&q.queue))) { (q.queue) } }
                            @if let Some(problem) = &q.problem {
                                td.problem colspan="6" { "cannot be read: " (problem) }
                            } @else {
                                td.state { (state_badge(q.paused)) }
                                td.num.ready title=(priorities_title(&q.ready)) { (q.ready.iter().sum::<u64>()) }
                                td.num.delayed { (q.delayed) }
                                td.num.running { (q.running) }
                                td.num.dead { (q.dead) }
                                td.actions { (pause_button(d, &q.queue, q.paused)) }
                            }
                        }
                        @for u in &q.unhandled {
                            tr.unhandled { td colspan="7" {
                                (u.ready) " ready jobs of kind " code { (u.kind) } " wait for a worker that runs them"
                            } }
                        }
                    }
                }
            }
        }
    }
}

fn fleet(stats: &Stats, workers: &[WorkerView]) -> Markup {
    html! {
        p #scheduler {
            @match &stats.fleet.scheduler_leader {
                Some(leader) => { "Scheduler leader " code { (leader) } }
                None => { "No scheduler leads: delayed jobs, retries and cron wait for one." }
            }
            @if let Some(epoch) = stats.fleet.scheduler_epoch { ", epoch " strong { (epoch) } }
            "."
        }
        p { a href="/workers" { (workers.len()) " live worker(s)" } }
        @if !workers.is_empty() {
            table #workers-short {
                thead { tr { th { "Worker" } th { "Host" } th { "Queues" } th.num { "Running" } th.num { "Concurrency" } } }
                tbody { @for w in workers {
                    tr { td { code { (w.id) } } td { (w.host) } td { (w.queues.join(", ")) }
                         td.num { (w.running) } td.num { (w.concurrency) } }
                } }
            }
        }
    }
}

/// A queue: depth, lanes and partitions, settings, dead letters.
pub async fn queue(
    State(d): State<Shared>,
    Path(name): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, Response> {
    let title = format!("Queue {name}");
    let wanted = name.clone();
    let (detail, dead) = load(&d, &title, Section::Overview, |admin| async move {
        let detail = admin.queue_detail(&wanted).await?;
        let dead = admin
            .dead_letters(Some(&wanted), None, DEAD_LETTERS_SHOWN)
            .await?;
        Ok((detail, dead))
    })
    .await?;
    let s = &detail.stats;
    let body = html! {
        h1 { "Queue " span #queue-name { (name) } " " (state_badge(s.paused)) }
        div.actions { (pause_button(&d, &name, s.paused)) }
        table.depth #depth {
            thead { tr { th.num { "Ready" } th.num { "Delayed" } th.num { "Running" } th.num { "Dead" } } }
            tbody { tr {
                td.num.ready title=(priorities_title(&s.ready)) { (s.ready.iter().sum::<u64>()) }
                td.num.delayed { (s.delayed) } td.num.running { (s.running) } td.num.dead { (s.dead) }
            } }
        }
        h2 { "Throughput" }
        (chart::throughput(&d.throughput.series(Some(&name)), d.throughput.uncountable(Some(&name)), now_ms()))
        h2 { "Partitions and lanes" }
        (partitions(&detail))
        h2 { "Dead letters" }
        (dead_letters(&d, &name, s.dead, &dead))
        h2 { "Settings" }
        (settings(&detail))
    };
    Ok(page(&d, &title, Section::Overview, &flash, body))
}

fn partitions(detail: &QueueDetail) -> Markup {
    html! {
        table #partitions {
            thead { tr {
                th.num { "Partition" }
                @for lane in 0..detail.config.priorities { th.num { "Ready p" (lane) } }
                th.num { "Running" } th { "Owner" }
            } }
            tbody { @for p in &detail.partitions {
                tr {
                    td.num { (p.partition) }
                    @for ready in &p.ready { td.num { (ready) } }
                    td.num { (p.running) }
                    td { @if p.owners.is_empty() { span.muted { "none" } } @else {
                        @for (i, owner) in p.owners.iter().enumerate() {
                            @if i > 0 { ", " } code { (owner) }
                        }
                    } }
                }
            } }
        }
    }
}

fn dead_letters(d: &Dashboard, queue: &str, total: u64, letters: &[DeadLetter]) -> Markup {
    let base = format!("/queues/{}/dead", segment(queue));
    html! {
        @if letters.is_empty() {
            p.empty { "No dead letters." }
        } @else {
            div.actions {
                (action(d, &format!("{base}/retry"), &format!("Retry all {total}"), None))
                (action(d, &format!("{base}/purge"), &format!("Purge all {total}"),
                    Some(&format!("Delete all {total} dead letters of {queue}? This cannot be undone."))))
            }
            @if total as usize > letters.len() { p.muted { "The newest " (letters.len()) " of " (total) "." } }
            table #dead-letters {
                thead { tr { th { "Job" } th { "Kind" } th { "Died" } th.num { "Attempts" } th { "Last error" } th { "" } } }
                tbody { @for letter in letters {
                    @let id = letter.job.id.to_string();
                    tr data-job=(id) {
                        td { a href=(format!("/jobs/{}", segment(&id))) { code { (id) } } }
                        td { code { (letter.job.kind) } }
                        td { (time(letter.died_at_ms)) }
                        td.num { (letter.job.attempt) "/" (letter.job.max_attempts) }
                        td.error { (letter.job.errors.last().map(|e| e.message.as_str()).unwrap_or("")) }
                        td.actions {
                            (action(d, &format!("/jobs/{}/retry", segment(&id)), "Retry", None))
                            (action(d, &format!("/jobs/{}/purge", segment(&id)), "Purge",
                                Some("Delete this dead letter? This cannot be undone.")))
                        }
                    }
                } }
            }
        }
    }
}

fn settings(detail: &QueueDetail) -> Markup {
    let c = &detail.config;
    let ms = |ms: u64| humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    html! {
        table.settings #settings { tbody {
            tr { th { "Partitions" } td { (c.partitions) } }
            tr { th { "Priorities" } td { (c.priorities) } }
            tr { th { "Segment size" } td { (c.segment_size) } }
            tr { th { "Max attempts" } td { (c.max_attempts) } }
            tr { th { "Retry backoff" } td { (ms(c.retry.base_ms)) " doubling up to " (ms(c.retry.max_ms)) } }
            tr { th { "Max payload" } td { (c.max_payload_bytes) " bytes" } }
            tr { th { "Dead letters kept" } td {
                (c.dead_max.map_or("all".to_string(), |n| n.to_string()))
                ", for " (c.dead_max_age_ms.map_or("ever".to_string(), ms))
            } }
        } }
    }
}

#[derive(Debug, Deserialize)]
pub struct Search {
    #[serde(default)]
    id: String,
}

/// `/jobs?id=…`: the job page of that id, or the search form.
pub async fn search(State(d): State<Shared>, Query(search): Query<Search>) -> Response {
    let id = search.id.trim();
    if !id.is_empty() {
        return Redirect::to(&format!("/jobs/{}", segment(id))).into_response();
    }
    let body = html! {
        h1 { "Find a job" }
        p { "Give a job's id (as enqueue printed it) in the box above: the job is found wherever it is, ready, running, delayed or dead." }
    };
    page(&d, "Jobs", Section::Jobs, &Flash::default(), body)
}

/// One job: where it is and its record.
pub async fn job(
    State(d): State<Shared>,
    Path(id): Path<String>,
    Query(flash): Query<Flash>,
) -> Result<Response, Response> {
    let wanted = id.clone();
    let title = format!("Job {id}");
    let view = load(&d, &title, Section::Jobs, |admin| async move {
        admin.job(&wanted).await
    })
    .await?;
    let body = html! {
        h1 { "Job " code #job-id { (id) } }
        (job_state(&view))
        div.actions {
            @if matches!(view.state, JobState::Dead { .. }) {
                (action(&d, &format!("/jobs/{}/retry", segment(&id)), "Retry", None))
                (action(&d, &format!("/jobs/{}/purge", segment(&id)), "Purge", Some("Delete this dead letter? This cannot be undone.")))
            } @else {
                (action(&d, &format!("/jobs/{}/cancel", segment(&id)), "Cancel",
                    Some("Cancel this job? A running attempt is stopped; the job becomes a dead letter.")))
            }
        }
        (job_record(&view.job))
    };
    Ok(page(&d, &title, Section::Jobs, &flash, body))
}

fn job_state(view: &JobView) -> Markup {
    let queue = html! { a href=(format!("/queues/{}", segment(&view.queue))) { (view.queue) } };
    html! {
        p #job-state {
            span class=(format!("badge {}", view.state.name())) { (view.state.name()) } " in queue " (queue) ": "
            @match &view.state {
                JobState::Ready { partition } => { "waiting in partition " (partition) "." }
                JobState::Running { partition, worker, attempt, since_ms } => {
                    "attempt " (attempt) " running on " code { (worker) } " since " (time(*since_ms))
                    " (partition " (partition) ")."
                }
                JobState::Delayed { due_ms } => { "due at " (time(*due_ms)) "." }
                JobState::Dead { died_ms } => { "dead since " (time(*died_ms)) "." }
            }
        }
    }
}

fn job_record(job: &Job) -> Markup {
    html! {
        table.settings #job-record { tbody {
            tr { th { "Kind" } td { code { (job.kind) } } }
            tr { th { "Priority" } td { (job.priority) } }
            tr { th { "Attempts" } td { (job.attempt) " of " (job.max_attempts) } }
            tr { th { "Enqueued" } td { (time(job.enqueued_at_ms)) } }
            tr { th { "Ready at" } td { (time(job.ready_at_ms)) } }
            @if let Some(timeout) = job.timeout_ms { tr { th { "Timeout" } td { (timeout) " ms" } } }
            @if let Some(key) = &job.lock_key { tr { th { "Lock key" } td { code { (key) } } } }
            @if let Some(key) = &job.partition_key { tr { th { "Partition key" } td { code { (key) } } } }
            @for (name, value) in &job.headers { tr { th { "Header " code { (name) } } td { (value) } } }
        } }
        @if !job.errors.is_empty() {
            h2 { "Errors" }
            table #job-errors {
                thead { tr { th.num { "Attempt" } th { "When" } th { "Error" } } }
                tbody { @for e in &job.errors {
                    tr { td.num { (e.attempt) } td { (time(e.at_ms)) } td.error { pre { (e.message) } } }
                } }
            }
        }
        h2 { "Payload " span.muted { "(" (job.payload.len()) " bytes)" } }
        pre.payload { (payload_preview(&job.payload)) }
    }
}

/// The payload's start as text (invalid UTF-8 replaced), marked when cut.
fn payload_preview(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(PAYLOAD_SHOWN)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if payload.len() > PAYLOAD_SHOWN {
        text.push_str("\n… (cut)");
    }
    text
}

/// Every live worker.
pub async fn workers(State(d): State<Shared>) -> Result<Response, Response> {
    let workers = load(&d, "Workers", Section::Workers, |admin| async move {
        admin.workers().await
    })
    .await?;
    let body = html! {
        h1 { "Workers " span.muted { "(" (workers.len()) ")" } }
        @if workers.is_empty() { p.empty { "No live worker." } } @else {
            table #workers {
                thead { tr {
                    th { "Worker" } th { "Host" } th.num { "PID" } th { "Queues" } th { "Kinds" }
                    th.num { "Concurrency" } th.num { "Running" } th { "Partitions" } th { "Version" } th { "Started" }
                } }
                tbody { @for w in &workers {
                    tr {
                        td { code { (w.id) } } td { (w.host) } td.num { (w.pid) } td { (w.queues.join(", ")) }
                        td { (w.kinds.join(", ")) } td.num { (w.concurrency) } td.num { (w.running) }
                        td { (owned(&w.partitions)) } td { (w.version) } td { (time(w.started_at_ms)) }
                    }
                } }
            }
        }
    };
    Ok(page(&d, "Workers", Section::Workers, &Flash::default(), body))
}

fn owned(partitions: &BTreeMap<String, Vec<u32>>) -> String {
    partitions
        .iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(q, p)| {
            let list: Vec<String> = p.iter().map(u32::to_string).collect();
            format!("{q}: {}", list.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every cron schedule, with its next tick.
pub async fn cron(State(d): State<Shared>) -> Result<Response, Response> {
    let schedules = load(&d, "Cron", Section::Cron, |admin| async move {
        admin.schedules().await
    })
    .await?;
    let now = now_ms();
    let body = html! {
        h1 { "Cron schedules " span.muted { "(" (schedules.len()) ")" } }
        @if schedules.is_empty() { p.empty { "No periodic jobs." } } @else {
            table #schedules {
                thead { tr { th { "Name" } th { "Queue" } th { "Cron (UTC)" } th { "Kind" } th { "Next tick" } th { "Last fired" } } }
                tbody { @for (name, s) in &schedules {
                    tr {
                        td { code { (name) } } td { a href=(format!("/queues/{}", segment(&s.queue))) { (s.queue) } }
                        td { code { (s.cron) } } td { code { (s.kind) } }
                        td { @match s.next_tick(now) { Ok(Some(at)) => (time(at)), Ok(None) => "never", Err(e) => (e.to_string()) } }
                        td { @match s.last_tick_ms { Some(at) => (time(at)), None => "not yet" } }
                    }
                } }
            }
        }
    };
    Ok(page(&d, "Cron", Section::Cron, &Flash::default(), body))
}

/// Every lock key with a holder.
pub async fn locks(State(d): State<Shared>) -> Result<Response, Response> {
    let locks = load(
        &d,
        "Locks",
        Section::Locks,
        |admin| async move { admin.locks().await },
    )
    .await?;
    let body = html! {
        h1 { "Locks " span.muted { "(" (locks.len()) " held)" } }
        @if locks.is_empty() { p.empty { "No lock is held." } } @else {
            table #locks {
                thead { tr { th { "Key" } th { "Holder" } th { "Since" } th.num { "Fencing token" } th.num { "Waiting" } } }
                tbody { @for l in &locks {
                    tr { td { code { (l.key) } } td { code { (l.holder) } } td { (time(l.held_since_ms)) }
                         td.num { (l.token) } td.num { (l.waiters) } }
                } }
            }
        }
    };
    Ok(page(&d, "Locks", Section::Locks, &Flash::default(), body))
}

/// What `f` reads through the dashboard's session; an error becomes the page `title` saying
/// so, with the status it deserves.
async fn load<T, F, Fut>(d: &Dashboard, title: &str, section: Section, f: F) -> Result<T, Response>
where
    F: FnOnce(std::sync::Arc<zkq::Admin>) -> Fut,
    Fut: std::future::Future<Output = zkq::Result<T>>,
{
    d.connection
        .run(f)
        .await
        .map_err(|e| failure(d, title, section, &e))
}

/// An error in place of a page's content, with the status it deserves.
fn failure(d: &Dashboard, title: &str, section: Section, error: &zkq::Error) -> Response {
    let status = status_of(error);
    let body = html! {
        h1 { (title) }
        p.problem #problem { (error.to_string()) }
        @if status == StatusCode::SERVICE_UNAVAILABLE { p.muted { "The page tries again on its own." } }
    };
    (status, page(d, title, section, &Flash::default(), body)).into_response()
}

/// The HTTP status of an error from the admin API.
pub fn status_of(error: &zkq::Error) -> StatusCode {
    match error {
        zkq::Error::NotFound(_) => StatusCode::NOT_FOUND,
        zkq::Error::InvalidName { .. } | zkq::Error::InvalidConfig(_) | zkq::Error::InvalidJob(_) => {
            StatusCode::BAD_REQUEST
        }
        zkq::Error::NotAuthorized { .. } => StatusCode::FORBIDDEN,
        zkq::Error::Unreachable { .. } | zkq::Error::SessionLost(_) | zkq::Error::OutcomeUnknown { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The whole document around a page's content.
fn page(d: &Dashboard, title: &str, section: Section, flash: &Flash, content: Markup) -> Response {
    let nav = [
        (Section::Overview, "/", "Overview"),
        (Section::Workers, "/workers", "Workers"),
        (Section::Cron, "/cron", "Cron"),
        (Section::Locks, "/locks", "Locks"),
    ];
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · zkq" }
                link rel="stylesheet" href="/assets/dashboard.css";
                script src="/assets/dashboard.js" defer {}
            }
            body data-refresh-ms=(d.refresh.as_millis()) {
                header {
                    a.brand href="/" { "zkq" }
                    span.root title="ZooKeeper root" { (d.root) }
                    nav { @for (s, href, label) in nav {
                        a href=(href) class=[(s == section).then_some("active")] { (label) }
                    } }
                    form.search action="/jobs" method="get" {
                        input type="search" name="id" placeholder="Job id" aria-label="Job id";
                        button type="submit" { "Find" }
                    }
                    span #live { "live" }
                }
                @if !d.allow_actions {
                    p.notice #read-only {
                        "Read-only: actions are disabled. Start " code { "zkq-admin serve --allow-actions" }
                        " to pause and resume queues, retry and purge dead letters, and cancel jobs."
                    }
                }
                main {
                    @if let Some(message) = flash.message() { p.flash #flash { (message) } }
                    (content)
                }
            }
        }
    };
    Html(markup.into_string()).into_response()
}

/// A POST form of one button: the action at `path`, with the page's token. Disabled (and said
/// so) unless actions are allowed.
fn action(d: &Dashboard, path: &str, label: &str, confirm: Option<&str>) -> Markup {
    html! {
        form.action method="post" action=(path) data-confirm=[confirm] {
            input type="hidden" name="csrf" value=(d.guard.token());
            @if d.allow_actions {
                button type="submit" { (label) }
            } @else {
                button type="submit" disabled title="Actions are disabled (zkq-admin serve --allow-actions)" { (label) }
            }
        }
    }
}

fn pause_button(d: &Dashboard, queue: &str, paused: bool) -> Markup {
    let q = segment(queue);
    if paused {
        action(d, &format!("/queues/{q}/resume"), "Resume", None)
    } else {
        action(d, &format!("/queues/{q}/pause"), "Pause", None)
    }
}

fn state_badge(paused: bool) -> Markup {
    html! {
        @if paused { span.badge.paused { "paused" } } @else { span.badge.active { "active" } }
    }
}

fn priorities_title(ready: &[u64]) -> String {
    ready
        .iter()
        .enumerate()
        .map(|(p, n)| format!("priority {p}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A time as `2026-12-01 14:05:03 UTC`.
fn time(ms: u64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64).map_or_else(
        || format!("{ms} ms"),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// `text` made safe as one path segment: everything but unreserved characters percent-encoded.
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_keep_only_unreserved_characters() {
        assert_eq!(segment("orders-eu.1_x~"), "orders-eu.1_x~");
        assert_eq!(segment("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
    }

    #[test]
    fn a_flash_says_only_what_the_dashboard_wrote() {
        let flash = |done: &str| Flash {
            done: Some(done.into()),
            n: Some("3".into()),
        };
        assert_eq!(
            flash("retried").message().as_deref(),
            Some("3 dead letter(s) sent back to work.")
        );
        assert_eq!(flash("<script>alert(1)</script>").message(), None);
    }
}

//! The dashboard's actions: POST forms, refused unless `--allow-actions`, checked by
//! [`super::guard`], each answered with a redirect to the page that shows the result.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use tracing::info;
use zkq::{Admin, Cancelled, Purge};

use super::pages::{segment, status_of};
use super::Shared;

/// The fields of every action form.
#[derive(Debug, Deserialize)]
pub struct ActionForm {
    /// The page's token ([`super::guard::Guard::token`]); missing reads as wrong.
    #[serde(default)]
    csrf: String,
}

/// What a form asks for, and of which queue or job.
#[derive(Debug)]
enum Action {
    Pause(String),
    Resume(String),
    RetryAllDead(String),
    PurgeAllDead(String),
    RetryDead(String),
    PurgeDead(String),
    Cancel(String),
}

impl Action {
    /// What it does, for the log and errors: `pause queue emails`.
    fn describe(&self) -> String {
        match self {
            Action::Pause(q) => format!("pause queue {q}"),
            Action::Resume(q) => format!("resume queue {q}"),
            Action::RetryAllDead(q) => format!("retry the dead letters of {q}"),
            Action::PurgeAllDead(q) => format!("purge the dead letters of {q}"),
            Action::RetryDead(id) => format!("retry dead letter {id}"),
            Action::PurgeDead(id) => format!("purge dead letter {id}"),
            Action::Cancel(id) => format!("cancel job {id}"),
        }
    }
}

/// `POST /queues/{queue}/pause|resume`.
pub async fn queue(
    State(d): State<Shared>,
    Path((queue, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let action = match verb.as_str() {
        "pause" => Action::Pause(queue),
        "resume" => Action::Resume(queue),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    act(&d, &headers, &form, action).await
}

/// `POST /queues/{queue}/dead/retry|purge`: every dead letter of the queue.
pub async fn queue_dead(
    State(d): State<Shared>,
    Path((queue, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let action = match verb.as_str() {
        "retry" => Action::RetryAllDead(queue),
        "purge" => Action::PurgeAllDead(queue),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    act(&d, &headers, &form, action).await
}

/// `POST /jobs/{id}/retry|purge|cancel`.
pub async fn job(
    State(d): State<Shared>,
    Path((id, verb)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let action = match verb.as_str() {
        "retry" => Action::RetryDead(id),
        "purge" => Action::PurgeDead(id),
        "cancel" => Action::Cancel(id),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    act(&d, &headers, &form, action).await
}

/// Runs `action` if actions are allowed and the request passes the guard; answers with a
/// redirect to the page that shows its result, or the error as plain text with its status.
async fn act(d: &Shared, headers: &HeaderMap, form: &ActionForm, action: Action) -> Response {
    if !d.allow_actions {
        return refused(
            StatusCode::FORBIDDEN,
            "actions are disabled: start zkq-admin serve with --allow-actions".into(),
        );
    }
    if let Some(why) = d.guard.refuse_post(headers, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, why.into());
    }
    let what = action.describe();
    match d
        .connection
        .run(|admin| async move { perform(&admin, action).await })
        .await
    {
        Ok(to) => {
            info!(action = %what, "dashboard action done");
            Redirect::to(&to).into_response()
        }
        Err(e) => refused(status_of(&e), format!("cannot do {what}: {e}")),
    }
}

/// Does `action`; returns the page to show next, with its message (`?done=`).
async fn perform(admin: &Admin, action: Action) -> zkq::Result<String> {
    let queue_page = |queue: &str, done: &str| format!("/queues/{}?done={done}", segment(queue));
    Ok(match action {
        Action::Pause(queue) => {
            admin.pause(&queue).await?;
            queue_page(&queue, "paused")
        }
        Action::Resume(queue) => {
            admin.resume(&queue).await?;
            queue_page(&queue, "resumed")
        }
        Action::RetryAllDead(queue) => {
            let retried = admin.retry_all_dead(Some(&queue), None).await?;
            queue_page(&queue, &format!("retried&n={}", retried.len()))
        }
        Action::PurgeAllDead(queue) => {
            let purged = admin.purge_dead(Some(&queue), Purge::All).await?;
            queue_page(&queue, &format!("purged&n={purged}"))
        }
        Action::RetryDead(id) => {
            let letter = admin.dead_letter(&id).await?;
            let retried = admin.retry_dead(std::slice::from_ref(&id)).await?;
            queue_page(&letter.queue, &format!("retried&n={}", retried.len()))
        }
        Action::PurgeDead(id) => {
            let letter = admin.dead_letter(&id).await?;
            let purged = admin.purge_dead(None, Purge::Ids(vec![id])).await?;
            queue_page(&letter.queue, &format!("purged&n={purged}"))
        }
        Action::Cancel(id) => {
            let done = match admin.cancel_job(&id).await? {
                Cancelled::Running { stopped: false, .. } => "cancel-unconfirmed",
                _ => "cancelled",
            };
            format!("/jobs/{}?done={done}", segment(&id))
        }
    })
}

fn refused(status: StatusCode, why: String) -> Response {
    (status, format!("zkq dashboard: {why}\n")).into_response()
}

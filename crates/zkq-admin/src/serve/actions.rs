//! The dashboard's actions: POST forms, refused unless `--allow-actions`, checked by
//! [`super::guard`], each answered with a redirect to the page that shows the result.

use std::future::Future;
use std::sync::Arc;

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

pub async fn pause(
    State(d): State<Shared>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&d, &headers, &form, "pause", |admin| async move {
        admin.pause(&queue).await?;
        Ok(format!("/queues/{}?done=paused", segment(&queue)))
    })
    .await
}

pub async fn resume(
    State(d): State<Shared>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&d, &headers, &form, "resume", |admin| async move {
        admin.resume(&queue).await?;
        Ok(format!("/queues/{}?done=resumed", segment(&queue)))
    })
    .await
}

pub async fn retry_all_dead(
    State(d): State<Shared>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &d,
        &headers,
        &form,
        "retry all dead letters",
        |admin| async move {
            let retried = admin.retry_all_dead(Some(&queue), None).await?;
            Ok(format!(
                "/queues/{}?done=retried&n={}",
                segment(&queue),
                retried.len()
            ))
        },
    )
    .await
}

pub async fn purge_all_dead(
    State(d): State<Shared>,
    Path(queue): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(
        &d,
        &headers,
        &form,
        "purge all dead letters",
        |admin| async move {
            let purged = admin.purge_dead(Some(&queue), Purge::All).await?;
            Ok(format!("/queues/{}?done=purged&n={purged}", segment(&queue)))
        },
    )
    .await
}

pub async fn retry_dead(
    State(d): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&d, &headers, &form, "retry a dead letter", |admin| async move {
        let letter = admin.dead_letter(&id).await?;
        let retried = admin.retry_dead(std::slice::from_ref(&id)).await?;
        Ok(format!(
            "/queues/{}?done=retried&n={}",
            segment(&letter.queue),
            retried.len()
        ))
    })
    .await
}

pub async fn purge_dead(
    State(d): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&d, &headers, &form, "purge a dead letter", |admin| async move {
        let letter = admin.dead_letter(&id).await?;
        let purged = admin.purge_dead(None, Purge::Ids(vec![id])).await?;
        Ok(format!(
            "/queues/{}?done=purged&n={purged}",
            segment(&letter.queue)
        ))
    })
    .await
}

pub async fn cancel(
    State(d): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    act(&d, &headers, &form, "cancel a job", |admin| async move {
        let done = match admin.cancel_job(&id).await? {
            Cancelled::Running { stopped: false, .. } => "cancel-unconfirmed",
            _ => "cancelled",
        };
        Ok(format!("/jobs/{}?done={done}", segment(&id)))
    })
    .await
}

/// Runs an action if actions are allowed and the request passes the guard; answers with a
/// redirect to the path it returns, or the error as plain text with its status.
async fn act<F, Fut>(d: &Shared, headers: &HeaderMap, form: &ActionForm, what: &str, run: F) -> Response
where
    F: FnOnce(Arc<Admin>) -> Fut,
    Fut: Future<Output = zkq::Result<String>>,
{
    if !d.allow_actions {
        return refused(
            StatusCode::FORBIDDEN,
            "actions are disabled: start zkq-admin serve with --allow-actions".into(),
        );
    }
    if let Some(why) = d.guard.refuse_post(headers, &form.csrf) {
        return refused(StatusCode::FORBIDDEN, why.into());
    }
    match d.connection.run(run).await {
        Ok(to) => {
            info!(action = what, "dashboard action done");
            Redirect::to(&to).into_response()
        }
        Err(e) => refused(status_of(&e), format!("cannot {what}: {e}")),
    }
}

fn refused(status: StatusCode, why: String) -> Response {
    (status, format!("zkq dashboard: {why}\n")).into_response()
}

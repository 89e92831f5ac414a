//! `/metrics` in Prometheus' text format, and the middleware that records
//! every HTTP request.
//!
//! The API's document has the registry of this process ([`crate::metrics`])
//! plus gauges read from the database on each scrape: tasks per queue and
//! state and the age of the oldest queued task (one grouped query), and each
//! live worker's heartbeat age. Every state of every known queue is written,
//! zero or not, so series never vanish.

use super::AppState;
use super::errors::ApiResult;
use crate::metrics::{self as registry, CONTENT_TYPE, Exposition};
use crate::store::{Store, TaskState};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use std::collections::BTreeMap;
use std::time::Instant;

pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(api_metrics))
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::require_bearer,
        ))
}

/// The worker's endpoint: its own registry only.
pub(super) fn worker_router() -> Router {
    Router::new()
        .route("/metrics", get(worker_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn worker_metrics() -> Response {
    let mut out = Exposition::new();
    registry::global().write(&mut out, true);
    text(out.finish())
}

async fn api_metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let store = state.client.store();
    let stats = store.queue_stats().await?;
    let workers = store.list_workers().await?;
    let now = Utc::now();

    let mut out = Exposition::new();
    let mut per_queue: BTreeMap<&str, BTreeMap<TaskState, u64>> = BTreeMap::new();
    let mut oldest: BTreeMap<&str, f64> = BTreeMap::new();
    per_queue.entry(crate::client::DEFAULT_QUEUE).or_default();
    for s in &stats {
        per_queue
            .entry(s.queue.as_str())
            .or_default()
            .insert(s.state, s.count);
        if let Some(t) = s.oldest_queued_at {
            oldest.insert(
                s.queue.as_str(),
                (now - t).num_milliseconds().max(0) as f64 / 1000.0,
            );
        }
    }
    out.header(
        "wasmq_tasks",
        "Tasks in the database, by queue and state.",
        "gauge",
    );
    for (queue, counts) in &per_queue {
        for state in TaskState::ALL {
            out.sample(
                "wasmq_tasks",
                "",
                &[
                    ("queue", queue.to_string()),
                    ("state", state.as_str().to_string()),
                ],
                counts.get(&state).copied().unwrap_or(0) as f64,
            );
        }
    }
    out.header(
        "wasmq_queue_oldest_queued_age_seconds",
        "Age of the oldest queued task of the queue (0 when none is queued).",
        "gauge",
    );
    for queue in per_queue.keys() {
        out.sample(
            "wasmq_queue_oldest_queued_age_seconds",
            "",
            &[("queue", queue.to_string())],
            oldest.get(queue).copied().unwrap_or(0.0),
        );
    }
    out.header(
        registry::WORKER_HEARTBEAT_AGE,
        registry::WORKER_HEARTBEAT_AGE_HELP,
        "gauge",
    );
    for w in workers.iter().filter(|w| w.stopped_at.is_none()) {
        out.sample(
            registry::WORKER_HEARTBEAT_AGE,
            "",
            &[("worker", w.id.clone())],
            (now - w.last_heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0,
        );
    }
    out.header(
        "wasmq_workers_alive",
        "Workers registered and not stopped.",
        "gauge",
    );
    out.sample(
        "wasmq_workers_alive",
        "",
        &[],
        workers.iter().filter(|w| w.stopped_at.is_none()).count() as f64,
    );
    // The heartbeat family was written from the database above.
    registry::global().write(&mut out, false);
    Ok(text(out.finish()))
}

/// Counts and times every request by its route template (not its path, so
/// task ids do not become label values).
pub(super) async fn record_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(req).await;
    let m = registry::global();
    m.http_requests
        .inc(&[&method, &route, response.status().as_str()]);
    m.http_duration
        .observe(&[&route], start.elapsed().as_secs_f64());
    response
}

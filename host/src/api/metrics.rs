//! `/metrics` in Prometheus' text format, and the middleware that records
//! every HTTP request.
//!
//! The API's document has the registry of this process ([`crate::metrics`])
//! plus gauges read from the database on each scrape: tasks per queue and
//! state and the age of the oldest queued task (one grouped query), and each
//! live worker's heartbeat age. Every state of every known queue is written,
//! zero or not, so series never vanish.

use super::errors::{ApiError, ApiResult};
use super::{AllowedHosts, ApiToken, AppState};
use crate::metrics::{self as registry, CONTENT_TYPE, QueueLabels, WorkerLabels};
use crate::store::{Store, TaskState};
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

pub(super) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(api_metrics))
        .layer(axum::middleware::from_fn_with_state(
            state,
            super::auth::require_bearer,
        ))
}

/// The worker's endpoint: its own registry only. With a token, `/metrics`
/// needs it; without one the endpoint is on loopback (see
/// [`super::serve_worker_metrics`]) and answers loopback names only, so that
/// a page of another site cannot read it through DNS rebinding.
pub(super) fn worker_router(token: Option<ApiToken>, hosts: AllowedHosts) -> Router {
    let router = Router::new().route("/healthz", get(|| async { "ok\n" }));
    match token {
        Some(token) => router.route(
            "/metrics",
            get(worker_metrics).layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    let token = token.clone();
                    async move { super::auth::bearer_checked(&token, req, next).await }
                },
            )),
        ),
        None => router
            .route("/metrics", get(worker_metrics))
            .layer(axum::middleware::from_fn(
                move |req: Request, next: Next| {
                    super::guard::check_host_of(hosts.clone(), req, next)
                },
            )),
    }
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response()
}

async fn worker_metrics() -> ApiResult<Response> {
    let mut out = String::new();
    registry::global()
        .encode(&mut out, true)
        .map_err(ApiError::internal)?;
    Ok(text(out))
}

/// The `state` label of `wasmq_tasks`.
impl EncodeLabelValue for TaskState {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueStateLabels {
    queue: String,
    state: TaskState,
}

/// Seconds as a gauge value.
type Seconds = Gauge<f64, AtomicU64>;

async fn api_metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let store = state.client.store();
    let stats = store.queue_stats().await?;
    let workers = store.list_workers().await?;
    let now = Utc::now();
    let age = |t: DateTime<Utc>| (now - t).num_milliseconds().max(0) as f64 / 1000.0;

    let mut per_queue: BTreeMap<&str, BTreeMap<TaskState, u64>> = BTreeMap::new();
    let mut oldest: BTreeMap<&str, f64> = BTreeMap::new();
    per_queue.entry(crate::client::DEFAULT_QUEUE).or_default();
    for s in &stats {
        per_queue
            .entry(s.queue.as_str())
            .or_default()
            .insert(s.state, s.count);
        if let Some(t) = s.oldest_queued_at {
            oldest.insert(s.queue.as_str(), age(t));
        }
    }
    let tasks = Family::<QueueStateLabels, Gauge>::default();
    let oldest_age = Family::<QueueLabels, Seconds>::default();
    for (queue, counts) in &per_queue {
        for state in TaskState::ALL {
            let n = counts.get(&state).copied().unwrap_or(0);
            tasks
                .get_or_create(&QueueStateLabels {
                    queue: queue.to_string(),
                    state,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        oldest_age
            .get_or_create(&QueueLabels {
                queue: queue.to_string(),
            })
            .set(oldest.get(queue).copied().unwrap_or(0.0));
    }
    let heartbeat_age = Family::<WorkerLabels, Seconds>::default();
    let alive = Gauge::<i64>::default();
    for w in workers.iter().filter(|w| w.stopped_at.is_none()) {
        heartbeat_age
            .get_or_create(&WorkerLabels {
                worker: w.id.clone(),
            })
            .set(age(w.last_heartbeat_at));
        alive.inc();
    }

    let mut db = Registry::default();
    registry::register(
        &mut db,
        "wasmq_tasks",
        "Tasks in the database, by queue and state.",
        tasks,
    );
    registry::register(
        &mut db,
        "wasmq_queue_oldest_queued_age_seconds",
        "Age of the oldest queued task of the queue (0 when none is queued).",
        oldest_age,
    );
    registry::register(
        &mut db,
        registry::WORKER_HEARTBEAT_AGE,
        registry::WORKER_HEARTBEAT_AGE_HELP,
        heartbeat_age,
    );
    registry::register(
        &mut db,
        "wasmq_workers_alive",
        "Workers registered and not stopped.",
        alive,
    );
    let mut out = String::new();
    registry::encode(&mut out, &db)
        // The heartbeat family was written from the database above.
        .and_then(|()| registry::global().encode(&mut out, false))
        .map_err(ApiError::internal)?;
    Ok(text(out))
}

/// Counts and times every request by its route template (not its path, so
/// task ids do not become label values).
pub(super) async fn record_request(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let response = next.run(req).await;
    registry::global().http_request(
        &method,
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        response.status().as_u16(),
        start.elapsed(),
    );
    response
}

//! Workers, queue statistics and the health probes.

use super::{Endpoint, endpoint};
use crate::api::AppState;
use crate::api::errors::{ApiError, ApiResult};
use crate::store::{QueueStat, Store, TaskState, WorkerRecord};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::BTreeMap;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint("get", "/api/v1/workers", workers)
            .doc(
                "workers",
                "Workers, newest first, with heartbeat age and running tasks",
            )
            .responses(&[(200, "The workers", "WorkerList")]),
        endpoint("get", "/api/v1/queues", queues)
            .doc(
                "queues",
                "Task counts per queue and state, and the age of each queue's oldest queued task",
            )
            .responses(&[(200, "The queues", "QueueList")]),
    ]
}

/// Seconds from `t` to `now`, never negative.
pub(crate) fn age_seconds(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (now - t).num_milliseconds().max(0) as f64 / 1000.0
}

pub(crate) fn worker_json(w: &WorkerRecord, now: DateTime<Utc>) -> Value {
    let mut v = serde_json::to_value(w).expect("a worker record serializes");
    v["queues"] = Value::String(w.queues.to_string());
    v["heartbeat_age_seconds"] = json!(age_seconds(now, w.last_heartbeat_at));
    v["alive"] = json!(w.stopped_at.is_none());
    v
}

async fn workers(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let now = Utc::now();
    let ws = state.client.store().list_workers().await?;
    Ok(Json(json!({
        "workers": ws.iter().map(|w| worker_json(w, now)).collect::<Vec<_>>()
    })))
}

/// One queue's row of the overview.
pub(crate) struct QueueRow {
    pub queue: String,
    pub counts: BTreeMap<TaskState, u64>,
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

/// Groups the store's (queue, state) counts by queue; every state present.
pub(crate) fn queue_rows(stats: &[QueueStat]) -> Vec<QueueRow> {
    let mut rows: BTreeMap<&str, QueueRow> = BTreeMap::new();
    for s in stats {
        let row = rows.entry(&s.queue).or_insert_with(|| QueueRow {
            queue: s.queue.clone(),
            counts: TaskState::ALL.iter().map(|&st| (st, 0)).collect(),
            oldest_queued_at: None,
        });
        row.counts.insert(s.state, s.count);
        if s.oldest_queued_at.is_some() {
            row.oldest_queued_at = s.oldest_queued_at;
        }
    }
    rows.into_values().collect()
}

async fn queues(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let now = Utc::now();
    let stats = state.client.store().queue_stats().await?;
    let queues: Vec<Value> = queue_rows(&stats)
        .iter()
        .map(|r| {
            let counts: BTreeMap<&str, u64> =
                r.counts.iter().map(|(s, n)| (s.as_str(), *n)).collect();
            json!({
                "queue": r.queue,
                "counts": counts,
                "oldest_queued_at": r.oldest_queued_at,
                "oldest_queued_age_seconds": r.oldest_queued_at.map(|t| age_seconds(now, t)),
            })
        })
        .collect();
    Ok(Json(json!({ "queues": queues })))
}

/// Alive: the process answers.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the database answers.
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    match state.client.store().ping().await {
        Ok(()) => Ok(Json(json!({
            "status": "ready",
            "database": state.client.store().backend_name(),
        }))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed: the database does not answer");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database does not answer",
            ))
        }
    }
}

//! `/api/v1/tasks`: enqueue, get, list (filters, cursor paging), cancel,
//! retry, attempts, logs.

use super::{Endpoint, In, TASK_ID, endpoint};
use crate::api::AppState;
use crate::api::errors::{ApiError, ApiPath, ApiQuery, ApiResult, read_body};
use crate::client::{DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, EnqueueRequest};
use crate::fuel::Fuel;
use crate::store::{
    CancelOutcome, MAX_LIST_LIMIT, Store, StoreError, TaskFilter, TaskLimits, TaskRecord,
    TaskState, TaskSummary,
};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use uuid::Uuid;

/// Page size of `GET /api/v1/tasks` when none is asked for.
pub const DEFAULT_PAGE: u32 = 50;

pub(super) fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint("post", "/api/v1/tasks", enqueue)
            .doc(
                "tasks",
                "Enqueue a task. Concurrent requests share one transaction; each gets its own id.",
            )
            .body(&[("application/json", "EnqueueRequest")])
            .responses(&[
                (201, "Enqueued", "Enqueued"),
                (
                    200,
                    "An unfinished task with this unique key exists: its id",
                    "Enqueued",
                ),
                (400, "Bad input (unknown field, input not JSON, priority out of range, …)", "Error"),
                (404, "Unknown module", "Error"),
                (413, "Body larger than the limit", "Error"),
            ]),
        endpoint("post", "/api/v1/tasks/batch", enqueue_batch)
            .doc(
                "tasks",
                "Enqueue up to 1000 tasks in one transaction: all are stored or none",
            )
            .body(&[("application/json", "EnqueueBatch")])
            .responses(&[
                (201, "Enqueued, in request order", "EnqueuedList"),
                (400, "A bad item (the message names its index as `tasks[i]`): nothing enqueued", "Error"),
                (404, "Unknown module (`tasks[i]`): nothing enqueued", "Error"),
                (413, "Body larger than the limit", "Error"),
            ]),
        endpoint("get", "/api/v1/tasks", list)
            .doc(
                "tasks",
                "Task summaries (no input, result or logs: `GET /api/v1/tasks/{id}` has them), newest first. Pass `next_before` of a page as `before` for the next page.",
            )
            .params(&[
                ("state", In::Query, "string", false, "queued, leased, running, waiting, succeeded, failed or cancelled"),
                ("queue", In::Query, "string", false, "Queue name"),
                ("module", In::Query, "string", false, "Module name (any version)"),
                ("limit", In::Query, "integer", false, "Page size, 1..=10000 (default 50)"),
                ("before", In::Query, "integer", false, "Cursor: only tasks with seq below it"),
            ])
            .responses(&[(200, "A page of tasks", "TaskPage"), (400, "Bad filter", "Error")]),
        endpoint("get", "/api/v1/tasks/{id}", get_task)
            .doc("tasks", "One task")
            .params(&[TASK_ID])
            .responses(&[(200, "The task", "Task"), (404, "Unknown task", "Error")]),
        endpoint("post", "/api/v1/tasks/{id}/cancel", cancel)
            .doc(
                "tasks",
                "Cancel a queued task at once, or ask the worker of a running one to stop it",
            )
            .params(&[TASK_ID])
            .responses(&[
                (200, "Cancelled (it was queued)", "CancelResult"),
                (202, "Requested (it is running; its worker stops it)", "CancelResult"),
                (404, "Unknown task", "Error"),
                (409, "The task has already finished", "Error"),
            ]),
        endpoint("post", "/api/v1/tasks/{id}/retry", retry)
            .doc(
                "tasks",
                "Requeue a failed or cancelled task, keeping its attempts",
            )
            .params(&[TASK_ID])
            .responses(&[
                (200, "Requeued", "Task"),
                (404, "Unknown task", "Error"),
                (409, "The task is not failed or cancelled", "Error"),
            ]),
        endpoint("get", "/api/v1/tasks/{id}/attempts", attempts)
            .doc("tasks", "Every attempt of a task, oldest first")
            .params(&[TASK_ID])
            .responses(&[(200, "The attempts", "AttemptList"), (404, "Unknown task", "Error")]),
        endpoint("get", "/api/v1/tasks/{id}/children", children)
            .doc(
                "tasks",
                "The children a task spawned, by spawn number, and what all its descendants used",
            )
            .params(&[
                TASK_ID,
                ("limit", In::Query, "integer", false, "Page size, 1..=10000 (default 50)"),
                ("from", In::Query, "integer", false, "Cursor: children from this spawn number on"),
            ])
            .responses(&[(200, "The children", "ChildList"), (404, "Unknown task", "Error")]),
        endpoint("get", "/api/v1/tasks/{id}/logs", logs)
            .doc(
                "tasks",
                "The guest's log() lines (then stdout and stderr) captured per attempt, 64 KiB each",
            )
            .params(&[TASK_ID])
            .responses(&[(200, "The logs", "TaskLogs"), (404, "Unknown task", "Error")]),
    ]
}

/// `POST /api/v1/tasks`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    /// `NAME` or `NAME@VERSION`.
    pub module: String,
    /// Any JSON value, stored verbatim (default `{}`).
    pub input: Option<Box<RawValue>>,
    pub queue: Option<String>,
    #[serde(default)]
    pub priority: i16,
    pub run_after: Option<DateTime<Utc>>,
    /// Not before this many milliseconds from now.
    pub delay_ms: Option<u64>,
    pub max_attempts: Option<u32>,
    pub unique_key: Option<String>,
    /// Fuel units (at least 1), or `"unlimited"`.
    pub fuel: Option<Fuel>,
    pub memory_bytes: Option<u64>,
    pub timeout_ms: Option<u64>,
}

impl EnqueueBody {
    pub fn into_request(self) -> Result<EnqueueRequest, ApiError> {
        let run_after = match (self.run_after, self.delay_ms) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "give run_after or delay_ms, not both",
                ));
            }
            (Some(t), None) => Some(t),
            (None, Some(ms)) => Some(
                i64::try_from(ms)
                    .ok()
                    .and_then(chrono::Duration::try_milliseconds)
                    .and_then(|d| Utc::now().checked_add_signed(d))
                    .ok_or_else(|| ApiError::bad_request("delay_ms is too large"))?,
            ),
            (None, None) => None,
        };
        Ok(EnqueueRequest {
            module: self.module,
            input: self
                .input
                .map_or_else(|| "{}".to_string(), |r| r.get().to_string()),
            queue: self.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_string()),
            priority: self.priority,
            run_after,
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            unique_key: self.unique_key,
            limits: TaskLimits {
                fuel: self.fuel,
                memory_bytes: self.memory_bytes,
                timeout_ms: self.timeout_ms,
            },
        })
    }
}

async fn enqueue(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let bytes = read_body(req.into_body(), state.max_body_bytes).await?;
    let Json(body) = Json::<EnqueueBody>::from_bytes(&bytes)?;
    let req = body.into_request()?;
    let queue = req.queue.clone();
    let out = state.batcher.enqueue(req).await?;
    if out.deduplicated {
        return Ok((
            StatusCode::OK,
            Json(json!({ "id": out.id, "deduplicated": true })),
        ));
    }
    crate::metrics::global().task_enqueued(&queue);
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": out.id, "deduplicated": false })),
    ))
}

/// Most tasks of one `POST /api/v1/tasks/batch`.
pub const MAX_BATCH: usize = 1000;

/// `POST /api/v1/tasks/batch`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBatchBody {
    pub tasks: Vec<EnqueueBody>,
}

async fn enqueue_batch(
    State(state): State<AppState>,
    req: Request,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let bytes = read_body(req.into_body(), state.max_body_bytes).await?;
    let Json(body) = Json::<EnqueueBatchBody>::from_bytes(&bytes)?;
    if !(1..=MAX_BATCH).contains(&body.tasks.len()) {
        return Err(ApiError::bad_request(format!(
            "tasks must hold 1..={MAX_BATCH} items, not {}",
            body.tasks.len()
        )));
    }
    let at = |i: usize, e: ApiError| ApiError {
        message: format!("tasks[{i}]: {}", e.message),
        ..e
    };
    let reqs = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.into_request().map_err(|e| at(i, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let tasks = state
        .client
        .new_tasks(reqs)
        .await
        .map_err(|(i, e)| at(i, e.into()))?;
    let outcomes = state.client.store().enqueue_batch(&tasks).await?;
    let metrics = crate::metrics::global();
    for (task, out) in tasks.iter().zip(&outcomes) {
        if !out.deduplicated {
            metrics.task_enqueued(&task.queue);
        }
    }
    let created = outcomes.iter().any(|o| !o.deduplicated);
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(json!({ "tasks": outcomes })),
    ))
}

/// A task as the API shows it: input and result as JSON values, not text.
pub fn task_json(t: &TaskRecord) -> Value {
    let mut v = serde_json::to_value(t).expect("a task record serializes");
    v["input"] = as_json(&t.input);
    v["result"] = t.result.as_deref().map_or(Value::Null, as_json);
    v
}

/// Stored JSON text as a value (it was checked at enqueue; text that is not
/// JSON any more is shown as a string rather than lost).
fn as_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub queue: Option<String>,
    pub module: Option<String>,
    pub limit: Option<u32>,
    pub before: Option<i64>,
}

impl ListQuery {
    /// The store filter, checked: a bad value is a 400, not an empty page.
    pub fn filter(&self, default_limit: u32) -> Result<TaskFilter, ApiError> {
        let state = match self.state.as_deref().filter(|s| !s.is_empty()) {
            Some(s) => Some(
                s.parse::<TaskState>()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        };
        let limit = self.limit.unwrap_or(default_limit);
        if !(1..=MAX_LIST_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be within 1..={MAX_LIST_LIMIT}"
            )));
        }
        for (name, value) in [("queue", &self.queue), ("module", &self.module)] {
            // No stored name has one (they are refused at enqueue), and
            // PostgreSQL would refuse a NUL in the query.
            if value
                .as_deref()
                .is_some_and(|v| v.chars().any(char::is_control))
            {
                return Err(ApiError::bad_request(format!(
                    "{name} must not contain control characters"
                )));
            }
        }
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        Ok(TaskFilter {
            state,
            queue: nonempty(&self.queue),
            module: nonempty(&self.module),
            limit,
            before_seq: self.before,
        })
    }
}

/// The cursor of the page after `tasks`, if there may be one.
pub fn next_before(tasks: &[TaskSummary], limit: u32) -> Option<i64> {
    (tasks.len() as u32 == limit)
        .then(|| tasks.last().map(|t| t.seq))
        .flatten()
}

async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Json<Value>> {
    let filter = q.filter(DEFAULT_PAGE)?;
    let tasks = state.client.store().list_tasks(&filter).await?;
    Ok(Json(json!({
        "tasks": tasks,
        "next_before": next_before(&tasks, filter.limit),
    })))
}

async fn get_task(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    Ok(Json(task_json(&state.client.get(id).await?)))
}

async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    match state.client.cancel(id).await? {
        CancelOutcome::Cancelled => {
            tracing::info!(task_id = %id, "task cancelled through the API");
            Ok((
                StatusCode::OK,
                Json(json!({ "id": id, "outcome": "cancelled", "state": "cancelled" })),
            ))
        }
        CancelOutcome::Requested => {
            tracing::info!(task_id = %id, "cancellation requested through the API");
            let state = state.client.get(id).await?.state;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "id": id, "outcome": "requested", "state": state })),
            ))
        }
        CancelOutcome::AlreadyFinished(from) => Err(StoreError::IllegalTransition {
            id,
            from,
            action: "cancel",
        }
        .into()),
    }
}

async fn retry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    let t = state.client.retry(id).await?;
    tracing::info!(task_id = %id, "task retried through the API");
    Ok(Json(task_json(&t)))
}

async fn attempts(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Json<Value>> {
    state.client.get(id).await?;
    let attempts = state.client.store().list_attempts(id).await?;
    Ok(Json(json!({ "task_id": id, "attempts": attempts })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildrenQuery {
    pub limit: Option<u32>,
    pub from: Option<u32>,
}

async fn children(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(q): ApiQuery<ChildrenQuery>,
) -> ApiResult<Json<Value>> {
    let task = state.client.get(id).await?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    let store = state.client.store();
    let children = store.list_children(id, q.from.unwrap_or(0), limit).await?;
    let usage = store.family_usage(id).await?;
    let next_from = (children.len() as u32 == limit)
        .then(|| children.last().and_then(|c| c.spawn_seq).map(|s| s + 1))
        .flatten();
    Ok(Json(json!({
        "task_id": id,
        "children_total": task.children,
        "waiting_on": (task.state == TaskState::Waiting).then_some(task.waiting_on),
        "descendants": usage,
        "children": children,
        "next_from": next_from,
    })))
}

async fn logs(State(state): State<AppState>, ApiPath(id): ApiPath<Uuid>) -> ApiResult<Json<Value>> {
    state.client.get(id).await?;
    let attempts = state.client.store().list_attempts(id).await?;
    let logs: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "attempt": a.attempt,
                "worker_id": a.worker_id,
                "outcome": a.outcome,
                "logs": a.logs.as_deref().unwrap_or(""),
            })
        })
        .collect();
    Ok(Json(json!({ "task_id": id, "attempts": logs })))
}

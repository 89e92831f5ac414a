//! SQLite statements used more than once or too long to read inline.

use uuid::Uuid;

use super::rows::us;
use crate::store::Result;
use crate::store::model::NewTask;
use crate::store::shared::{FinishPlan, limit_to_i64, to_i32};

macro_rules! module_select {
    () => {
        "SELECT m.name, m.version, m.sha256, b.size, m.created_at \
         FROM modules m JOIN module_blobs b ON b.sha256 = m.sha256"
    };
}

/// Blobs that neither a module version nor any task refers to.
pub(super) const GC_BLOBS: &str = "DELETE FROM module_blobs \
     WHERE NOT EXISTS (SELECT 1 FROM modules m WHERE m.sha256 = module_blobs.sha256) \
       AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.module_sha256 = module_blobs.sha256)";

/// A whole enqueue batch in one statement: ?1 is a JSON array of
/// [`TaskRow`]s (inserted in array order, so `seq` follows it), ?2 now.
/// `WHERE true` resolves SQLite's parsing ambiguity between a join's ON and
/// the upsert's ON CONFLICT.
pub(super) const INSERT_TASKS: &str = "INSERT INTO tasks (id, module_name, module_version, \
         module_sha256, queue, priority, input, state, run_after, max_attempts, fuel, \
         memory_bytes, timeout_ms, unique_key, parent_id, enqueued_at, updated_at) \
     SELECT value ->> 'id', value ->> 'module_name', value ->> 'module_version', \
         value ->> 'module_sha256', value ->> 'queue', value ->> 'priority', \
         value ->> 'input', 'queued', value ->> 'run_after', value ->> 'max_attempts', \
         value ->> 'fuel', value ->> 'memory_bytes', value ->> 'timeout_ms', \
         value ->> 'unique_key', value ->> 'parent_id', ?2, ?2 \
     FROM json_each(?1) WHERE true ORDER BY key \
     ON CONFLICT (unique_key) WHERE state IN ('queued', 'leased', 'running') DO NOTHING \
     RETURNING id";

/// One task as a JSON object for `INSERT_TASKS`.
#[derive(serde::Serialize)]
pub(super) struct TaskRow<'a> {
    id: Uuid,
    module_name: &'a str,
    module_version: &'a str,
    module_sha256: &'a str,
    queue: &'a str,
    priority: i16,
    input: &'a str,
    run_after: i64,
    max_attempts: i32,
    fuel: Option<i64>,
    memory_bytes: Option<i64>,
    timeout_ms: Option<i64>,
    unique_key: Option<&'a str>,
    parent_id: Option<Uuid>,
}

impl<'a> TaskRow<'a> {
    /// `task` must have passed `validate_new_task`.
    pub(super) fn new(task: &'a NewTask, now: i64) -> Result<Self> {
        Ok(TaskRow {
            id: task.id,
            module_name: &task.module_name,
            module_version: &task.module_version,
            module_sha256: &task.module_sha256,
            queue: &task.queue,
            priority: task.priority,
            input: &task.input,
            run_after: task.run_after.map_or(now, us),
            max_attempts: to_i32(task.max_attempts, "max_attempts")?,
            fuel: limit_to_i64(task.limits.fuel, "fuel")?,
            memory_bytes: limit_to_i64(task.limits.memory_bytes, "memory_bytes")?,
            timeout_ms: limit_to_i64(task.limits.timeout_ms, "timeout_ms")?,
            unique_key: task.unique_key.as_deref(),
            parent_id: task.parent_id,
        })
    }
}

/// ?1 worker, ?2 lease expiry, ?3 now, ?4 limit, ?5 queue(s). The `{queues}`
/// placeholder is one of three fixed clauses, so there are three statements.
pub(super) const CLAIM_TEMPLATE: &str = "UPDATE tasks \
     SET state = 'leased', attempt = attempt + 1, lease_epoch = lease_epoch + 1, \
         lease_owner = ?1, lease_expires_at = ?2, started_at = NULL, updated_at = ?3 \
     WHERE seq IN ( \
         SELECT seq FROM tasks \
         WHERE state = 'queued' AND run_after <= ?3 {queues} \
         ORDER BY priority DESC, run_after, seq \
         LIMIT ?4) \
     RETURNING seq, id, module_name, module_version, module_sha256, queue, priority, input, \
         run_after, attempt, lease_epoch, max_attempts, free_runs, fuel, memory_bytes, \
         timeout_ms, enqueued_at, lease_expires_at, cancel_requested";

pub(super) const OPEN_ATTEMPTS: &str = "INSERT INTO attempts \
         (task_id, attempt, lease_epoch, worker_id, started_at) \
     SELECT id, attempt, lease_epoch, ?1, ?2 FROM tasks \
     WHERE seq IN (SELECT value FROM json_each(?3))";

/// ?1 JSON array of `{id, epoch, at}`, ?2 now, ?3 the worker: `leased` →
/// `running` for the named leases that are still this worker's. (SQLite's
/// RETURNING cannot name the FROM table's columns.)
pub(super) const MARK_STARTED: &str = "UPDATE tasks SET state = 'running', started_at = s.at, \
         updated_at = ?2 \
     FROM (SELECT value ->> 'id' AS id, value ->> 'epoch' AS epoch, value ->> 'at' AS at \
           FROM json_each(?1)) AS s \
     WHERE tasks.id = s.id AND +tasks.state = 'leased' AND +tasks.lease_owner = ?3 \
       AND tasks.lease_epoch = s.epoch \
     RETURNING tasks.id, tasks.lease_epoch, tasks.started_at";

/// ?1 JSON array of `{id, epoch, at}` (the applied starts).
pub(super) const START_ATTEMPTS: &str = "UPDATE attempts SET started_at = s.at \
     FROM (SELECT value ->> 'id' AS id, value ->> 'epoch' AS epoch, value ->> 'at' AS at \
           FROM json_each(?1)) AS s \
     WHERE attempts.task_id = s.id AND attempts.lease_epoch = s.epoch";

/// The whole completion batch in one statement: ?1 is a JSON array of
/// [`FinishRow`]s, ?2 now, ?3 the worker. The unary `+` keeps the planner from
/// scanning all running rows per batch entry: it must drive the join from the
/// batch and look tasks up by id.
pub(super) const FINISH_TASKS: &str = "UPDATE tasks SET \
         state = CASE WHEN c.target = 'queued' AND tasks.cancel_requested THEN 'cancelled' \
                      ELSE c.target END, \
         result = c.result, \
         error_kind = CASE WHEN c.set_error THEN c.error_kind ELSE tasks.error_kind END, \
         error_message = CASE WHEN c.set_error THEN c.error_message \
                              ELSE tasks.error_message END, \
         error_logs = CASE WHEN c.set_error THEN c.error_logs ELSE tasks.error_logs END, \
         run_after = CASE WHEN c.target = 'queued' THEN c.run_after ELSE tasks.run_after END, \
         free_runs = tasks.free_runs + CASE WHEN c.free_run THEN 1 ELSE 0 END, \
         started_at = coalesce(tasks.started_at, c.started_at), \
         lease_owner = NULL, lease_expires_at = NULL, \
         finished_at = CASE WHEN c.target = 'queued' AND NOT tasks.cancel_requested THEN NULL \
                            ELSE ?2 END, \
         updated_at = ?2 \
     FROM (SELECT value ->> 'id' AS id, value ->> 'epoch' AS epoch, \
               value ->> 'target' AS target, value ->> 'result' AS result, \
               value ->> 'set_error' AS set_error, value ->> 'error_kind' AS error_kind, \
               value ->> 'error_message' AS error_message, \
               value ->> 'error_logs' AS error_logs, value ->> 'run_after' AS run_after, \
               value ->> 'free_run' AS free_run, value ->> 'started_at' AS started_at \
           FROM json_each(?1)) AS c \
     WHERE tasks.id = c.id AND +tasks.state IN ('leased', 'running') \
       AND +tasks.lease_owner = ?3 AND tasks.lease_epoch = c.epoch \
     RETURNING tasks.id, tasks.state, tasks.queue, tasks.run_after";

/// Closes the attempt rows of the applied part of a batch (?1, JSON), ?2 now.
pub(super) const CLOSE_ATTEMPTS: &str = "UPDATE attempts SET finished_at = ?2, outcome = c.outcome, \
         error_message = c.error_message, logs = c.logs, fuel_used = c.fuel_used, \
         peak_memory = c.peak_memory, duration_ms = c.duration_ms, \
         started_at = coalesce(c.started_at, attempts.started_at) \
     FROM (SELECT value ->> 'id' AS id, value ->> 'epoch' AS epoch, \
               value ->> 'outcome' AS outcome, value ->> 'error_message' AS error_message, \
               value ->> 'logs' AS logs, value ->> 'fuel_used' AS fuel_used, \
               value ->> 'peak_memory' AS peak_memory, value ->> 'duration_ms' AS duration_ms, \
               value ->> 'started_at' AS started_at \
           FROM json_each(?1)) AS c \
     WHERE attempts.task_id = c.id AND attempts.lease_epoch = c.epoch \
       AND attempts.finished_at IS NULL";

/// One completion as a JSON object for `FINISH_TASKS` / `CLOSE_ATTEMPTS`:
/// a batch travels as one bound JSON array instead of two statements per
/// task, which is where the time went (each statement is a round trip to
/// the connection's worker thread).
#[derive(serde::Serialize)]
pub(super) struct FinishRow<'a> {
    pub(super) id: Uuid,
    epoch: i64,
    target: &'static str,
    result: Option<&'a str>,
    set_error: bool,
    error_kind: Option<&'a str>,
    error_message: Option<&'a str>,
    error_logs: Option<&'a str>,
    run_after: i64,
    free_run: bool,
    started_at: Option<i64>,
    outcome: &'a str,
    logs: Option<&'a str>,
    fuel_used: Option<i64>,
    peak_memory: Option<i64>,
    duration_ms: i64,
}

impl<'a> FinishRow<'a> {
    pub(super) fn new(plan: &'a FinishPlan<'a>, now: i64) -> Self {
        FinishRow {
            id: plan.task_id,
            epoch: plan.epoch,
            target: plan.target.as_str(),
            result: plan.result,
            set_error: plan.set_error,
            error_kind: plan.error_kind,
            error_message: plan.error_message.as_deref(),
            error_logs: plan.error_logs.as_deref(),
            run_after: plan.run_after.map_or(now, us),
            free_run: plan.free_run,
            started_at: plan.started_at.map(us),
            outcome: plan.outcome,
            logs: plan.logs.as_deref(),
            fuel_used: plan.fuel_used,
            peak_memory: plan.peak_memory,
            duration_ms: plan.duration_ms,
        }
    }
}

/// One start for `MARK_STARTED` / `START_ATTEMPTS`.
#[derive(serde::Serialize)]
pub(super) struct StartRow {
    pub(super) id: Uuid,
    pub(super) epoch: i64,
    pub(super) at: i64,
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// ?1 target, ?2 run_after, ?3 now, ?4 id, ?5 attempt.
pub(super) const EXPIRE_TASK: &str = "UPDATE tasks SET \
         state = CASE WHEN ?1 = 'queued' AND cancel_requested THEN 'cancelled' ELSE ?1 END, \
         run_after = CASE WHEN ?1 = 'queued' THEN ?2 ELSE run_after END, \
         result = NULL, \
         error_kind = 'lease-expired', \
         error_message = 'lease expired (worker ' || lease_owner || ' stopped heartbeating)', \
         error_logs = NULL, \
         lease_owner = NULL, lease_expires_at = NULL, \
         finished_at = CASE WHEN ?1 = 'queued' AND NOT cancel_requested THEN NULL ELSE ?3 END, \
         updated_at = ?3 \
     WHERE id = ?4 AND state IN ('leased', 'running') AND lease_epoch = ?5 \
       AND lease_expires_at < ?3 \
     RETURNING state, queue, run_after, error_message";

pub(super) const CLOSE_EXPIRED_ATTEMPT: &str = "UPDATE attempts SET finished_at = ?1, \
         outcome = 'lease-expired', error_message = ?2, duration_ms = (?1 - started_at) / 1000 \
     WHERE task_id = ?3 AND lease_epoch = ?4 AND finished_at IS NULL";

pub(super) const REQUEST_CANCEL: &str = "UPDATE tasks SET \
         state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END, \
         cancel_requested = CASE WHEN state IN ('leased', 'running') THEN 1 \
                                 ELSE cancel_requested END, \
         finished_at = CASE WHEN state = 'queued' THEN ?1 ELSE finished_at END, \
         error_kind = CASE WHEN state = 'queued' THEN 'cancelled' ELSE error_kind END, \
         error_message = CASE WHEN state = 'queued' THEN 'cancelled while queued' \
                              ELSE error_message END, \
         updated_at = ?1 \
     WHERE id = ?2 AND state IN ('queued', 'leased', 'running') \
     RETURNING state";

pub(super) const RETRY_TASK: &str = concat!(
    "UPDATE tasks SET state = 'queued', run_after = ?1, result = NULL, error_kind = NULL, \
         error_message = NULL, error_logs = NULL, finished_at = NULL, cancel_requested = 0, \
         progress_percent = NULL, progress_message = NULL, \
         max_attempts = max(max_attempts, attempt - free_runs + 1), updated_at = ?1 \
     WHERE id = ?2 AND state IN ('failed', 'cancelled') \
     RETURNING ",
    task_columns!()
);

//! Row decoding.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::store::shared::*;
use crate::store::{Result, model::*};

/// An `integer` column that may be NULL, never negative.
pub(super) fn int4_opt(row: &PgRow, column: &str) -> Result<Option<u32>> {
    row.try_get::<Option<i32>, _>(column)?
        .map(|v| to_u32(v.into(), column))
        .transpose()
}

/// An `integer` column holding a count that is never negative.
pub(super) fn int4(row: &PgRow, column: &str) -> Result<u32> {
    to_u32(row.try_get::<i32, _>(column)?.into(), column)
}

pub(super) fn task_from_row(row: &PgRow) -> Result<TaskRecord> {
    Ok(TaskRecord {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        module_name: row.try_get("module_name")?,
        module_version: row.try_get("module_version")?,
        module_sha256: row.try_get("module_sha256")?,
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        input: row.try_get("input")?,
        state: parse_state(row.try_get("state")?)?,
        run_after: row.try_get("run_after")?,
        attempt: int4(row, "attempt")?,
        max_attempts: int4(row, "max_attempts")?,
        free_runs: int4(row, "free_runs")?,
        limits: limits_from_row(row)?,
        unique_key: row.try_get("unique_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        result: row.try_get("result")?,
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        error_logs: row.try_get("error_logs")?,
        progress_percent: parse_progress(
            row.try_get::<Option<i16>, _>("progress_percent")?
                .map(i64::from),
        )?,
        progress_message: row.try_get("progress_message")?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        parent_id: row.try_get("parent_id")?,
        ray_submission_id: row.try_get("ray_submission_id")?,
        updated_at: row.try_get("updated_at")?,
        spawn_seq: int4_opt(row, "spawn_seq")?,
        depth: int4(row, "depth")?,
        children: int4(row, "children")?,
        waiting_on: row.try_get::<i32, _>("waiting_on")?.into(),
    })
}

pub(super) fn summary_from_row(row: &PgRow) -> Result<TaskSummary> {
    Ok(TaskSummary {
        id: row.try_get("id")?,
        seq: row.try_get("seq")?,
        module_name: row.try_get("module_name")?,
        module_version: row.try_get("module_version")?,
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        state: parse_state(row.try_get("state")?)?,
        run_after: row.try_get("run_after")?,
        attempt: int4(row, "attempt")?,
        max_attempts: int4(row, "max_attempts")?,
        free_runs: int4(row, "free_runs")?,
        lease_owner: row.try_get("lease_owner")?,
        cancel_requested: row.try_get("cancel_requested")?,
        error_kind: row.try_get("error_kind")?,
        error_preview: preview(row.try_get("error_preview")?),
        result_preview: preview(row.try_get("result_preview")?),
        progress_percent: parse_progress(
            row.try_get::<Option<i16>, _>("progress_percent")?
                .map(i64::from),
        )?,
        enqueued_at: row.try_get("enqueued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        parent_id: row.try_get("parent_id")?,
        ray_submission_id: row.try_get("ray_submission_id")?,
        spawn_seq: int4_opt(row, "spawn_seq")?,
        children: int4(row, "children")?,
    })
}

pub(super) fn limits_from_row(row: &PgRow) -> Result<TaskLimits> {
    Ok(TaskLimits {
        fuel: fuel_from_db(row.try_get("fuel")?)?,
        memory_bytes: from_i64_opt(row.try_get("memory_bytes")?, "memory_bytes")?,
        timeout_ms: from_i64_opt(row.try_get("timeout_ms")?, "timeout_ms")?,
    })
}

pub(super) fn module_from_row(row: &PgRow, created: bool) -> Result<ModuleRecord> {
    Ok(ModuleRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        sha256: row.try_get("sha256")?,
        size: from_i64(row.try_get("size")?, "module size")?,
        created_at: row.try_get("created_at")?,
        created,
    })
}

pub(super) fn attempt_from_row(row: &PgRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        task_id: row.try_get("task_id")?,
        attempt: int4(row, "attempt")?,
        lease_epoch: from_i64_opt(row.try_get("lease_epoch")?, "lease_epoch")?,
        worker_id: row.try_get("worker_id")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        outcome: parse_outcome(row.try_get("outcome")?)?,
        error_message: row.try_get("error_message")?,
        logs: row.try_get("logs")?,
        fuel_used: from_i64_opt(row.try_get("fuel_used")?, "fuel_used")?,
        peak_memory: from_i64_opt(row.try_get("peak_memory")?, "peak_memory")?,
        duration_ms: from_i64_opt(row.try_get("duration_ms")?, "duration_ms")?,
        ray_submission_id: row.try_get("ray_submission_id")?,
        ray_node_id: row.try_get("ray_node_id")?,
    })
}

pub(super) fn worker_from_row(row: &PgRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        pid: to_u32(row.try_get("pid")?, "pid")?,
        mode: row.try_get("mode")?,
        queues: QueueSelector::parse(row.try_get("queues")?),
        concurrency: int4(row, "concurrency")?,
        started_at: row.try_get("started_at")?,
        last_heartbeat_at: row.try_get("last_heartbeat_at")?,
        stopped_at: row.try_get("stopped_at")?,
        running_tasks: from_i64(row.try_get("running_tasks")?, "running task count")?,
    })
}

/// The leases named by rows with `id` and `epoch` columns.
pub(super) fn leases_from_rows(rows: &[PgRow]) -> Result<std::collections::HashSet<Lease>> {
    rows.iter()
        .map(|row| {
            Ok(Lease {
                task_id: row.try_get("id")?,
                epoch: from_i64(row.try_get("epoch")?, "epoch")?,
            })
        })
        .collect()
}

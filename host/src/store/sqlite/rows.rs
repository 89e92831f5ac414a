//! Value conversion and row decoding. SQLite stores times as INTEGER unix
//! microseconds and ids as hyphenated text.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::store::shared::*;
use crate::store::{Result, StoreError, model::*};

pub(super) fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn ts(v: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| StoreError::corrupt(format!("timestamp {v} µs out of range")))
}

pub(super) fn ts_opt(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(ts).transpose()
}

pub(super) fn uuid(s: &str) -> Result<Uuid> {
    Uuid::parse_str(s).map_err(|_| StoreError::corrupt(format!("malformed task id {s:?}")))
}

pub(super) fn uuid_opt(s: Option<String>) -> Result<Option<Uuid>> {
    s.as_deref().map(uuid).transpose()
}

pub(super) fn u32_opt(v: Option<i64>, what: &str) -> Result<Option<u32>> {
    v.map(|v| to_u32(v, what)).transpose()
}

pub(super) fn task_from_row(row: &SqliteRow) -> Result<TaskRecord> {
    Ok(TaskRecord {
        id: uuid(row.try_get("id")?)?,
        seq: row.try_get("seq")?,
        module_name: row.try_get("module_name")?,
        module_version: row.try_get("module_version")?,
        module_sha256: row.try_get("module_sha256")?,
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        input: row.try_get("input")?,
        state: parse_state(row.try_get("state")?)?,
        run_after: ts(row.try_get("run_after")?)?,
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
        free_runs: to_u32(row.try_get("free_runs")?, "free_runs")?,
        limits: limits_from_row(row)?,
        unique_key: row.try_get("unique_key")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_epoch: from_i64(row.try_get("lease_epoch")?, "lease_epoch")?,
        lease_expires_at: ts_opt(row.try_get("lease_expires_at")?)?,
        cancel_requested: row.try_get("cancel_requested")?,
        result: row.try_get("result")?,
        error_kind: row.try_get("error_kind")?,
        error_message: row.try_get("error_message")?,
        error_logs: row.try_get("error_logs")?,
        progress_percent: parse_progress(row.try_get("progress_percent")?)?,
        progress_message: row.try_get("progress_message")?,
        enqueued_at: ts(row.try_get("enqueued_at")?)?,
        started_at: ts_opt(row.try_get("started_at")?)?,
        finished_at: ts_opt(row.try_get("finished_at")?)?,
        parent_id: uuid_opt(row.try_get("parent_id")?)?,
        ray_submission_id: row.try_get("ray_submission_id")?,
        updated_at: ts(row.try_get("updated_at")?)?,
        spawn_seq: u32_opt(row.try_get("spawn_seq")?, "spawn_seq")?,
        depth: to_u32(row.try_get("depth")?, "depth")?,
        children: to_u32(row.try_get("children")?, "children")?,
        waiting_on: row.try_get("waiting_on")?,
    })
}

pub(super) fn summary_from_row(row: &SqliteRow) -> Result<TaskSummary> {
    Ok(TaskSummary {
        id: uuid(row.try_get("id")?)?,
        seq: row.try_get("seq")?,
        module_name: row.try_get("module_name")?,
        module_version: row.try_get("module_version")?,
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        state: parse_state(row.try_get("state")?)?,
        run_after: ts(row.try_get("run_after")?)?,
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        max_attempts: to_u32(row.try_get("max_attempts")?, "max_attempts")?,
        free_runs: to_u32(row.try_get("free_runs")?, "free_runs")?,
        lease_owner: row.try_get("lease_owner")?,
        cancel_requested: row.try_get("cancel_requested")?,
        error_kind: row.try_get("error_kind")?,
        error_preview: preview(row.try_get("error_preview")?),
        result_preview: preview(row.try_get("result_preview")?),
        progress_percent: parse_progress(row.try_get("progress_percent")?)?,
        enqueued_at: ts(row.try_get("enqueued_at")?)?,
        started_at: ts_opt(row.try_get("started_at")?)?,
        finished_at: ts_opt(row.try_get("finished_at")?)?,
        parent_id: uuid_opt(row.try_get("parent_id")?)?,
        ray_submission_id: row.try_get("ray_submission_id")?,
        spawn_seq: u32_opt(row.try_get("spawn_seq")?, "spawn_seq")?,
        children: to_u32(row.try_get("children")?, "children")?,
    })
}

pub(super) fn limits_from_row(row: &SqliteRow) -> Result<TaskLimits> {
    Ok(TaskLimits {
        fuel: fuel_from_db(row.try_get("fuel")?)?,
        memory_bytes: from_i64_opt(row.try_get("memory_bytes")?, "memory_bytes")?,
        timeout_ms: from_i64_opt(row.try_get("timeout_ms")?, "timeout_ms")?,
    })
}

pub(super) fn module_from_row(row: &SqliteRow, created: bool) -> Result<ModuleRecord> {
    Ok(ModuleRecord {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        sha256: row.try_get("sha256")?,
        size: from_i64(row.try_get("size")?, "module size")?,
        created_at: ts(row.try_get("created_at")?)?,
        created,
    })
}

pub(super) fn attempt_from_row(row: &SqliteRow) -> Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: row.try_get("id")?,
        task_id: uuid(row.try_get("task_id")?)?,
        attempt: to_u32(row.try_get("attempt")?, "attempt")?,
        lease_epoch: from_i64_opt(row.try_get("lease_epoch")?, "lease_epoch")?,
        worker_id: row.try_get("worker_id")?,
        started_at: ts(row.try_get("started_at")?)?,
        finished_at: ts_opt(row.try_get("finished_at")?)?,
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

pub(super) fn worker_from_row(row: &SqliteRow) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: row.try_get("id")?,
        hostname: row.try_get("hostname")?,
        pid: to_u32(row.try_get("pid")?, "pid")?,
        mode: row.try_get("mode")?,
        queues: QueueSelector::parse(row.try_get("queues")?),
        concurrency: to_u32(row.try_get("concurrency")?, "concurrency")?,
        started_at: ts(row.try_get("started_at")?)?,
        last_heartbeat_at: ts(row.try_get("last_heartbeat_at")?)?,
        stopped_at: ts_opt(row.try_get("stopped_at")?)?,
        running_tasks: from_i64(row.try_get("running_tasks")?, "running task count")?,
    })
}

//! SQLite statements used more than once or too long to read inline.

use uuid::Uuid;

use super::rows::us;
use crate::store::Result;
use crate::store::model::NewTask;
use crate::store::shared::{FinishPlan, fuel_to_db, limit_to_i64, to_i32};

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

/// Declares a row that travels to SQLite inside a bound JSON array, as a
/// JSON array itself: statements read its fields by position
/// (`value ->> 3`), which SQLite does without the key search of an object
/// (measured: a quarter of a completion's cost). `FIELDS` names the
/// positions, and a test holds every statement's `value ->> N AS name` to
/// them.
macro_rules! json_row {
    ($(#[$m:meta])* $vis:vis struct $name:ident $(<$lt:lifetime>)? {
        $($fvis:vis $f:ident : $t:ty),* $(,)?
    }) => {
        $(#[$m])*
        $vis struct $name $(<$lt>)? { $($fvis $f: $t),* }

        impl $(<$lt>)? $name $(<$lt>)? {
            pub(super) const FIELDS: &'static [&'static str] = &[$(stringify!($f)),*];
        }

        impl $(<$lt>)? serde::Serialize for $name $(<$lt>)? {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeTuple;
                let mut row = s.serialize_tuple(Self::FIELDS.len())?;
                $(row.serialize_element(&self.$f)?;)*
                row.end()
            }
        }
    };
}

/// A whole batch of tasks in one statement: ?1 is a JSON array of
/// [`TaskRow`]s (inserted in array order, so `seq` follows it), ?2 now;
/// `$conflict` is what a clash with an existing row does. `WHERE true`
/// resolves SQLite's parsing ambiguity between a join's ON and the upsert's
/// ON CONFLICT.
macro_rules! insert_tasks {
    ($conflict:expr) => {
        concat!(
            "INSERT INTO tasks (id, module_name, module_version, \
                 module_sha256, queue, priority, input, state, run_after, max_attempts, fuel, \
                 memory_bytes, timeout_ms, unique_key, parent_id, spawn_seq, spawn_digest, \
                 depth, awaited, enqueued_at, updated_at) \
             SELECT value ->> 0 AS id, value ->> 1 AS module_name, \
                 value ->> 2 AS module_version, value ->> 3 AS module_sha256, \
                 value ->> 4 AS queue, value ->> 5 AS priority, value ->> 6 AS input, \
                 'queued', value ->> 7 AS run_after, value ->> 8 AS max_attempts, \
                 value ->> 9 AS fuel, value ->> 10 AS memory_bytes, \
                 value ->> 11 AS timeout_ms, value ->> 12 AS unique_key, \
                 value ->> 13 AS parent_id, value ->> 14 AS spawn_seq, \
                 value ->> 15 AS spawn_digest, value ->> 16 AS depth, \
                 value ->> 17 AS awaited, ?2, ?2 \
             FROM json_each(?1) WHERE true ORDER BY key ",
            $conflict,
            " RETURNING id"
        )
    };
}

pub(super) const INSERT_TASKS: &str = insert_tasks!(concat!(
    "ON CONFLICT (unique_key) WHERE ",
    unique_key_scope!(),
    " DO NOTHING"
));

/// Children stored with their parent's completion: one per (parent, seq),
/// so a child that an earlier run stored is skipped.
pub(super) const INSERT_CHILDREN: &str = insert_tasks!("ON CONFLICT DO NOTHING");

/// ?1 parent, ?2 JSON array of spawn numbers: the children a wait names
/// are awaited. (Children spawned by the run that waits for them are
/// stored awaited already, and are not written again.)
pub(super) const MARK_AWAITED: &str = "UPDATE tasks SET awaited = 1 \
     WHERE parent_id = ?1 AND spawn_seq IN (SELECT value FROM json_each(?2)) \
       AND NOT awaited";

/// ?1 parent: its awaited children that are unfinished.
pub(super) const COUNT_AWAITED: &str = concat!(
    "SELECT count(*) FROM tasks WHERE parent_id = ?1 AND awaited AND state NOT IN ",
    terminal_states!()
);

json_row! {
/// One task for `INSERT_TASKS`.
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
    spawn_seq: Option<u32>,
    spawn_digest: Option<&'a str>,
    depth: u32,
    awaited: bool,
}
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
            fuel: fuel_to_db(task.limits.fuel)?,
            memory_bytes: limit_to_i64(task.limits.memory_bytes, "memory_bytes")?,
            timeout_ms: limit_to_i64(task.limits.timeout_ms, "timeout_ms")?,
            unique_key: task.unique_key.as_deref(),
            parent_id: task.parent_id,
            spawn_seq: task.child.as_ref().map(|k| k.seq),
            spawn_digest: task.child.as_ref().map(|k| k.digest.as_str()),
            depth: task.child.as_ref().map_or(0, |k| k.depth),
            awaited: task.child.as_ref().is_some_and(|k| k.awaited),
        })
    }
}

/// ?1 worker, ?2 lease expiry, ?3 now, ?4 limit, ?5 queue(s). The `{queues}`
/// placeholder is one of three fixed clauses, so there are three statements.
pub(super) const CLAIM_TEMPLATE: &str = concat!(
    "UPDATE tasks SET ",
    claim_set!("?1", "?2", "?3"),
    " WHERE seq IN ( \
         SELECT seq FROM tasks \
         WHERE state = 'queued' AND run_after <= ?3 {queues} \
         ORDER BY priority DESC, run_after, seq \
         LIMIT ?4) \
     RETURNING seq, id, module_name, module_version, module_sha256, queue, priority, input, \
         run_after, attempt, lease_epoch, max_attempts, free_runs, fuel, memory_bytes, \
         timeout_ms, enqueued_at, lease_expires_at, cancel_requested, depth, children"
);

pub(super) const OPEN_ATTEMPTS: &str = "INSERT INTO attempts \
         (task_id, attempt, lease_epoch, worker_id, started_at) \
     SELECT id, attempt, lease_epoch, ?1, ?2 FROM tasks \
     WHERE seq IN (SELECT value FROM json_each(?3))";

/// ?1 JSON array of [`StartRow`]s, ?2 now, ?3 the worker: `leased` →
/// `running` for the named leases that are still this worker's. (SQLite's
/// RETURNING cannot name the FROM table's columns.)
pub(super) const MARK_STARTED: &str = concat!(
    "UPDATE tasks SET ",
    start_set!("s.at", "?2"),
    " FROM (SELECT value ->> 0 AS id, value ->> 1 AS epoch, value ->> 2 AS at \
           FROM json_each(?1)) AS s \
     WHERE tasks.id = s.id AND tasks.state = 'leased' AND ",
    // The unary `+` keeps the planner from scanning every live row per
    // batch entry: it must drive the join from the batch, by id.
    fenced!("+tasks", "?3", "s.epoch"),
    " RETURNING tasks.id, tasks.lease_epoch, tasks.started_at"
);

/// ?1 JSON array of [`StartRow`]s (the applied starts).
pub(super) const START_ATTEMPTS: &str = "UPDATE attempts SET started_at = s.at \
     FROM (SELECT value ->> 0 AS id, value ->> 1 AS epoch, value ->> 2 AS at \
           FROM json_each(?1)) AS s \
     WHERE attempts.task_id = s.id AND attempts.lease_epoch = s.epoch";

/// ?1 JSON array of [`StartRow`]s, ?2 the worker: the ids of those leases
/// that are still the worker's.
pub(super) const HELD_LEASES: &str = concat!(
    "SELECT tasks.id FROM tasks \
     JOIN (SELECT value ->> 0 AS id, value ->> 1 AS epoch \
           FROM json_each(?1)) AS l ON tasks.id = l.id \
     WHERE ",
    fenced!("tasks", "?2", "l.epoch")
);

/// ?1 the new expiry, ?2 the worker, ?3 JSON array of [`StartRow`]s: extends
/// those leases that are still the worker's.
pub(super) const EXTEND_LEASES: &str = concat!(
    "UPDATE tasks SET lease_expires_at = ?1 \
     FROM (SELECT value ->> 0 AS id, value ->> 1 AS epoch \
           FROM json_each(?3)) AS l \
     WHERE tasks.id = l.id AND tasks.lease_epoch = l.epoch \
       AND +tasks.state IN ",
    live_states!(),
    " AND +tasks.lease_owner = ?2 \
     RETURNING tasks.id, tasks.cancel_requested"
);

/// The whole completion batch in one statement: ?1 is a JSON array of
/// [`FinishRow`]s, ?2 now, ?3 the worker. The unary `+` keeps the planner from
/// scanning all running rows per batch entry: it must drive the join from the
/// batch and look tasks up by id.
pub(super) const FINISH_TASKS: &str = concat!(
    "UPDATE tasks SET ",
    finish_set!("tasks", "c", "?2"),
    " FROM (SELECT value ->> 0 AS id, value ->> 1 AS epoch, value ->> 2 AS target, \
               value ->> 3 AS result, value ->> 4 AS set_error, \
               value ->> 5 AS error_kind, value ->> 6 AS error_message, \
               value ->> 7 AS error_logs, value ->> 8 AS run_after, \
               value ->> 9 AS free_run, value ->> 10 AS started_at, \
               value ->> 16 AS waiting_on, value ->> 17 AS spawned \
           FROM json_each(?1)) AS c \
     WHERE tasks.id = c.id AND ",
    fenced!("+tasks", "?3", "c.epoch"),
    " RETURNING tasks.id, tasks.state, tasks.queue, tasks.run_after, tasks.parent_id"
);

/// Closes the attempt rows of the applied part of a batch (?1, JSON), ?2 now.
pub(super) const CLOSE_ATTEMPTS: &str = concat!(
    "UPDATE attempts SET ",
    close_attempt_set!(
        "attempts",
        "c",
        "(SELECT t.started_at FROM tasks t WHERE t.id = c.id)",
        "?2"
    ),
    " FROM (SELECT value ->> 0 AS id, value ->> 1 AS epoch, value ->> 11 AS outcome, \
               value ->> 6 AS error_message, value ->> 12 AS logs, \
               value ->> 13 AS fuel_used, value ->> 14 AS peak_memory, \
               value ->> 15 AS duration_ms, value ->> 10 AS started_at \
           FROM json_each(?1)) AS c \
     WHERE attempts.task_id = c.id AND attempts.lease_epoch = c.epoch \
       AND attempts.finished_at IS NULL"
);

json_row! {
/// One completion for `FINISH_TASKS` / `CLOSE_ATTEMPTS`:
/// a batch travels as one bound JSON array instead of two statements per
/// task, which is where the time went (each statement is a round trip to
/// the connection's worker thread).
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
    waiting_on: i64,
    spawned: bool,
}
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
            waiting_on: plan.waiting_on,
            spawned: plan.spawned,
        }
    }
}

json_row! {
/// One start for `MARK_STARTED` / `START_ATTEMPTS` (and a lease by id
/// and epoch elsewhere).
pub(super) struct StartRow {
    pub(super) id: Uuid,
    pub(super) epoch: i64,
    pub(super) at: i64,
}
}

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// ?1 target, ?2 run_after, ?3 now, ?4 id, ?5 epoch.
pub(super) const EXPIRE_TASK: &str = concat!(
    "UPDATE tasks SET ",
    expire_set!("?1", "?2", "?3"),
    " WHERE id = ?4 AND ",
    expirable!("?5", "?3"),
    " RETURNING state, queue, run_after, error_message"
);

pub(super) const CLOSE_EXPIRED_ATTEMPT: &str = "UPDATE attempts SET finished_at = ?1, \
         outcome = 'lease-expired', error_message = ?2, duration_ms = (?1 - started_at) / 1000 \
     WHERE task_id = ?3 AND lease_epoch = ?4 AND finished_at IS NULL";

/// ?1 now, ?2 id: cancels the task and its unfinished descendants; returns
/// each changed row's id and new state.
pub(super) const REQUEST_CANCEL: &str = concat!(
    "UPDATE tasks SET ",
    cancel_set!("?1", "1"),
    " WHERE id IN ( \
         WITH RECURSIVE tree(id) AS ( \
             SELECT ?2 \
             UNION ALL \
             SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id) \
         SELECT id FROM tree) \
       AND state IN ",
    unfinished_states!(),
    " RETURNING id, state"
);

/// ?1 parent: its children as its next run needs them, as one JSON array
/// of `[seq, id, digest, state, result, error_kind, error_message]`: a
/// parent resumed over thousands of children reads one row instead of one
/// per child (each row crosses a thread in sqlx's SQLite driver). The
/// caller orders by seq.
pub(super) const CHILD_LEDGER: &str = "SELECT json_group_array(json_array(spawn_seq, id, \
         spawn_digest, state, CASE WHEN state = 'succeeded' THEN result END, \
         error_kind, error_message)) AS ledger \
     FROM tasks WHERE parent_id = ?1 AND spawn_seq IS NOT NULL";

/// ?1 id: the number of its descendants and what their runs used.
pub(super) const FAMILY_USAGE: &str = "WITH RECURSIVE tree(id) AS ( \
         SELECT id FROM tasks WHERE parent_id = ?1 \
         UNION ALL \
         SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id \
     ) \
     SELECT (SELECT count(*) FROM tree) AS descendants, \
         coalesce(sum(a.fuel_used), 0) AS fuel_used, \
         coalesce(sum(a.duration_ms), 0) AS duration_ms \
     FROM attempts a WHERE a.task_id IN (SELECT id FROM tree)";

pub(super) const RETRY_TASK: &str = concat!(
    "UPDATE tasks SET ",
    retry_set!("?1", "0", "max"),
    " WHERE id = ?2 AND state IN ('failed', 'cancelled') \
     RETURNING ",
    task_columns!()
);

// ---- grants ------------------------------------------------------------------

pub(super) const MODULE_EXISTS: &str = "SELECT 1 FROM modules WHERE name = ?1 LIMIT 1";

pub(super) const INSERT_GRANT: &str = "INSERT INTO module_grants \
     (module_name, queue, kind, value, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
     ON CONFLICT DO NOTHING";

pub(super) const COUNT_GRANTS: &str = "SELECT count(*) FROM module_grants WHERE module_name = ?1";

/// `?5`: for a config grant, `KEY=`, which removes the key whatever its
/// value.
pub(super) const DELETE_GRANT: &str = "DELETE FROM module_grants \
     WHERE module_name = ?1 AND queue = ?2 AND kind = ?3 \
       AND (value = ?4 OR (kind = 'config' AND substr(value, 1, length(?5)) = ?5))";

/// The other value of a config key in this scope, which a new one replaces
/// (`?3`: `KEY=`, `?4`: the new `KEY=VALUE`).
pub(super) const DELETE_OTHER_CONFIG_VALUE: &str = "DELETE FROM module_grants \
     WHERE module_name = ?1 AND queue = ?2 AND kind = 'config' \
       AND substr(value, 1, length(?3)) = ?3 AND value <> ?4";

/// `?2` NULL: every scope.
pub(super) const DELETE_GRANTS_OF: &str = "DELETE FROM module_grants \
     WHERE module_name = ?1 AND (?2 IS NULL OR queue = ?2)";

/// Grants of a name none of whose versions is left.
pub(super) const DELETE_ORPHAN_GRANTS: &str = "DELETE FROM module_grants \
     WHERE module_name = ?1 AND NOT EXISTS (SELECT 1 FROM modules WHERE name = ?1)";

/// `?1` NULL: every module.
pub(super) const LIST_GRANTS: &str = "SELECT module_name, queue, kind, value, created_at \
     FROM module_grants WHERE ?1 IS NULL OR module_name = ?1 \
     ORDER BY module_name, queue, kind, value";

// ---- secrets -----------------------------------------------------------------

pub(super) const SECRET_EXISTS: &str = "SELECT 1 FROM secrets WHERE name = ?1";

pub(super) const INSERT_SECRET: &str = "INSERT INTO secrets \
     (name, key_id, nonce, ciphertext, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)";

pub(super) const UPDATE_SECRET: &str = "UPDATE secrets \
     SET key_id = ?2, nonce = ?3, ciphertext = ?4, updated_at = ?5 WHERE name = ?1";

pub(super) const LIST_SECRETS: &str =
    "SELECT name, key_id, created_at, updated_at FROM secrets ORDER BY name";

pub(super) const DELETE_SECRET: &str = "DELETE FROM secrets WHERE name = ?1";

pub(super) const DELETE_SECRET_GRANTS: &str =
    "DELETE FROM module_grants WHERE kind = 'secret' AND value = ?1";

/// `?1`: a JSON array of names.
pub(super) const SEALED_SECRETS: &str = "SELECT name, key_id, nonce, ciphertext FROM secrets \
     WHERE name IN (SELECT value FROM json_each(?1)) ORDER BY name";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `value ->> N AS name` of `sql`, in order.
    fn positions(sql: &str) -> Vec<(usize, &str)> {
        sql.match_indices("value ->> ")
            .map(|(at, m)| {
                let rest = &sql[at + m.len()..];
                let (n, rest) = rest
                    .split_once(" AS ")
                    .expect("each field is named with AS");
                let name = rest
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap();
                (n.parse().expect("fields are read by position"), name)
            })
            .collect()
    }

    #[test]
    fn statements_read_rows_at_their_fields_positions() {
        let uses: [(&str, &[&str]); 8] = [
            (INSERT_TASKS, TaskRow::FIELDS),
            (INSERT_CHILDREN, TaskRow::FIELDS),
            (MARK_STARTED, StartRow::FIELDS),
            (START_ATTEMPTS, StartRow::FIELDS),
            (HELD_LEASES, StartRow::FIELDS),
            (EXTEND_LEASES, StartRow::FIELDS),
            (FINISH_TASKS, FinishRow::FIELDS),
            (CLOSE_ATTEMPTS, FinishRow::FIELDS),
        ];
        for (sql, fields) in uses {
            let read = positions(sql);
            assert!(!read.is_empty(), "{sql}");
            for (n, name) in read {
                assert_eq!(fields.get(n), Some(&name), "position {n} in {sql}");
            }
        }
    }

    #[test]
    fn rows_serialize_as_arrays_in_field_order() {
        let row = StartRow {
            id: Uuid::nil(),
            epoch: 7,
            at: 9,
        };
        assert_eq!(
            to_json(&row),
            r#"["00000000-0000-0000-0000-000000000000",7,9]"#
        );
    }
}

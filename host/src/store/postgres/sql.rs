//! PostgreSQL statements used more than once or too long to read inline.

macro_rules! module_select {
    () => {
        "SELECT m.name, m.version, m.sha256, b.size, m.created_at \
         FROM modules m JOIN module_blobs b ON b.sha256 = m.sha256"
    };
}

/// Blobs that neither a module version nor any task refers to.
pub(super) const GC_BLOBS: &str = "DELETE FROM module_blobs b \
     WHERE NOT EXISTS (SELECT 1 FROM modules m WHERE m.sha256 = b.sha256) \
       AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.module_sha256 = b.sha256)";

/// `now() + micros`, as SQL over a bigint parameter.
macro_rules! plus_micros {
    ($param:literal) => {
        concat!("(now() + ", $param, "::float8 * interval '1 microsecond')")
    };
}

/// An insert of a batch of tasks from column arrays; `$conflict` is what a
/// clash with an existing row does.
macro_rules! insert_tasks {
    ($conflict:expr) => {
        concat!(
            "INSERT INTO tasks (id, module_name, module_version, module_sha256, \
                 queue, priority, input, state, run_after, max_attempts, fuel, memory_bytes, \
                 timeout_ms, unique_key, parent_id, spawn_seq, spawn_digest, depth, awaited) \
             SELECT u.id, u.module_name, u.module_version, u.module_sha256, u.queue, \
                 u.priority, u.input, 'queued', coalesce(u.run_after, now()), u.max_attempts, \
                 u.fuel, u.memory_bytes, u.timeout_ms, u.unique_key, u.parent_id, u.spawn_seq, \
                 u.spawn_digest, u.depth, u.awaited \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], \
                         $6::int2[], $7::text[], $8::timestamptz[], $9::int4[], $10::int8[], \
                         $11::int8[], $12::int8[], $13::text[], $14::uuid[], $15::int4[], \
                         $16::text[], $17::int4[], $18::bool[]) \
                  WITH ORDINALITY AS u(id, module_name, module_version, module_sha256, queue, \
                         priority, input, run_after, max_attempts, fuel, memory_bytes, \
                         timeout_ms, unique_key, parent_id, spawn_seq, spawn_digest, depth, \
                         awaited, ord) \
             ORDER BY u.ord ",
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

/// $1 parent, $2 spawn numbers: the children a wait names are awaited;
/// then the number of the parent's awaited children that are unfinished.
/// Every named child is locked, child first, parent later (by the
/// completion), as the resume trigger locks them: a child ending
/// concurrently then either commits first (and is counted finished) or
/// waits for the parent to be parked (and counts it down). Only the rows
/// not awaited yet are written: children spawned by the run that waits for
/// them are stored awaited, and rewriting a row PostgreSQL cannot update
/// in place (every index gets a new entry) cost about 37 µs a child.
pub(super) const MARK_AWAITED: &str = "WITH named AS ( \
         SELECT id, awaited FROM tasks WHERE parent_id = $1 AND spawn_seq = ANY($2) \
         FOR UPDATE \
     ) \
     UPDATE tasks t SET awaited = true FROM named \
     WHERE t.id = named.id AND NOT named.awaited";

pub(super) const COUNT_AWAITED: &str = concat!(
    "SELECT count(*) FROM tasks WHERE parent_id = $1 AND awaited AND state NOT IN ",
    terminal_states!()
);

/// $1 worker, $2 ids, $3 epochs: the tasks still live under this worker in
/// these epochs.
pub(super) const STILL_HELD: &str = concat!(
    "SELECT t.id FROM tasks t \
     JOIN UNNEST($2::uuid[], $3::int8[]) AS l(task_id, epoch) ON t.id = l.task_id \
     WHERE ",
    fenced!("t", "$1", "l.epoch")
);

/// $1 worker, $2 lease µs, $3 limit, $4 queue(s); `{queues}` is one of three
/// fixed clauses. One statement: pick, lease in a new epoch, and open the
/// attempt rows. `= ANY(ARRAY(…))` rather than a join with `picked`: the
/// planner cannot know that `picked` is small and would hash-join it against
/// a sequential scan of the whole table.
pub(super) const CLAIM_TEMPLATE: &str = concat!(
    "WITH picked AS ( \
         SELECT id FROM tasks \
         WHERE state = 'queued' AND run_after <= now() {queues} \
         ORDER BY priority DESC, run_after, seq \
         LIMIT $3 \
         FOR UPDATE SKIP LOCKED \
     ), claimed AS ( \
         UPDATE tasks t SET ",
    claim_set!("$1", plus_micros!("$2"), "now()"),
    " WHERE t.id = ANY(ARRAY(SELECT id FROM picked)) \
         RETURNING t.seq, t.id, t.module_name, t.module_version, t.module_sha256, t.queue, \
             t.priority, t.input, t.run_after, t.attempt, t.lease_epoch, t.max_attempts, \
             t.free_runs, t.fuel, t.memory_bytes, t.timeout_ms, t.enqueued_at, \
             t.lease_expires_at, t.cancel_requested, t.depth, t.children \
     ), opened AS ( \
         INSERT INTO attempts (task_id, attempt, lease_epoch, worker_id, started_at) \
         SELECT id, attempt, lease_epoch, $1, now() FROM claimed \
     ) \
     SELECT * FROM claimed ORDER BY priority DESC, run_after, seq"
);

/// $1 worker, $2 ids, $3 epochs, $4 start times: `leased` → `running`, on
/// the task and its attempt row. The tasks are found only through the
/// batch's ids (see [`COMPLETE`] for why).
pub(super) const MARK_STARTED: &str = concat!(
    "WITH s AS ( \
         SELECT * FROM UNNEST($2::uuid[], $3::int8[], $4::timestamptz[]) AS s(task_id, epoch, at) \
     ), t AS ( \
         UPDATE tasks t SET ",
    start_set!("s.at", "now()"),
    " FROM s \
         WHERE t.id = s.task_id AND t.state = 'leased' AND ",
    fenced!("t", "$1", "s.epoch"),
    " RETURNING t.id, s.epoch, s.at \
     ), a AS ( \
         UPDATE attempts a SET started_at = t.at \
         FROM t WHERE a.task_id = t.id AND a.lease_epoch = t.epoch \
     ) \
     SELECT id, epoch FROM t"
);

/// One statement (and so one round trip and one commit) for a whole
/// completion batch; see `FinishPlan` for the meaning of the columns.
///
/// The tasks are found only by joining the batch's ids (`t.id =
/// c.task_id`), so that the plan probes the primary key once per row. With
/// a second way to them (`t.id = ANY($2)`, or the lease index that the
/// fencing condition matches), PostgreSQL, estimating a handful of rows on
/// either side, read the tasks first and scanned the whole batch again
/// for each of them, forming each batch row anew every time: 65,280 row
/// pairs for 256 tasks, 37 ms where the probes take 13 (`EXPLAIN ANALYZE`
/// under both plan cache modes), and a third of the server's CPU in a
/// `hello` drain (`perf`).
///
/// $1 is the worker, $18 the task channel. `notified` wakes workers for
/// tasks that are claimable again at once; a plain SELECT CTE only runs when
/// referenced, hence the count.
pub(super) const COMPLETE: &str = concat!(
    "WITH c AS ( \
         SELECT * FROM UNNEST($2::uuid[], $3::int8[], $4::text[], $5::text[], $6::bool[], \
                 $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::bool[], \
                 $12::timestamptz[], $13::text[], $14::text[], $15::int8[], $16::int8[], \
                 $17::int8[], $19::int4[], $20::bool[]) \
             AS c(task_id, epoch, target, result, set_error, error_kind, error_message, \
                 error_logs, run_after, free_run, started_at, outcome, logs, fuel_used, \
                 peak_memory, duration_ms, waiting_on, spawned) \
     ), done AS ( \
         UPDATE tasks t SET ",
    finish_set!("t", "c", "now()"),
    " FROM c \
         WHERE t.id = c.task_id AND ",
    fenced!("t", "$1", "c.epoch"),
    " RETURNING t.id, c.epoch, t.queue, t.state, t.started_at, \
             t.run_after <= now() AS due \
     ), closed AS ( \
         UPDATE attempts a SET ",
    close_attempt_set!("a", "c", "d.started_at", "now()"),
    " FROM c JOIN done d ON d.id = c.task_id AND d.epoch = c.epoch \
         WHERE a.task_id = c.task_id AND a.lease_epoch = c.epoch AND a.finished_at IS NULL \
     ), notified AS ( \
         SELECT pg_notify($18, q.queue) \
         FROM (SELECT DISTINCT queue FROM done WHERE state = 'queued' AND due) AS q \
     ) \
     SELECT id, epoch, (SELECT count(*) FROM notified) AS notified FROM done"
);

/// $1 worker, $2 lease µs, $3 ids, $4 epochs. Extends exactly the named
/// leases that are still this worker's. SKIP LOCKED: a row locked right now
/// is being completed or cancelled, and never waiting keeps heartbeats out
/// of any lock cycle. Such a row is reported `extended = false` while the
/// statement's snapshot still shows it as ours (the worker keeps it; the
/// next heartbeat extends it); a lease in neither part is lost.
pub(super) const HEARTBEAT: &str = concat!(
    "WITH w AS ( \
         UPDATE workers SET last_heartbeat_at = now(), stopped_at = NULL WHERE id = $1 \
     ), l AS ( \
         SELECT * FROM UNNEST($3::uuid[], $4::int8[]) AS l(task_id, epoch) \
     ), t AS ( \
         UPDATE tasks SET lease_expires_at = ",
    plus_micros!("$2"),
    " WHERE id = ANY(ARRAY( \
               SELECT x.id FROM tasks x JOIN l ON x.id = l.task_id \
               WHERE ",
    fenced!("x", "$1", "l.epoch"),
    " FOR UPDATE OF x SKIP LOCKED)) \
           AND state IN ",
    live_states!(),
    " AND lease_owner = $1 \
         RETURNING id, cancel_requested \
     ) \
     SELECT id, cancel_requested, true AS extended FROM t \
     UNION ALL \
     SELECT x.id, false, false FROM tasks x JOIN l ON x.id = l.task_id \
     WHERE ",
    fenced!("x", "$1", "l.epoch"),
    " AND x.id NOT IN (SELECT id FROM t)"
);

/// $1 id, $2 epoch, $3 target, $4 run_after.
pub(super) const EXPIRE: &str = concat!(
    "WITH t AS ( \
         UPDATE tasks SET ",
    expire_set!("$3::text", "$4", "now()"),
    " WHERE id = $1 AND ",
    expirable!("$2", "now()"),
    " RETURNING id, queue, state, error_message, run_after <= now() AS due \
     ), a AS ( \
         UPDATE attempts a SET finished_at = now(), outcome = 'lease-expired', \
             error_message = t.error_message, \
             duration_ms = (extract(epoch FROM now() - a.started_at) * 1000)::bigint \
         FROM t WHERE a.task_id = t.id AND a.lease_epoch = $2 AND a.finished_at IS NULL \
     ) \
     SELECT queue, state, due FROM t"
);

/// $1 id: cancels the task and its unfinished descendants; returns each
/// changed row's id and new state.
pub(super) const REQUEST_CANCEL: &str = concat!(
    "WITH RECURSIVE tree(id) AS ( \
         SELECT $1::uuid \
         UNION ALL \
         SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id \
     ) \
     UPDATE tasks SET ",
    cancel_set!("now()", "true"),
    " WHERE id IN (SELECT id FROM tree) AND state IN ",
    unfinished_states!(),
    " RETURNING id, state"
);

/// $1 parent: its children as its next run needs them, as one row of
/// arrays (NULL when it has none): a parent resumed over thousands of
/// children pays one row's round trip instead of one per child. Unsorted:
/// the runtime keys the children by seq anyway, and sorting 1,000 rows
/// (a bitmap scan returns them in heap order) cost more than scanning them.
pub(super) const CHILD_LEDGER: &str = "SELECT array_agg(spawn_seq) AS seqs, array_agg(id) AS ids, \
         array_agg(spawn_digest) AS digests, array_agg(state) AS states, \
         array_agg(CASE WHEN state = 'succeeded' THEN result END) AS results, \
         array_agg(error_kind) AS error_kinds, array_agg(error_message) AS error_messages \
     FROM tasks WHERE parent_id = $1 AND spawn_seq IS NOT NULL";

/// $1 id: the number of its descendants and what their runs used.
pub(super) const FAMILY_USAGE: &str = "WITH RECURSIVE tree(id) AS ( \
         SELECT id FROM tasks WHERE parent_id = $1 \
         UNION ALL \
         SELECT t.id FROM tasks t JOIN tree ON t.parent_id = tree.id \
     ) \
     SELECT (SELECT count(*) FROM tree) AS descendants, \
         coalesce(sum(a.fuel_used), 0)::int8 AS fuel_used, \
         coalesce(sum(a.duration_ms), 0)::int8 AS duration_ms \
     FROM attempts a WHERE a.task_id IN (SELECT id FROM tree)";

pub(super) const RETRY_TASK: &str = concat!(
    "UPDATE tasks SET ",
    retry_set!("now()", "false", "greatest"),
    " WHERE id = $1 AND state IN ('failed', 'cancelled') \
     RETURNING ",
    task_columns!()
);

// ---- grants ------------------------------------------------------------------

pub(super) const MODULE_EXISTS: &str = "SELECT 1 FROM modules WHERE name = $1 LIMIT 1";

/// Serialises grant changes and pushes of one name (the same lock as
/// `push_module`), so the per-name bound holds under concurrent grants.
pub(super) const LOCK_MODULE_NAME: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('wasmq.module:' || $1, 0))";

pub(super) const INSERT_GRANT: &str = "INSERT INTO module_grants \
     (module_name, queue, kind, value) VALUES ($1, $2, $3, $4) \
     ON CONFLICT DO NOTHING";

pub(super) const COUNT_GRANTS: &str = "SELECT count(*) FROM module_grants WHERE module_name = $1";

/// `$5`: for a config grant, `KEY=`, which removes the key whatever its
/// value.
pub(super) const DELETE_GRANT: &str = "DELETE FROM module_grants \
     WHERE module_name = $1 AND queue = $2 AND kind = $3 \
       AND (value = $4 OR (kind = 'config' AND substr(value, 1, length($5)) = $5))";

/// The other value of a config key in this scope, which a new one replaces
/// (`$3`: `KEY=`, `$4`: the new `KEY=VALUE`).
pub(super) const DELETE_OTHER_CONFIG_VALUE: &str = "DELETE FROM module_grants \
     WHERE module_name = $1 AND queue = $2 AND kind = 'config' \
       AND substr(value, 1, length($3)) = $3 AND value <> $4";

/// `$2` NULL: every scope.
pub(super) const DELETE_GRANTS_OF: &str = "DELETE FROM module_grants \
     WHERE module_name = $1 AND ($2::text IS NULL OR queue = $2)";

/// Grants of a name none of whose versions is left.
pub(super) const DELETE_ORPHAN_GRANTS: &str = "DELETE FROM module_grants \
     WHERE module_name = $1 AND NOT EXISTS (SELECT 1 FROM modules WHERE name = $1)";

/// `$1` NULL: every module.
pub(super) const LIST_GRANTS: &str = "SELECT module_name, queue, kind, value, created_at \
     FROM module_grants WHERE $1::text IS NULL OR module_name = $1 \
     ORDER BY module_name, queue, kind, value";

// ---- secrets -----------------------------------------------------------------

pub(super) const SECRET_EXISTS: &str = "SELECT 1 FROM secrets WHERE name = $1";

/// `created`: whether the row is new (`xmax = 0` on an inserted row).
pub(super) const UPSERT_SECRET: &str = "INSERT INTO secrets (name, key_id, nonce, ciphertext) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (name) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, \
     ciphertext = excluded.ciphertext, updated_at = now() \
     RETURNING (xmax = 0) AS created";

pub(super) const LIST_SECRETS: &str =
    "SELECT name, key_id, created_at, updated_at FROM secrets ORDER BY name";

pub(super) const DELETE_SECRET: &str = "DELETE FROM secrets WHERE name = $1";

pub(super) const DELETE_SECRET_GRANTS: &str =
    "DELETE FROM module_grants WHERE kind = 'secret' AND value = $1";

pub(super) const SEALED_SECRETS: &str = "SELECT name, key_id, nonce, ciphertext FROM secrets \
     WHERE name = ANY($1) ORDER BY name";

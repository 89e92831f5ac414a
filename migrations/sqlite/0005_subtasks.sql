-- Issue 13: subtasks. A new state, `waiting` (a parent whose run ended
-- waiting for children it spawned), and the columns that key children
-- under their parent. Keep in step with migrations/postgres/0005_subtasks.sql.
--
-- SQLite cannot change a CHECK constraint in place, so both tables are
-- rebuilt as in 0002 (renamed first so that attempts' foreign key follows
-- tasks to the old copy; the old copies dropped before any index or
-- trigger is created, since their names are global). The task_counts
-- triggers of 0004 go with the old table and are created again.

ALTER TABLE attempts RENAME TO attempts_old;
ALTER TABLE tasks RENAME TO tasks_old;

CREATE TABLE tasks (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    module_name       TEXT    NOT NULL,
    module_version    TEXT    NOT NULL,
    module_sha256     TEXT    NOT NULL REFERENCES module_blobs (sha256),
    queue             TEXT    NOT NULL CHECK (queue <> ''),
    priority          INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    input             TEXT    NOT NULL,
    state             TEXT    NOT NULL
                      CHECK (state IN ('queued', 'waiting', 'leased', 'running', 'succeeded',
                                       'failed', 'cancelled')),
    run_after         INTEGER NOT NULL,
    -- Runs started so far; never rewinds.
    attempt           INTEGER NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      INTEGER NOT NULL CHECK (max_attempts >= 1),
    fuel              INTEGER CHECK (fuel >= 0),
    memory_bytes      INTEGER CHECK (memory_bytes >= 0),
    timeout_ms        INTEGER CHECK (timeout_ms >= 0),
    unique_key        TEXT,
    lease_owner       TEXT,
    lease_expires_at  INTEGER,
    cancel_requested  INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    result            TEXT,
    error_kind        TEXT,
    error_message     TEXT,
    error_logs        TEXT,
    progress_percent  INTEGER CHECK (progress_percent BETWEEN 0 AND 100),
    progress_message  TEXT,
    enqueued_at       INTEGER NOT NULL,
    started_at        INTEGER,
    finished_at       INTEGER,
    parent_id         TEXT,
    ray_submission_id TEXT,
    updated_at        INTEGER NOT NULL,
    -- Incremented by every claim: the fencing token of the lease.
    lease_epoch       INTEGER NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0),
    -- Runs that did not spend an attempt (released, deferred).
    free_runs         INTEGER NOT NULL DEFAULT 0 CHECK (free_runs >= 0),
    -- Subtasks: a child's key under its parent (the number of the spawn
    -- call that made it), the digest of what that call asked for, and its
    -- nesting depth (0 for a task nobody spawned).
    spawn_seq         INTEGER CHECK (spawn_seq >= 0),
    spawn_digest      TEXT,
    depth             INTEGER NOT NULL DEFAULT 0 CHECK (depth >= 0),
    -- The parent waits for this child (a wait named it).
    awaited           INTEGER NOT NULL DEFAULT 0 CHECK (awaited IN (0, 1)),
    -- A parent: children recorded, and completions of awaited children
    -- still needed before a `waiting` parent is queued again.
    children          INTEGER NOT NULL DEFAULT 0 CHECK (children >= 0),
    waiting_on        INTEGER NOT NULL DEFAULT 0,
    -- Exactly the live rows hold a lease ...
    CHECK ((state IN ('leased', 'running')) = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- ... and exactly the finished rows have finished_at.
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
) STRICT;

INSERT INTO tasks (seq, id, module_name, module_version, module_sha256, queue, priority, input,
    state, run_after, attempt, max_attempts, fuel, memory_bytes, timeout_ms, unique_key,
    lease_owner, lease_expires_at, cancel_requested, result, error_kind, error_message,
    error_logs, progress_percent, progress_message, enqueued_at, started_at, finished_at,
    parent_id, ray_submission_id, updated_at, lease_epoch, free_runs)
SELECT seq, id, module_name, module_version, module_sha256, queue, priority, input,
    state, run_after, attempt, max_attempts, fuel, memory_bytes, timeout_ms, unique_key,
    lease_owner, lease_expires_at, cancel_requested, result, error_kind, error_message,
    error_logs, progress_percent, progress_message, enqueued_at, started_at, finished_at,
    parent_id, ray_submission_id, updated_at, lease_epoch, free_runs
FROM tasks_old;
-- Keep AUTOINCREMENT's high-water mark: seq is the listing cursor.
UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'tasks_old')
    WHERE name = 'tasks' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks_old');

CREATE TABLE attempts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id           TEXT    NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           INTEGER NOT NULL,
    worker_id         TEXT    NOT NULL,
    started_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    outcome           TEXT,
    error_message     TEXT,
    logs              TEXT,
    fuel_used         INTEGER,
    peak_memory       INTEGER,
    duration_ms       INTEGER,
    ray_submission_id TEXT,
    -- The run's lease epoch; NULL on rows from before epochs.
    lease_epoch       INTEGER
) STRICT;

INSERT INTO attempts (id, task_id, attempt, worker_id, started_at, finished_at, outcome,
    error_message, logs, fuel_used, peak_memory, duration_ms, ray_submission_id, lease_epoch)
SELECT id, task_id, attempt, worker_id, started_at, finished_at, outcome,
    error_message, logs, fuel_used, peak_memory, duration_ms, ray_submission_id, lease_epoch
FROM attempts_old;
UPDATE sqlite_sequence SET seq = (SELECT seq FROM sqlite_sequence WHERE name = 'attempts_old')
    WHERE name = 'attempts' AND EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'attempts_old');

DROP TABLE attempts_old;
DROP TABLE tasks_old;
DELETE FROM sqlite_sequence WHERE name IN ('tasks_old', 'attempts_old');

CREATE INDEX tasks_claim_idx ON tasks (queue, priority DESC, run_after, seq)
    WHERE state = 'queued';
CREATE INDEX tasks_claim_any_idx ON tasks (priority DESC, run_after, seq)
    WHERE state = 'queued';
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at)
    WHERE state IN ('leased', 'running');
-- A waiting task is unfinished: its key stays taken.
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'waiting', 'leased', 'running');
CREATE INDEX tasks_state_idx ON tasks (state, seq DESC);
CREATE INDEX tasks_queue_idx ON tasks (queue, seq DESC);
CREATE INDEX tasks_module_idx ON tasks (module_name, seq DESC);
CREATE INDEX tasks_sha256_idx ON tasks (module_sha256);
-- One child per key; also the walk from a parent to its children.
CREATE UNIQUE INDEX tasks_children_idx ON tasks (parent_id, spawn_seq)
    WHERE parent_id IS NOT NULL;

CREATE UNIQUE INDEX attempts_epoch_idx ON attempts (task_id, lease_epoch);

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
WHEN new.state IN ('succeeded', 'failed', 'cancelled')
BEGIN
    INSERT INTO task_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
WHEN old.state IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;

CREATE TRIGGER task_counts_leave AFTER UPDATE OF state, queue ON tasks
WHEN old.state IN ('succeeded', 'failed', 'cancelled')
    AND (new.state IS NOT old.state OR new.queue IS NOT old.queue)
BEGIN
    UPDATE task_counts SET n = n - 1 WHERE queue = old.queue AND state = old.state;
END;

CREATE TRIGGER task_counts_enter AFTER UPDATE OF state, queue ON tasks
WHEN new.state IN ('succeeded', 'failed', 'cancelled')
    AND (new.state IS NOT old.state OR new.queue IS NOT old.queue)
BEGIN
    INSERT INTO task_counts (queue, state, n) VALUES (new.queue, new.state, 1)
        ON CONFLICT (queue, state) DO UPDATE SET n = n + 1;
END;

-- The end of an awaited child counts down its parent's `waiting_on`; the
-- last one needed queues a waiting parent again, in the same transaction.
-- A trigger, so that every way a child ends (completion, cancel, lease
-- expiry, a cascade) resumes its parent without each code path doing it.
CREATE TRIGGER tasks_resume_parent AFTER UPDATE OF state ON tasks
WHEN new.parent_id IS NOT NULL AND new.awaited
    AND new.state IN ('succeeded', 'failed', 'cancelled')
    AND old.state NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE tasks SET
        waiting_on = waiting_on - 1,
        state = CASE WHEN state = 'waiting' AND waiting_on <= 1 THEN 'queued' ELSE state END,
        run_after = CASE WHEN state = 'waiting' AND waiting_on <= 1 THEN new.updated_at
                         ELSE run_after END,
        updated_at = new.updated_at
    WHERE id = new.parent_id;
END;

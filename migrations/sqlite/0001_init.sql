-- wasmq schema, SQLite flavour.
--
-- Times are INTEGER unix microseconds (UTC) so that lease and run_after
-- comparisons are plain integer comparisons served by indexes.
-- Tables are STRICT so a wrongly typed bind fails loudly instead of being
-- stored with another affinity.
-- Keep in step with migrations/postgres/0001_init.sql.

-- Module bytes, content-addressed. Several (name, version) rows may share a blob.
CREATE TABLE module_blobs (
    sha256      TEXT    NOT NULL PRIMARY KEY,
    size        INTEGER NOT NULL CHECK (size >= 0),
    bytes       BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE modules (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    sha256      TEXT    NOT NULL REFERENCES module_blobs (sha256),
    created_at  INTEGER NOT NULL,
    UNIQUE (name, version)
) STRICT;

CREATE INDEX modules_sha256_idx ON modules (sha256);

CREATE TABLE tasks (
    -- Enqueue order. AUTOINCREMENT (not a plain rowid) so numbers are never
    -- reused after a purge: seq is also the listing cursor.
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT    NOT NULL UNIQUE,
    module_name       TEXT    NOT NULL,
    module_version    TEXT    NOT NULL,
    -- Resolved at enqueue: re-pushing the module does not change queued tasks.
    -- The FK keeps the blob alive while any task row refers to it.
    module_sha256     TEXT    NOT NULL REFERENCES module_blobs (sha256),
    queue             TEXT    NOT NULL CHECK (queue <> ''),
    priority          INTEGER NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    input             TEXT    NOT NULL,
    state             TEXT    NOT NULL
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    run_after         INTEGER NOT NULL,
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
    -- State-machine invariants, enforced by the database so that a bug in a
    -- transition cannot leave a half-updated row behind:
    -- exactly the running rows hold a lease ...
    CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- ... and exactly the finished rows have finished_at.
    CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
) STRICT;

-- The claim: due queued rows of given queue(s) by priority, run_after, seq.
CREATE INDEX tasks_claim_idx ON tasks (queue, priority DESC, run_after, seq)
    WHERE state = 'queued';
-- The same order for workers serving every queue ('*').
CREATE INDEX tasks_claim_any_idx ON tasks (priority DESC, run_after, seq)
    WHERE state = 'queued';
-- Reaper and heartbeat: only running rows, few of them.
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at)
    WHERE state = 'running';
CREATE INDEX tasks_owner_idx ON tasks (lease_owner)
    WHERE state = 'running';
-- Deduplication against unfinished tasks only: once a task has finished,
-- the same key may be enqueued again.
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (unique_key)
    WHERE state IN ('queued', 'running');
-- Listings, newest first.
CREATE INDEX tasks_state_idx ON tasks (state, seq DESC);
CREATE INDEX tasks_queue_idx ON tasks (queue, seq DESC);
CREATE INDEX tasks_module_idx ON tasks (module_name, seq DESC);
-- Module deletion check and blob garbage collection.
CREATE INDEX tasks_sha256_idx ON tasks (module_sha256);

-- One row per started attempt. (task_id, attempt) is not unique: an attempt
-- interrupted by a graceful shutdown is recorded and its number re-used.
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
    ray_submission_id TEXT
) STRICT;

CREATE INDEX attempts_task_idx ON attempts (task_id, attempt);

CREATE TABLE workers (
    id                TEXT    NOT NULL PRIMARY KEY,
    hostname          TEXT    NOT NULL,
    pid               INTEGER NOT NULL,
    mode              TEXT    NOT NULL,
    queues            TEXT    NOT NULL,
    concurrency       INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    last_heartbeat_at INTEGER NOT NULL,
    stopped_at        INTEGER
) STRICT;

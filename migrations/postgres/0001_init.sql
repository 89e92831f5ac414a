-- wasmq schema, PostgreSQL flavour.
-- Keep in step with migrations/sqlite/0001_init.sql.
-- Objects are created in the first schema of search_path.

-- Module bytes, content-addressed. Several (name, version) rows may share a blob.
CREATE TABLE module_blobs (
    sha256      text        PRIMARY KEY,
    size        bigint      NOT NULL CHECK (size >= 0),
    bytes       bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE modules (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text        NOT NULL,
    version     text        NOT NULL,
    sha256      text        NOT NULL REFERENCES module_blobs (sha256),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE INDEX modules_sha256_idx ON modules (sha256);

CREATE TABLE tasks (
    id                uuid        PRIMARY KEY,
    -- Enqueue order (ties under equal priority and run_after), and the
    -- listing cursor. Timestamps are not unique enough for either.
    seq               bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    module_name       text        NOT NULL,
    module_version    text        NOT NULL,
    -- Resolved at enqueue: re-pushing the module does not change queued tasks.
    -- The FK keeps the blob alive while any task row refers to it.
    module_sha256     text        NOT NULL REFERENCES module_blobs (sha256),
    queue             text        NOT NULL CHECK (queue <> ''),
    priority          smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -100 AND 100),
    input             text        NOT NULL,
    state             text        NOT NULL
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    run_after         timestamptz NOT NULL,
    attempt           integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts      integer     NOT NULL CHECK (max_attempts >= 1),
    fuel              bigint      CHECK (fuel >= 0),
    memory_bytes      bigint      CHECK (memory_bytes >= 0),
    timeout_ms        bigint      CHECK (timeout_ms >= 0),
    unique_key        text,
    lease_owner       text,
    lease_expires_at  timestamptz,
    cancel_requested  boolean     NOT NULL DEFAULT false,
    result            text,
    error_kind        text,
    error_message     text,
    error_logs        text,
    progress_percent  smallint    CHECK (progress_percent BETWEEN 0 AND 100),
    progress_message  text,
    enqueued_at       timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    parent_id         uuid,
    ray_submission_id text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    -- State-machine invariants, enforced by the database so that a bug in a
    -- transition cannot leave a half-updated row behind:
    -- exactly the running rows hold a lease ...
    CONSTRAINT tasks_lease_iff_running
        CHECK ((state = 'running') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    -- ... and exactly the finished rows have finished_at.
    CONSTRAINT tasks_finished_iff_terminal
        CHECK ((state IN ('succeeded', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

-- A queue table churns: vacuum it well before the default 20% of dead rows.
ALTER TABLE tasks SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

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
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id           uuid        NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt           integer     NOT NULL,
    worker_id         text        NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    outcome           text,
    error_message     text,
    logs              text,
    fuel_used         bigint,
    peak_memory       bigint,
    duration_ms       bigint,
    ray_submission_id text
) WITH (fillfactor = 70);  -- room on the page for the one update that closes the row (HOT)

CREATE INDEX attempts_task_idx ON attempts (task_id, attempt);

CREATE TABLE workers (
    id                text        PRIMARY KEY,
    hostname          text        NOT NULL,
    pid               bigint      NOT NULL,
    mode              text        NOT NULL,
    queues            text        NOT NULL,
    concurrency       integer     NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at        timestamptz
);

-- Issue 10: leases fenced by their own epoch, runs that never rewind, and
-- `leased` (claimed, not started) apart from `running`.
-- Keep in step with migrations/sqlite/0002_lease_epoch.sql.

-- Incremented by every claim; completions, heartbeats, progress and Ray
-- submissions name the epoch they hold.
ALTER TABLE tasks ADD COLUMN lease_epoch bigint NOT NULL DEFAULT 0 CHECK (lease_epoch >= 0);
-- Runs that did not spend an attempt (released at shutdown, deferred):
-- the retry budget counts attempt - free_runs.
ALTER TABLE tasks ADD COLUMN free_runs integer NOT NULL DEFAULT 0 CHECK (free_runs >= 0);
-- Rows written before epochs existed have none.
ALTER TABLE attempts ADD COLUMN lease_epoch bigint;

-- Epochs continue from the attempt counter. Stop workers before upgrading:
-- a task live during the upgrade is held by a worker that names no epoch,
-- so its completion is fenced off and the reaper requeues it.
UPDATE tasks SET lease_epoch = attempt;

ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('queued', 'leased', 'running', 'succeeded', 'failed', 'cancelled'));
ALTER TABLE tasks DROP CONSTRAINT tasks_lease_iff_running;
-- Exactly the live rows hold a lease.
ALTER TABLE tasks ADD CONSTRAINT tasks_lease_iff_live
    CHECK ((state IN ('leased', 'running')) = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL));

DROP INDEX tasks_lease_idx;
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE state IN ('leased', 'running');
DROP INDEX tasks_owner_idx;
CREATE INDEX tasks_owner_idx ON tasks (lease_owner) WHERE state IN ('leased', 'running');
DROP INDEX tasks_unique_key_idx;
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (unique_key)
    WHERE state IN ('queued', 'leased', 'running');

-- One attempt row per run.
CREATE UNIQUE INDEX attempts_epoch_idx ON attempts (task_id, lease_epoch);

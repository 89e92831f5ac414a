-- Issue 11: fewer index entries written per claim and per completion.
-- Keep in step with migrations/sqlite/0003_lean_indexes.sql.

-- A lease is found by task id (heartbeats, completions) or by expiry
-- (reaper); the few live rows of one worker are found through
-- tasks_lease_idx. An index by owner cost one entry per claim.
DROP INDEX tasks_owner_idx;

-- Only tasks that have a key need an entry: most have none, and each of
-- them cost one entry per claim.
DROP INDEX tasks_unique_key_idx;
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'leased', 'running');

-- attempts_epoch_idx (task_id, lease_epoch) serves every lookup by task.
DROP INDEX attempts_task_idx;

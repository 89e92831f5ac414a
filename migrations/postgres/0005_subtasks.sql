-- Issue 13: subtasks. A new state, `waiting` (a parent whose run ended
-- waiting for children it spawned), and the columns that key children
-- under their parent. Keep in step with migrations/sqlite/0005_subtasks.sql.

-- A child's key under its parent (the number of the spawn call that made
-- it), the digest of what that call asked for, and its nesting depth (0 for
-- a task nobody spawned).
ALTER TABLE tasks ADD COLUMN spawn_seq integer CHECK (spawn_seq >= 0);
ALTER TABLE tasks ADD COLUMN spawn_digest text;
ALTER TABLE tasks ADD COLUMN depth integer NOT NULL DEFAULT 0 CHECK (depth >= 0);
-- The parent waits for this child (a wait named it).
ALTER TABLE tasks ADD COLUMN awaited boolean NOT NULL DEFAULT false;
-- A parent: children recorded, and completions of awaited children still
-- needed before a `waiting` parent is queued again.
ALTER TABLE tasks ADD COLUMN children integer NOT NULL DEFAULT 0 CHECK (children >= 0);
ALTER TABLE tasks ADD COLUMN waiting_on integer NOT NULL DEFAULT 0;

ALTER TABLE tasks DROP CONSTRAINT tasks_state_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_state_check
    CHECK (state IN ('queued', 'waiting', 'leased', 'running', 'succeeded', 'failed',
                     'cancelled'));

-- A waiting task is unfinished: its key stays taken.
DROP INDEX tasks_unique_key_idx;
CREATE UNIQUE INDEX tasks_unique_key_idx ON tasks (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('queued', 'waiting', 'leased', 'running');

-- One child per key; also the walk from a parent to its children.
CREATE UNIQUE INDEX tasks_children_idx ON tasks (parent_id, spawn_seq)
    WHERE parent_id IS NOT NULL;

-- The end of an awaited child counts down its parent's `waiting_on`; the
-- last one needed queues a waiting parent again, in the same transaction,
-- and wakes the workers of its queue. A trigger, so that every way a child
-- ends (completion, cancel, lease expiry, a cascade) resumes its parent
-- without each code path doing it. Once per statement: a completion batch
-- of many children of one parent is one update of the parent.
--
-- Races: the child's update and the parent's suspension (which marks the
-- awaited children, then counts the unfinished ones, then parks the
-- parent) lock the child row before the parent row, both of them, so
-- whichever commits second sees the other's work.
CREATE FUNCTION tasks_resume_parents() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    notified bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_rows
                   WHERE parent_id IS NOT NULL AND awaited
                     AND state IN ('succeeded', 'failed', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    WITH ended AS (
        SELECT n.parent_id, count(*) AS n
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE n.parent_id IS NOT NULL AND n.awaited
          AND n.state IN ('succeeded', 'failed', 'cancelled')
          AND o.state NOT IN ('succeeded', 'failed', 'cancelled')
        GROUP BY n.parent_id
    ), resumed AS (
        UPDATE tasks p SET
            waiting_on = p.waiting_on - e.n,
            state = CASE WHEN p.state = 'waiting' AND p.waiting_on - e.n <= 0 THEN 'queued'
                         ELSE p.state END,
            run_after = CASE WHEN p.state = 'waiting' AND p.waiting_on - e.n <= 0 THEN now()
                             ELSE p.run_after END,
            updated_at = now()
        FROM ended e
        WHERE p.id = e.parent_id
        RETURNING p.state, p.queue
    )
    SELECT count(pg_notify('wasmq_task', q.queue)) INTO notified
    FROM (SELECT DISTINCT queue FROM resumed WHERE state = 'queued') q;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_resume_parents AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_resume_parents();

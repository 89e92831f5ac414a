-- The end of an awaited child counts down its parent in two steps, where
-- 0005 did it in one: every child's end only lowers the parent's
-- `waiting_on` (a column no index names, so SQLite rewrites the row and
-- leaves every index alone), and a second trigger queues the parent when
-- that count reaches zero. The single trigger of 0005 also assigned `state`
-- and `run_after` on every firing, even when they kept their values, and
-- SQLite then rewrites the entries of every index that names them (the
-- claim, lease, state and unique-key indexes): with a thousand children, a
-- thousand rewrites of the parent's index entries, most of them in the
-- completion batch that holds the last children, which the parent waits for.
-- PostgreSQL already counts down once per statement (0005); nothing changes
-- there.

DROP TRIGGER tasks_resume_parent;

CREATE TRIGGER tasks_count_down_parent AFTER UPDATE OF state ON tasks
WHEN new.parent_id IS NOT NULL AND new.awaited
    AND new.state IN ('succeeded', 'failed', 'cancelled')
    AND old.state NOT IN ('succeeded', 'failed', 'cancelled')
BEGIN
    UPDATE tasks SET waiting_on = waiting_on - 1, updated_at = new.updated_at
    WHERE id = new.parent_id;
END;

-- A waiting parent whose count reached zero is queued again, in the same
-- transaction as the child's end. A suspension never parks a parent at
-- zero (it is queued at once instead), so only a countdown fires this.
CREATE TRIGGER tasks_resume_parent AFTER UPDATE OF waiting_on ON tasks
WHEN new.state = 'waiting' AND new.waiting_on <= 0
BEGIN
    UPDATE tasks SET state = 'queued', run_after = new.updated_at
    WHERE id = new.id;
END;

-- Issue 12: `queue_stats` (every /metrics scrape, the dashboard) costs what
-- the live work costs, not what the history costs. Unfinished tasks are
-- counted from tasks_state_idx, which holds few of them; finished ones are
-- counted here, by triggers, so that every way into or out of a terminal
-- state (completion, cancel, reaper, retry, purge, and any SQL an operator
-- runs by hand) keeps the count right without each code path doing it.
-- Keep in step with migrations/postgres/0004_task_counts.sql.

CREATE TABLE task_counts (
    queue text    NOT NULL,
    state text    NOT NULL,
    n     integer NOT NULL,
    PRIMARY KEY (queue, state)
) WITHOUT ROWID;

INSERT INTO task_counts (queue, state, n)
SELECT queue, state, count(*) FROM tasks
WHERE state IN ('succeeded', 'failed', 'cancelled')
GROUP BY queue, state;

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

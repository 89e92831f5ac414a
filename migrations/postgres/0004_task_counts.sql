-- Issue 12: `queue_stats` (every /metrics scrape, the dashboard) costs what
-- the live work costs, not what the history costs. Unfinished tasks are
-- counted from tasks_state_idx, which holds few of them; finished ones are
-- counted here, by a trigger, so that every way into or out of a terminal
-- state (completion, cancel, reaper, retry, purge, and any SQL an operator
-- runs by hand) keeps the count right without each code path doing it.
-- Keep in step with migrations/sqlite/0004_task_counts.sql.
--
-- The trigger runs once per statement over its transition tables, so a
-- completion batch of 100 tasks adds one grouped upsert, not 100. Workers
-- completing at the same moment would all update the row of (queue,
-- 'succeeded') and wait for each other's commit: each connection adds into
-- its own shard instead, and readers sum the shards.

CREATE TABLE task_counts (
    queue text     NOT NULL,
    state text     NOT NULL,
    shard smallint NOT NULL,
    n     bigint   NOT NULL,
    PRIMARY KEY (queue, state, shard)
);

INSERT INTO task_counts (queue, state, shard, n)
SELECT queue, state, 0, count(*) FROM tasks
WHERE state IN ('succeeded', 'failed', 'cancelled')
GROUP BY queue, state;

CREATE FUNCTION task_counts_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_counts AS c (queue, state, shard, n)
        SELECT queue, state, pg_backend_pid() % 16, count(*) FROM new_rows
        WHERE state IN ('succeeded', 'failed', 'cancelled')
        GROUP BY queue, state
        ON CONFLICT (queue, state, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO task_counts AS c (queue, state, shard, n)
        SELECT queue, state, pg_backend_pid() % 16, -count(*) FROM old_rows
        WHERE state IN ('succeeded', 'failed', 'cancelled')
        GROUP BY queue, state
        ON CONFLICT (queue, state, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSIF EXISTS (SELECT 1 FROM old_rows WHERE state IN ('succeeded', 'failed', 'cancelled'))
       OR EXISTS (SELECT 1 FROM new_rows WHERE state IN ('succeeded', 'failed', 'cancelled')) THEN
        -- Most updates (claims, starts, heartbeats) touch no terminal row
        -- and stop at the tests above.
        INSERT INTO task_counts AS c (queue, state, shard, n)
        SELECT queue, state, pg_backend_pid() % 16, sum(delta) FROM (
            SELECT o.queue, o.state, -1 AS delta
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE o.state IN ('succeeded', 'failed', 'cancelled')
              AND (n.state <> o.state OR n.queue <> o.queue)
            UNION ALL
            SELECT n.queue, n.state, 1
            FROM old_rows o JOIN new_rows n ON n.id = o.id
            WHERE n.state IN ('succeeded', 'failed', 'cancelled')
              AND (n.state <> o.state OR n.queue <> o.queue)
        ) d
        GROUP BY queue, state
        HAVING sum(delta) <> 0
        ON CONFLICT (queue, state, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER task_counts_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();
CREATE TRIGGER task_counts_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();
CREATE TRIGGER task_counts_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION task_counts_apply();

-- Contract (issue 13, part 1: a small hot table), run by `pgsched migrate --post-deploy` once
-- every process runs a release that reads pgsched.runs_all / pgsched.run_by_id (0029): a run
-- that ends for good moves from pgsched.runs to pgsched.runs_history in the statement that
-- ended it. The previous release reads finished runs from pgsched.runs, so this must not run
-- while one of its processes is up.
--
-- What moves: runs whose status is final (succeeded, failed, cancelled: a failed attempt with
-- attempts left goes back to 'queued', not 'failed') and that have a finished_at (the
-- partition key). What stays, ended, in runs:
-- * workflow steps (workflow_id set): the workflow functions (0019, 0031) read a step's
--   parents and dependents in runs; they leave with their workflow (run_prune_finished).
-- * runs with a unique_key: enqueue's dedupe is runs' unique index, which cannot span the
--   history; kept in runs, a repeated key within retention still returns the ended run.
-- Runs that had already ended before this file are moved by the beat leader, 5,000 a
-- statement (pgsched.history_move_finished below), not by this migration's transaction.

SET LOCAL lock_timeout = '10s';

-- Today's partition and the next days' (UTC), as the beat leader keeps them, before anything
-- moves: a run routed to the DEFAULT partition while the leader attaches its day there fails
-- its statement ("violates partition constraint"), so the days runs end on exist ahead. (0029's
-- function: nothing lands in DEFAULT before the trigger below exists.)
SELECT pgsched.history_partition_create((now() AT TIME ZONE 'UTC')::date + d) FROM generate_series(0, 3) AS d;

CREATE FUNCTION pgsched.runs_to_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One statement for the whole UPDATE's rows. The rows moved are runs' current versions
    -- (the DELETE's RETURNING), not the transition table's images: a trigger that fired
    -- before this one may have changed them since. Measured (benchmarks.move_cost, 50 runs a
    -- statement, same run): a completion 2,374 -> 3,300 us; a claim 1.16x, a heartbeat 1.04x
    -- (their rows are scanned for a final status and none found).
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        USING new_runs AS n
        WHERE r.id = n.id
          AND n.status IN ('succeeded', 'failed', 'cancelled')
          AND r.status IN ('succeeded', 'failed', 'cancelled')
          AND r.finished_at IS NOT NULL AND r.workflow_id IS NULL AND r.unique_key IS NULL
        RETURNING r.*
    )
    INSERT INTO pgsched.runs_history SELECT * FROM moved;
    RETURN NULL;
END;
$$;

-- Named to fire after runs_steps_ended (statement triggers fire in name order), so the
-- workflow release reads a statement's ended parents in runs before anything moves. A
-- transition table cannot go with a column list (UPDATE OF status): every UPDATE of runs
-- fires it, and pays one scan of its own rows.
CREATE TRIGGER runs_to_history
    AFTER UPDATE ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_to_history();

-- The runs that ended before the trigger existed, up to `batch` of them with an id above
-- `after_id`, in id order: moved in one statement (short locks: rows a concurrent statement
-- holds are skipped, and found by a later pass). Returns how many moved and the highest id
-- the batch reached (NULL: none left above after_id), where the next batch starts.
CREATE FUNCTION pgsched.history_move_finished(after_id bigint, batch integer)
RETURNS TABLE (moved bigint, reached bigint) LANGUAGE plpgsql AS $$
BEGIN
    IF after_id IS NULL OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'pgsched.history_move_finished: after_id must be a run id and batch at least 1, got % and %',
                        after_id, batch USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH picked AS MATERIALIZED (
        SELECT r.id FROM pgsched.runs AS r
        WHERE r.id > after_id AND r.status IN ('succeeded', 'failed', 'cancelled')
          AND r.finished_at IS NOT NULL AND r.workflow_id IS NULL AND r.unique_key IS NULL
        ORDER BY r.id
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgsched.runs AS r USING picked WHERE r.id = picked.id RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM gone RETURNING id
    )
    SELECT (SELECT count(*) FROM kept), (SELECT max(id) FROM picked);
END;
$$;

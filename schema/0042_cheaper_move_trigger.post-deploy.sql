-- The move's trigger (0030), cheaper for every UPDATE of runs (issue 18, many small workers).
--
-- 0030's runs_to_history runs one DELETE joined to the statement's rows on every UPDATE of runs:
-- a claim, a completion, a heartbeat. Its plan reads runs through runs_finished_idx (finished_at
-- IS NOT NULL), which the statistics say is empty, since ended runs leave at once. But every run
-- that ended and moved leaves a dead entry there until vacuum, so each UPDATE walked the entries
-- of every run finished since the last vacuum, then joined them to the statement's rows in a
-- nested loop. Measured in a drain (pg_stat_statements, 10,000 no-op runs, a worker of
-- concurrency 10: 2,006 UPDATEs): 1.08 ms a call on average, more than half of each claim's
-- (1.9 ms) and each completion's (1.7 ms) server time; the fixed cost a worker that claims and
-- completes 10 runs at a time pays per batch.
--
-- This version:
--   * returns at once when the statement ended no run (a claim, a heartbeat, a retry that
--     requeues): one pass over its own rows;
--   * finds the rows to move by primary key, from the ids of the statement's ended rows. The
--     current row's finished_at is tested with num_nonnulls, not IS NOT NULL, so the planner
--     cannot take runs_finished_idx instead (the partial index's predicate would match).
-- What moves is unchanged: runs' current versions whose status is final, with a finished_at,
-- neither a workflow step nor with a unique_key (see 0030).
--
-- Post-deploy, like 0030 (it re-points 0030's trigger, which exists only from then on).
-- Expand only otherwise: 0030's function stays; no code calls a trigger function.

SET LOCAL lock_timeout = '10s';

CREATE FUNCTION pgsched.runs_to_history_v2() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM new_runs WHERE status IN ('succeeded', 'failed', 'cancelled')) THEN
        RETURN NULL;
    END IF;
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        WHERE r.id = ANY (ARRAY(SELECT n.id FROM new_runs AS n WHERE n.status IN ('succeeded', 'failed', 'cancelled')))
          AND r.status IN ('succeeded', 'failed', 'cancelled')
          AND num_nonnulls(r.finished_at) = 1 AND r.workflow_id IS NULL AND r.unique_key IS NULL
        RETURNING r.*
    )
    INSERT INTO pgsched.runs_history SELECT * FROM moved;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER runs_to_history
    AFTER UPDATE ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_to_history_v2();

-- The move (0030) without a join the planner gets wrong. 0030's trigger joins runs to the
-- transition table; its plan is cached from the first statement of a session (a claim: no
-- ended rows, estimate 1 row), and it is a nested loop of runs_finished_idx over the
-- transition table: 100 x 100 row comparisons for a completion of 100, quadratic in the batch.
-- Measured (20,000 queued, batches of 100, backend CPU): a completion cost 92 us a run with it
-- and 24 us with the trigger off. v2 collects the ended ids from the transition table first
-- (claims and heartbeats stop there: none ended) and deletes by primary key; the status the
-- DELETE checks implies finished_at (0009's run_status_must_agree_with_its_times_and_lease), so no
-- finished_at condition steers the plan to runs_finished_idx.
CREATE FUNCTION pgsched.runs_to_history_v2() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended bigint[];
BEGIN
    SELECT array_agg(n.id) INTO ended
    FROM new_runs AS n
    WHERE n.status IN ('succeeded', 'failed', 'cancelled') AND n.workflow_id IS NULL AND n.unique_key IS NULL;
    IF ended IS NULL THEN
        RETURN NULL;
    END IF;
    -- The rows moved are runs' current versions (the DELETE's RETURNING), not the transition
    -- table's images: a trigger that fired before this one may have changed them since.
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        WHERE r.id = ANY (ended)
          AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.workflow_id IS NULL AND r.unique_key IS NULL
        RETURNING r.*
    )
    INSERT INTO pgsched.runs_history SELECT * FROM moved;
    RETURN NULL;
END;
$$;

-- Where the move is on already (0030 applied), it uses v2 from now on. Where it is not yet,
-- 0046 (post-deploy, after 0030) points the trigger at v2.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_trigger WHERE tgrelid = 'pgsched.runs'::regclass AND tgname = 'runs_to_history') THEN
        CREATE OR REPLACE TRIGGER runs_to_history
            AFTER UPDATE ON pgsched.runs
            REFERENCING NEW TABLE AS new_runs
            FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_to_history_v2();
    END IF;
END;
$$;

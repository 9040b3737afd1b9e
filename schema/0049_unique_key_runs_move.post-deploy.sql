-- Contract (issue 13, part 1), run by `pgsched migrate --post-deploy` once every process runs a
-- release that claims keys in pgsched.run_unique_keys and reads a key's holder there (0037):
-- runs with a unique_key move to runs_history when they end, like every other run that is not
-- a workflow step (0030). The previous release's enqueue reads a key's holder in runs_all, but
-- its prunes and partition drops would leave the keys of moved runs behind; hence post-deploy.
--
-- A run inserted before 0037 holds its key in runs' unique index alone: the move registers its
-- key as it goes (ON CONFLICT DO NOTHING: every later run's key is there already).

SET LOCAL lock_timeout = '10s';

-- Key rows whose run went while the previous release pruned (it deletes runs without their
-- keys): they hold nothing (run_unique_key_holder), and from here on nothing leaves more.
-- Every run with a key is in runs at this point (none has moved yet).
DELETE FROM pgsched.run_unique_keys AS k WHERE NOT EXISTS (SELECT FROM pgsched.runs AS r WHERE r.id = k.run_id);

-- The move of a run with a key that ends, in the statement that ends it: runs_to_history's
-- batch (v2, 0045) without its `unique_key IS NULL`, plus one INSERT of the batch's keys into
-- run_unique_keys (a run inserted before 0037 had none; ON CONFLICT DO NOTHING: every later
-- run's is there already). Numbered after 0046, which points the trigger at v2, so that this
-- file comes last. A row trigger of its own (this file's first version, numbered 0038) cost
-- ~200-270 us a keyed run, a statement per run; in the batch a keyed run costs what one
-- without a key does, plus the key table's probe.
CREATE FUNCTION pgsched.runs_to_history_v3() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended bigint[];
BEGIN
    SELECT array_agg(n.id) INTO ended
    FROM new_runs AS n
    WHERE n.status IN ('succeeded', 'failed', 'cancelled') AND n.workflow_id IS NULL;
    IF ended IS NULL THEN
        RETURN NULL;
    END IF;
    -- The rows moved are runs' current versions (the DELETE's RETURNING), not the transition
    -- table's images: a trigger that fired before this one may have changed them since.
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        WHERE r.id = ANY (ended) AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.workflow_id IS NULL
        RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM moved
    )
    INSERT INTO pgsched.run_unique_keys (unique_key, run_id)
    SELECT moved.unique_key, moved.id FROM moved WHERE moved.unique_key IS NOT NULL
    ON CONFLICT (unique_key) DO NOTHING;
    RETURN NULL;
END;
$$;

-- Same name (it fires after runs_steps_ended, see 0030), same definition, new function.
CREATE OR REPLACE TRIGGER runs_to_history
    AFTER UPDATE ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_to_history_v3();

-- 0030's history_move_finished with runs that have a key (and their keys registered): the
-- leader's pass over runs that ended before they moved on their own. 0030's stays as it was.
CREATE FUNCTION pgsched.history_move_finished_v2(after_id bigint, batch integer)
RETURNS TABLE (moved bigint, reached bigint) LANGUAGE plpgsql AS $$
BEGIN
    IF after_id IS NULL OR batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'pgsched.history_move_finished_v2: after_id must be a run id and batch at least 1, got % and %',
                        after_id, batch USING ERRCODE = '22023';
    END IF;
    RETURN QUERY
    WITH picked AS MATERIALIZED (
        SELECT r.id FROM pgsched.runs AS r
        WHERE r.id > after_id AND r.status IN ('succeeded', 'failed', 'cancelled')
          AND r.finished_at IS NOT NULL AND r.workflow_id IS NULL
        ORDER BY r.id
        LIMIT batch
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgsched.runs AS r USING picked WHERE r.id = picked.id RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM gone RETURNING id, unique_key
    ), keyed AS (
        INSERT INTO pgsched.run_unique_keys (unique_key, run_id)
        SELECT kept.unique_key, kept.id FROM kept WHERE kept.unique_key IS NOT NULL
        ON CONFLICT (unique_key) DO NOTHING
    )
    SELECT (SELECT count(*) FROM kept), (SELECT max(id) FROM picked);
END;
$$;

-- 0047's move of the steps of workflows that succeeded, steps with a unique_key too (their keys
-- registered, as above): the key row keeps the key held wherever the step is, and a succeeded
-- workflow has nothing left to retry in runs. 0047's stays as it was for the previous release.
CREATE FUNCTION pgsched.history_move_workflow_steps_v2(batch integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    IF batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'pgsched.history_move_workflow_steps_v2: batch must be at least 1, got %', batch
            USING ERRCODE = '22023';
    END IF;
    WITH picked AS MATERIALIZED (
        SELECT r.id FROM pgsched.runs AS r
        JOIN pgsched.workflows AS w ON w.id = r.workflow_id
        WHERE r.finished_at IS NOT NULL AND r.status = 'succeeded'
          AND w.status = 'succeeded'
          AND NOT EXISTS (SELECT FROM pgsched.runs AS o WHERE o.workflow_id = w.id AND o.status <> 'succeeded')
        ORDER BY r.finished_at
        LIMIT batch
        FOR UPDATE OF r SKIP LOCKED
    ), gone AS (
        DELETE FROM pgsched.runs AS r USING picked WHERE r.id = picked.id RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM gone
    ), keyed AS (
        INSERT INTO pgsched.run_unique_keys (unique_key, run_id)
        SELECT gone.unique_key, gone.id FROM gone WHERE gone.unique_key IS NOT NULL
        ON CONFLICT (unique_key) DO NOTHING
    )
    SELECT count(*) INTO moved FROM gone;
    RETURN moved;
END;
$$;

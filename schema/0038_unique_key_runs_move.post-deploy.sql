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

-- The move of a run with a key that ends, in the statement that ends it. A row trigger of its
-- own, not a change to runs_to_history's function (0045 and its post-deploy 0046 point that
-- trigger at runs_to_history_v2, and 0046 runs after this file): a run without a key pays the
-- WHEN's test on an UPDATE OF status, and nothing more. Row triggers fire before statement
-- triggers: the workflow release (runs_steps_ended) concerns steps, which do not move. The
-- rows moved are runs' current versions (the DELETE's RETURNING); the key is registered for a
-- run inserted before 0037 (ON CONFLICT DO NOTHING: every later run's is there already).
CREATE FUNCTION pgsched.runs_to_history_keyed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        WHERE r.id = NEW.id AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.workflow_id IS NULL
        RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM moved RETURNING id, unique_key
    )
    INSERT INTO pgsched.run_unique_keys (unique_key, run_id)
    SELECT kept.unique_key, kept.id FROM kept WHERE kept.unique_key IS NOT NULL
    ON CONFLICT (unique_key) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_to_history_keyed
    AFTER UPDATE OF status ON pgsched.runs
    FOR EACH ROW
    WHEN (NEW.unique_key IS NOT NULL AND NEW.workflow_id IS NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION pgsched.runs_to_history_keyed();

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

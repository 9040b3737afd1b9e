-- Workflow steps move to runs_history too (issue 13: runs holds what has not finished), once
-- their workflow has succeeded, every step of it: the beat leader moves them, a batch at a time.
-- Until then a step stays in runs, where the workflow's triggers (0019, 0031) read it: a running
-- workflow's dependents wait on its steps, and `runs retry` of a failed or cancelled step opens
-- its workflow again and queues the dependents its end cancelled, in runs. So a workflow that
-- failed or was cancelled keeps its steps in runs until its retention; one that succeeded has
-- nothing left to retry. Steps with a unique_key stay, as other runs with one do (0030).
-- The scan starts from runs_finished_idx, which after 0030 holds only what stays: workflow
-- steps and keyed runs.
CREATE FUNCTION pgsched.history_move_workflow_steps(batch integer) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    IF batch IS NULL OR batch < 1 THEN
        RAISE EXCEPTION 'pgsched.history_move_workflow_steps: batch must be at least 1, got %', batch
            USING ERRCODE = '22023';
    END IF;
    WITH picked AS MATERIALIZED (
        SELECT r.id FROM pgsched.runs AS r
        JOIN pgsched.workflows AS w ON w.id = r.workflow_id
        WHERE r.finished_at IS NOT NULL AND r.status = 'succeeded' AND r.unique_key IS NULL
          AND w.status = 'succeeded'
          AND NOT EXISTS (SELECT FROM pgsched.runs AS o WHERE o.workflow_id = w.id AND o.status <> 'succeeded')
        ORDER BY r.finished_at
        LIMIT batch
        FOR UPDATE OF r SKIP LOCKED
    ), gone AS (
        DELETE FROM pgsched.runs AS r USING picked WHERE r.id = picked.id RETURNING r.*
    )
    INSERT INTO pgsched.runs_history SELECT * FROM gone;
    GET DIAGNOSTICS moved = ROW_COUNT;
    RETURN moved;
END;
$$;

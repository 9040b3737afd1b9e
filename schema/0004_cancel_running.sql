-- Cancelling running runs: a request recorded on the run and sent to its worker.

ALTER TABLE pgsched.runs ADD COLUMN cancel_requested_at timestamptz;

-- Cancel a run from SQL (the CLI and the API call this too). A queued run is cancelled at
-- once; a running one is marked, and its worker is told on channel pgsched_cancel: it stops
-- the task if it can (async: cancelled; sync: a flag the task may check), and whatever the
-- task does next, the run ends 'cancelled'. Returns the run's status after the call:
-- 'cancelled' or 'running' (cancel requested).
CREATE FUNCTION pgsched.cancel(run_id bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    current pgsched.run_status;
BEGIN
    SELECT status INTO current FROM pgsched.runs WHERE id = run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgsched.cancel: no run with id %', run_id USING ERRCODE = 'no_data_found';
    END IF;
    IF current = 'queued' THEN
        UPDATE pgsched.runs SET status = 'cancelled', finished_at = now(), cancel_requested_at = now()
        WHERE id = run_id;
        RETURN 'cancelled';
    ELSIF current = 'running' THEN
        UPDATE pgsched.runs SET cancel_requested_at = coalesce(cancel_requested_at, now()) WHERE id = run_id;
        PERFORM pg_notify('pgsched_cancel', run_id::text);
        RETURN 'running';
    END IF;
    RAISE EXCEPTION 'pgsched.cancel: run % is %; only queued or running runs can be cancelled', run_id, current
        USING ERRCODE = 'object_not_in_prerequisite_state';
END;
$$;

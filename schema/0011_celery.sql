-- Coming from Celery (issue #16): runs that expire before they start, and a notification when
-- a run someone waits on ends.
--
-- Expand only, so the previous release's workers keep claiming and completing while this is
-- applied and after it: two nullable columns without a default (a catalog change, no rewrite),
-- one partial index, a row trigger and new functions; nothing existing is replaced.
-- Building the index reads the runs table once, under a lock that holds inserts and claims
-- for that time (a second or so per million rows): on a large table, migrate in a quiet moment.
-- Until every worker runs the new release, an old worker may still start an expired run
-- (its claim does not read expires_at); the sweep cancels whatever none has started.

ALTER TABLE pgsched.runs
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN awaited    boolean;

-- An instant every reader can hold, as 0009 requires of the others (NOT VALID: the column is
-- new, so every row has NULL; nothing to scan under the lock).
ALTER TABLE pgsched.runs ADD CONSTRAINT run_expires_at_must_be_within_years_1_to_9999
    CHECK ('[0001-01-02 00:00:00+00,9999-12-30 00:00:00+00]'::tstzrange @> expires_at) NOT VALID;

-- The sweep's question "which queued runs have expired?": empty while nobody sets expires.
CREATE INDEX runs_expires_idx ON pgsched.runs (expires_at) WHERE status = 'queued' AND expires_at IS NOT NULL;

-- A run someone waits on (awaited, set by the waiter's run_watch) says so when it ends, on
-- channel pgsched_finished with its id. Every path that ends a run (completion, rescue, cancel,
-- expiry, a plain SQL UPDATE) passes here, and a run nobody waits on pays only the WHEN test.
CREATE FUNCTION pgsched.notify_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsched_finished', NEW.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_notify_finished
    AFTER UPDATE OF status ON pgsched.runs
    FOR EACH ROW
    WHEN (NEW.awaited AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION pgsched.notify_finished();

-- pgsched.enqueue with expires_at: a run not started by then is cancelled (reason: expired).
-- A new version beside the old one, which callers of the previous release keep using.
CREATE FUNCTION pgsched.enqueue_v2(
    task         text,
    args         jsonb DEFAULT '{}',
    queue        text DEFAULT 'default',
    priority     integer DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts integer DEFAULT 3,
    unique_key   text DEFAULT NULL,
    expires_at   timestamptz DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    IF task IS NULL OR task !~ '\S' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: task must be a non-empty name' USING ERRCODE = '22023';
    END IF;
    IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: args must be a JSON object, got %', coalesce(jsonb_typeof(args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: priority must be between -100 and 100, got %', priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: max_attempts must be at least 1, got %', max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF expires_at IS NOT NULL AND expires_at <= coalesce(run_at, now()) THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: expires_at (%) must be after run_at (%): the run would never start',
            expires_at, coalesce(run_at, now()) USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key, expires_at)
    VALUES (enqueue_v2.task, enqueue_v2.args, coalesce(enqueue_v2.queue, 'default'), enqueue_v2.priority,
            coalesce(enqueue_v2.run_at, now()), enqueue_v2.max_attempts, enqueue_v2.unique_key, enqueue_v2.expires_at)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING r.id INTO new_id;
    IF new_id IS NULL THEN
        SELECT r.id INTO new_id FROM pgsched.runs AS r WHERE r.unique_key = enqueue_v2.unique_key;
    END IF;
    RETURN new_id;
END;
$$;

-- Cancelled runs, newest first, with why: expired, cancelled by the task, or on request.
CREATE VIEW pgsched.recent_cancellations AS
SELECT r.id, r.task, r.queue, r.attempt, r.expires_at, r.finished_at,
       CASE r.errors -> -1 ->> 'type' WHEN 'Expired' THEN 'expired'
                                      WHEN 'Cancel' THEN 'cancelled by the task'
                                      ELSE 'cancel requested' END AS reason,
       CASE WHEN r.errors -> -1 ->> 'type' IN ('Expired', 'Cancel', 'Cancelled')
            THEN r.errors -> -1 ->> 'message' END AS message
FROM pgsched.runs AS r
WHERE r.status = 'cancelled'
ORDER BY r.finished_at DESC NULLS LAST;

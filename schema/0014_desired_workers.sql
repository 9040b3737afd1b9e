-- An autoscaling signal (issue 17): how many workers a queue's backlog wants, as one SQL
-- function, so KEDA's PostgreSQL scaler, /metrics and a person at psql ask the same question.
--
-- The backlog is what a worker slot would hold now: the queue's due queued runs (the claim
-- index) plus its running runs (the lease index: a running run always holds a lease). Runs
-- deferred to later are not wanted yet, nor runs that expired (0011: never claimed). Both
-- counts read only what an index isolates, never the finished history, so a scaler may poll
-- it every few seconds.

CREATE FUNCTION pgsched.desired_workers(queue text, per_worker integer) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
DECLARE
    backlog bigint;
BEGIN
    IF per_worker IS NULL OR per_worker < 1 THEN
        RAISE EXCEPTION 'pgsched.desired_workers: per_worker must be at least 1 (the runs one worker holds at once, its --concurrency), got %',
            coalesce(per_worker::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF desired_workers.queue IS NULL THEN
        RAISE EXCEPTION 'pgsched.desired_workers: queue must be a queue name, got NULL'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT (SELECT count(*) FROM pgsched.runs AS r
            WHERE r.status = 'queued' AND r.queue = desired_workers.queue AND r.run_at <= now()
              AND (r.expires_at IS NULL OR r.expires_at > now()))
         + (SELECT count(*) FROM pgsched.runs AS r
            WHERE r.lease_expires_at IS NOT NULL AND r.status = 'running' AND r.queue = desired_workers.queue)
    INTO backlog;
    -- Ceiling division in integers: 1..per_worker runs want one worker, none want none.
    RETURN (backlog + per_worker - 1) / per_worker;
END
$$;

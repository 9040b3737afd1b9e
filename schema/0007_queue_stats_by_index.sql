-- Queue statistics without reading every run. 0005's queue_stats_for aggregated the whole
-- runs table per call (54 ms at 200,000 runs, growing with the retained history), and
-- GET /queues and /metrics call it on every request. Each figure now comes from the runs
-- an index already isolates: queued (the claim index), running (the lease index: a running
-- run always holds a lease), finished in the last hour (the finished index) and failed (a
-- new partial index, small while failures are rare). A queue shows up while it has runs
-- queued, running or failed, or finished in the last hour; an idle queue with only older
-- successes no longer does.
--
-- Building the index reads the table once, under a lock that holds writes for that time.

CREATE INDEX runs_failed_idx ON pgsched.runs (queue) WHERE status = 'failed';

CREATE OR REPLACE FUNCTION pgsched.queue_stats_for(of_tenant text)
RETURNS TABLE (
    queue                 text,
    queued                bigint,
    due                   bigint,
    running               bigint,
    failed                bigint,
    succeeded_last_hour   bigint,
    oldest_queued_age     interval,
    succeeded_last_minute bigint,
    failed_last_minute    bigint
) LANGUAGE sql STABLE AS $$
    -- of_tenant NULL: every tenant's runs. failed_last_minute counts runs that ended failed
    -- (attempts used up), not attempts that will be retried.
    SELECT part.queue,
           sum(part.queued)::bigint, sum(part.due)::bigint, sum(part.running)::bigint, sum(part.failed)::bigint,
           sum(part.succeeded_last_hour)::bigint, now() - min(part.oldest_due_run_at),
           sum(part.succeeded_last_minute)::bigint, sum(part.failed_last_minute)::bigint
    FROM (
        SELECT r.queue, count(*) AS queued, count(*) FILTER (WHERE r.run_at <= now()) AS due,
               0 AS running, 0 AS failed, 0 AS succeeded_last_hour,
               min(r.run_at) FILTER (WHERE r.run_at <= now()) AS oldest_due_run_at,
               0 AS succeeded_last_minute, 0 AS failed_last_minute
        FROM pgsched.runs AS r
        WHERE r.status = 'queued' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, count(*), 0, 0, NULL, 0, 0
        FROM pgsched.runs AS r
        WHERE r.lease_expires_at IS NOT NULL AND r.status = 'running' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, 0, count(*), 0, NULL, 0, 0
        FROM pgsched.runs AS r
        WHERE r.status = 'failed' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, 0, 0, count(*) FILTER (WHERE r.status = 'succeeded'), NULL,
               count(*) FILTER (WHERE r.status = 'succeeded' AND r.finished_at > now() - interval '1 minute'),
               count(*) FILTER (WHERE r.status = 'failed' AND r.finished_at > now() - interval '1 minute')
        FROM pgsched.runs AS r
        WHERE r.finished_at > now() - interval '1 hour' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
    ) AS part
    GROUP BY part.queue
$$;

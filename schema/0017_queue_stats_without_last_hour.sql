-- Queue figures without the last hour, for what refreshes every 2 s (issue 12: the dashboard's
-- live queues table shows the last minute's throughput, and its chart reads the per-minute
-- rollup). Reading every run finished in the last hour was 6.9 ms of one poll's 7 ms on 10^6
-- runs spread over a week, and grows with the rate: with_last_hour => false reads the last
-- minute's instead.
--
-- queue_stats_for keeps its signature and its result (the previous release's queries and the
-- queue_stats view read it unchanged while this is applied) and now calls this one: one copy
-- of the aggregate. CREATE OR REPLACE takes no lock on the runs table.

CREATE FUNCTION pgsched.queue_stats_v2(of_tenant text, with_last_hour boolean)
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
    -- (attempts used up), not attempts that will be retried. Without the last hour, only the
    -- last minute's finished runs are read and succeeded_last_hour is NULL.
    SELECT part.queue,
           sum(part.queued)::bigint, sum(part.due)::bigint, sum(part.running)::bigint, sum(part.failed)::bigint,
           CASE WHEN with_last_hour THEN sum(part.succeeded_last_hour)::bigint END, now() - CASE WHEN min(part.oldest_due_run_at) = '-infinity' THEN '0001-01-02 00:00:00+00'
                              ELSE min(part.oldest_due_run_at) END,
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
        WHERE r.finished_at > now() - CASE WHEN with_last_hour THEN interval '1 hour' ELSE interval '1 minute' END
          AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
    ) AS part
    GROUP BY part.queue
$$;

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
    SELECT * FROM pgsched.queue_stats_v2(of_tenant, true)
$$;

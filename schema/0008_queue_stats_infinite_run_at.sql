-- queue_stats_for without an error on a run due since '-infinity': "now() - min(run_at)" cannot
-- subtract an infinite timestamp, and one such run (a plain SQL INSERT can write it) made
-- GET /queues, `pgsched stats` and /metrics fail for every tenant. Such a run's age is now
-- counted from 0001-01-02: it shows up as the oldest, about 2,000 years old.
-- (Found by tests/test_generated_input.py.)
--
-- Same signature and columns: the previous release's queries read it unchanged while this is
-- applied, and CREATE OR REPLACE takes no lock on the runs table.

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
           sum(part.succeeded_last_hour)::bigint, now() - CASE WHEN min(part.oldest_due_run_at) = '-infinity' THEN '0001-01-02 00:00:00+00'
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
        WHERE r.finished_at > now() - interval '1 hour' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
    ) AS part
    GROUP BY part.queue
$$;

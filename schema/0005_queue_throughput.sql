-- Queue statistics in one place, with the throughput of the last minute.
--
-- The queue_stats view (for psql) and the API's per-tenant numbers used to be two copies of
-- the same aggregate; both now read pgsched.queue_stats_for(tenant), so they cannot drift.
-- The function is a single SQL SELECT, so the planner inlines it: the view plans as before.

CREATE FUNCTION pgsched.queue_stats_for(of_tenant text)
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
    SELECT r.queue,
           count(*) FILTER (WHERE r.status = 'queued'),
           count(*) FILTER (WHERE r.status = 'queued' AND r.run_at <= now()),
           count(*) FILTER (WHERE r.status = 'running'),
           count(*) FILTER (WHERE r.status = 'failed'),
           count(*) FILTER (WHERE r.status = 'succeeded' AND r.finished_at > now() - interval '1 hour'),
           now() - min(r.run_at) FILTER (WHERE r.status = 'queued' AND r.run_at <= now()),
           count(*) FILTER (WHERE r.status = 'succeeded' AND r.finished_at > now() - interval '1 minute'),
           count(*) FILTER (WHERE r.status = 'failed' AND r.finished_at > now() - interval '1 minute')
    FROM pgsched.runs AS r
    WHERE of_tenant IS NULL OR r.tenant = of_tenant
    GROUP BY r.queue
$$;

-- Same columns in the same order as 0001's view, the new ones appended (what OR REPLACE allows).
CREATE OR REPLACE VIEW pgsched.queue_stats AS
SELECT queue, queued, due, running, failed, succeeded_last_hour, oldest_queued_age,
       succeeded_last_minute, failed_last_minute
FROM pgsched.queue_stats_for(NULL);

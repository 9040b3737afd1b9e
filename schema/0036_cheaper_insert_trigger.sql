-- The insert trigger, cheaper for the one-run insert a web request makes (issue 18).
--
-- Every INSERT into runs fired two statement triggers, 0027's runs_inserted (the insert check
-- and the wake-up) and 0026's runs_tenant_inserted (tenant usage and quotas): measured inside
-- the server (EXPLAIN ANALYZE's trigger times, 900 one-row inserts, medians) 57 + 13 us per
-- insert, most of a bare insert's own execution time. Where it went: each function's SPI query
-- over the transition table (~20 us each, the DISTINCT aggregate's sort among it), and a
-- second trigger call. This version:
--   * checks a row as the WHEN of a row trigger (run_inserted_refused): a good row never calls
--     a function, a bad one raises the same error as before;
--   * reads the statement's rows once, for the queues and for whether any has a tenant, with
--     min/max instead of array_agg(DISTINCT) (a one-queue statement needs no sort);
--   * does the tenant work of 0026 (verbatim) only when a row has a tenant;
--   * wakes workers as 0027 does (same advisory-lock protocol, same rule for older workers).
-- Measured the same way: 45 us for the statement trigger without the tenant part, against 70.
--
-- Expand only: new functions beside 0026's and 0027's (which stay; no code calls a trigger
-- function), and the triggers pointed at them. The previous release's inserts (its INSERTs and
-- COPY) get the same checks, quotas and wake-ups.

SET LOCAL lock_timeout = '10s';

CREATE FUNCTION pgsched.run_inserted_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run %: a run is inserted queued (or waiting, in a workflow) with attempt 0, got status % and attempt %',
        NEW.id, NEW.status, NEW.attempt
        USING ERRCODE = 'check_violation', CONSTRAINT = 'run_must_be_inserted_queued',
              HINT = 'enqueue it, then let a worker run it; to restore a dump, load it with triggers disabled';
END;
$$;

CREATE FUNCTION pgsched.runs_inserted_v2() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    first_queue text;
    last_queue text;
    any_tenant boolean;
    queues text[];
    q text;
    h integer;
    today date;
    quota record;
    total bigint;
BEGIN
    SELECT min(queue) FILTER (WHERE status = 'queued'), max(queue) FILTER (WHERE status = 'queued'),
           bool_or(tenant IS NOT NULL)
    INTO first_queue, last_queue, any_tenant
    FROM new_runs;
    IF any_tenant THEN
        -- 0026's runs_tenant_inserted, unchanged: usage logged, quotas checked under the lock.
        today := (now() AT TIME ZONE 'UTC')::date;
        INSERT INTO pgsched.tenant_usage_log (tenant, day, created)
        SELECT tenant, today, count(*) FROM new_runs WHERE tenant IS NOT NULL GROUP BY tenant;
        FOR quota IN
            SELECT t.name, t.max_queued, t.runs_per_day, n.adding
            FROM pgsched.tenants AS t
            JOIN (SELECT tenant, count(*) AS adding FROM new_runs WHERE tenant IS NOT NULL GROUP BY tenant) AS n
              ON n.tenant = t.name
            WHERE t.max_queued IS NOT NULL OR t.runs_per_day IS NOT NULL
            ORDER BY t.name
            FOR UPDATE OF t
        LOOP
            UPDATE pgsched.tenant_days SET created = created + quota.adding WHERE tenant = quota.name AND day = today
            RETURNING created INTO total;
            IF NOT FOUND THEN
                -- The tenant's first runs today since it has a quota: count what it created before
                -- (the folded usage and the log, which holds this statement's runs already) once.
                SELECT coalesce(sum(c), 0) INTO total FROM (
                    SELECT created AS c FROM pgsched.tenant_usage WHERE tenant = quota.name AND day = today
                    UNION ALL
                    SELECT created FROM pgsched.tenant_usage_log WHERE tenant = quota.name AND day = today
                ) AS before;
                -- ON CONFLICT: a REPEATABLE READ enqueuer that cannot see a row another committed
                -- fails to serialize here (retryable), where a plain INSERT would be a unique violation.
                INSERT INTO pgsched.tenant_days AS d (tenant, day, created) VALUES (quota.name, today, total)
                ON CONFLICT (tenant, day) DO UPDATE SET created = d.created + quota.adding
                RETURNING d.created INTO total;
            END IF;
            IF total > quota.runs_per_day THEN
                RAISE EXCEPTION 'tenant % is over its quota runs_per_day = %: % runs created today (UTC), this statement adds %; nothing was inserted',
                    quota.name, quota.runs_per_day, total - quota.adding, quota.adding
                    USING ERRCODE = 'PS429', SCHEMA = 'pgsched', TABLE = 'tenants', COLUMN = 'runs_per_day',
                          DETAIL = jsonb_build_object('tenant', quota.name, 'quota', 'runs_per_day', 'limit', quota.runs_per_day,
                                                     'count', total - quota.adding, 'adding', quota.adding)::text,
                          HINT = 'the count starts again at 00:00 UTC; `pgsched tenants set` changes the quota';
            END IF;
            IF quota.max_queued IS NOT NULL THEN
                -- The statement's own runs are visible here (runs_tenant_queued_idx, index only).
                SELECT count(*) INTO total FROM pgsched.runs WHERE tenant = quota.name AND status = 'queued';
                IF total > quota.max_queued THEN
                    RAISE EXCEPTION 'tenant % is over its quota max_queued = %: % runs queued, this statement adds %; nothing was inserted',
                        quota.name, quota.max_queued, greatest(total - quota.adding, 0), quota.adding
                        USING ERRCODE = 'PS429', SCHEMA = 'pgsched', TABLE = 'tenants', COLUMN = 'max_queued',
                              DETAIL = jsonb_build_object('tenant', quota.name, 'quota', 'max_queued', 'limit', quota.max_queued,
                                                         'count', greatest(total - quota.adding, 0), 'adding', quota.adding)::text,
                              HINT = 'retry once workers have started some of its queued runs; `pgsched tenants set` changes the quota';
                END IF;
            END IF;
        END LOOP;
    END IF;
    IF first_queue IS NULL THEN
        RETURN NULL;
    END IF;
    IF first_queue = last_queue THEN
        queues := ARRAY[first_queue];
    ELSE
        SELECT array_agg(DISTINCT queue) INTO queues FROM new_runs WHERE status = 'queued';
    END IF;
    -- 0027: while a worker of an older release is registered, every queue is notified.
    IF EXISTS (SELECT FROM pgsched.workers WHERE NOT advertises_waits) THEN
        PERFORM pg_notify('pgsched', queue_name) FROM unnest(queues) AS queue_name;
        RETURN NULL;
    END IF;
    FOREACH q IN ARRAY queues LOOP
        h := hashtext(q);
        -- Held to commit: a worker about to sleep waits for this insert (see 0027).
        IF pg_try_advisory_xact_lock_shared(1885827941, h) THEN
            IF pg_try_advisory_lock(1885827959, h) THEN
                PERFORM pg_advisory_unlock(1885827959, h);
                CONTINUE;  -- nobody waits on q: its workers' next claim finds the run
            END IF;
        END IF;
        -- One per queue and transaction: PostgreSQL drops a repeated (channel, payload).
        PERFORM pg_notify('pgsched', q);
    END LOOP;
    RETURN NULL;
END;
$$;

DROP TRIGGER runs_inserted ON pgsched.runs;
DROP TRIGGER runs_tenant_inserted ON pgsched.runs;

-- A row trigger whose WHEN is false costs no function call: only a bad row reaches it.
CREATE TRIGGER runs_inserted_checked
    AFTER INSERT ON pgsched.runs
    FOR EACH ROW
    WHEN (NEW.status NOT IN ('queued', 'waiting') OR NEW.attempt <> 0)
    EXECUTE FUNCTION pgsched.run_inserted_refused();

CREATE TRIGGER runs_inserted
    AFTER INSERT ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_inserted_v2();

-- Tenant quotas and usage (issue #14, item 5). Per tenant: at most max_queued runs queued, at
-- most runs_per_day runs created per UTC day; over a quota an INSERT into pgsched.runs is
-- refused whole (SQLSTATE PS429) whatever wrote it: Python, REST, the SQL functions, a plain
-- INSERT, a COPY, the beat. Usage per tenant and UTC day (created, started, succeeded, failed,
-- cancelled, task seconds) is folded by the beat leader into pgsched.tenant_usage, kept 400 days.
--
-- Expand only: new tables, a new trigger beside 0009's runs_inserted (which stays as it is),
-- and a partial index. The previous release's code inserts runs the same way; its inserts meet
-- the quotas too, which is the point. Building the index reads the runs table once under a
-- SHARE lock: every write to runs (enqueue, claim, completion) waits for it, reads do not; 210 ms
-- for 10^6 runs here. 0010's index was built the same way.

CREATE TABLE pgsched.tenants (
    name         text PRIMARY KEY,
    max_queued   integer,
    runs_per_day integer,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- Written out as runs' tenant check is (0009): no function calls in a check.
    CONSTRAINT tenant_name_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(name) <= 63),
    -- 0 is a quota too: the tenant may queue (or create) nothing.
    CONSTRAINT tenant_max_queued_must_not_be_negative CHECK (max_queued >= 0),
    CONSTRAINT tenant_runs_per_day_must_not_be_negative CHECK (runs_per_day >= 0)
);

-- Runs created per quota'd tenant and UTC day: the runs_per_day counter, written under the
-- tenant's quota-row lock (so only tenants with a quota ever wait on it). Kept 2 days.
CREATE TABLE pgsched.tenant_days (
    tenant  text NOT NULL,
    day     date NOT NULL,
    created bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);

-- Runs created per tenant and day, appended by every INSERT statement with tenant runs (one
-- row per tenant per statement, no row locked: enqueuers never wait on each other), folded
-- into tenant_usage and deleted by the beat leader.
CREATE TABLE pgsched.tenant_usage_log (
    tenant  text NOT NULL,
    day     date NOT NULL,
    created integer NOT NULL
);

-- The bill's figures per tenant and UTC day (see docs/guides/tenant-quotas.md for each one's
-- exact definition). Kept 400 days.
CREATE TABLE pgsched.tenant_usage (
    tenant    text NOT NULL,
    day       date NOT NULL,
    created   bigint NOT NULL DEFAULT 0,
    started   bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    task_s    float8 NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);

-- How far the leader has folded finished runs (finished_at below this is counted). One row.
CREATE TABLE pgsched.tenant_usage_fold (
    only_row       boolean PRIMARY KEY DEFAULT true CONSTRAINT tenant_usage_fold_has_one_row CHECK (only_row),
    finished_until timestamptz NOT NULL
);
INSERT INTO pgsched.tenant_usage_fold (finished_until) VALUES (now());

-- A tenant's queued runs, counted by the quota check: only runs with a tenant are in it.
CREATE INDEX runs_tenant_queued_idx ON pgsched.runs (tenant) WHERE status = 'queued' AND tenant IS NOT NULL;

-- An instant from text, NULL if it is not one (errors entries are jsonb anyone may write).
CREATE FUNCTION pgsched.instant_or_null(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;

-- Per INSERT statement: log the tenant runs created (usage), then check the quotas of the
-- tenants that have one. Those tenants' quota rows are locked in name order (two statements
-- for the same tenants queue up rather than deadlock), then counted under the lock with a fresh
-- snapshot: exact with any number of concurrent enqueuers. Their day counter is written even
-- for max_queued alone, so a REPEATABLE READ enqueuer racing another fails to serialize rather
-- than count from a stale snapshot. A run without a tenant costs one scan of the statement's
-- rows and an INSERT of nothing.
CREATE FUNCTION pgsched.runs_tenant_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    q record;
    total bigint;
BEGIN
    IF NOT EXISTS (SELECT FROM new_runs WHERE tenant IS NOT NULL) THEN
        RETURN NULL;  -- the fast exit: measured +30 us per single INSERT without it, +N us with it
    END IF;
    INSERT INTO pgsched.tenant_usage_log (tenant, day, created)
    SELECT tenant, today, count(*) FROM new_runs WHERE tenant IS NOT NULL GROUP BY tenant;
    FOR q IN
        SELECT t.name, t.max_queued, t.runs_per_day, n.adding
        FROM pgsched.tenants AS t
        JOIN (SELECT tenant, count(*) AS adding FROM new_runs WHERE tenant IS NOT NULL GROUP BY tenant) AS n
          ON n.tenant = t.name
        WHERE t.max_queued IS NOT NULL OR t.runs_per_day IS NOT NULL
        ORDER BY t.name
        FOR UPDATE OF t
    LOOP
        UPDATE pgsched.tenant_days SET created = created + q.adding WHERE tenant = q.name AND day = today
        RETURNING created INTO total;
        IF NOT FOUND THEN
            -- The tenant's first runs today since it has a quota: count what it created before
            -- (the folded usage and the log, which holds this statement's runs already) once.
            SELECT coalesce(sum(c), 0) INTO total FROM (
                SELECT created AS c FROM pgsched.tenant_usage WHERE tenant = q.name AND day = today
                UNION ALL
                SELECT created FROM pgsched.tenant_usage_log WHERE tenant = q.name AND day = today
            ) AS before;
            -- ON CONFLICT: a REPEATABLE READ enqueuer that cannot see a row another committed
            -- fails to serialize here (retryable), where a plain INSERT would be a unique violation.
            INSERT INTO pgsched.tenant_days AS d (tenant, day, created) VALUES (q.name, today, total)
            ON CONFLICT (tenant, day) DO UPDATE SET created = d.created + q.adding
            RETURNING d.created INTO total;
        END IF;
        IF total > q.runs_per_day THEN
            RAISE EXCEPTION 'tenant % is over its quota runs_per_day = %: % runs created today (UTC), this statement adds %; nothing was inserted',
                q.name, q.runs_per_day, total - q.adding, q.adding
                USING ERRCODE = 'PS429', SCHEMA = 'pgsched', TABLE = 'tenants', COLUMN = 'runs_per_day',
                      DETAIL = jsonb_build_object('tenant', q.name, 'quota', 'runs_per_day', 'limit', q.runs_per_day,
                                                 'count', total - q.adding, 'adding', q.adding)::text,
                      HINT = 'the count starts again at 00:00 UTC; `pgsched tenants set` changes the quota';
        END IF;
        IF q.max_queued IS NOT NULL THEN
            -- The statement's own runs are visible here (runs_tenant_queued_idx, index only).
            SELECT count(*) INTO total FROM pgsched.runs WHERE tenant = q.name AND status = 'queued';
            IF total > q.max_queued THEN
                RAISE EXCEPTION 'tenant % is over its quota max_queued = %: % runs queued, this statement adds %; nothing was inserted',
                    q.name, q.max_queued, greatest(total - q.adding, 0), q.adding
                    USING ERRCODE = 'PS429', SCHEMA = 'pgsched', TABLE = 'tenants', COLUMN = 'max_queued',
                          DETAIL = jsonb_build_object('tenant', q.name, 'quota', 'max_queued', 'limit', q.max_queued,
                                                     'count', greatest(total - q.adding, 0), 'adding', q.adding)::text,
                          HINT = 'retry once workers have started some of its queued runs; `pgsched tenants set` changes the quota';
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_tenant_inserted
    AFTER INSERT ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_tenant_inserted();

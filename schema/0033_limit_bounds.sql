-- Limits that do not bind cost (almost) nothing (issue #14, "drain >= 0.9x"). The limited claim
-- (v1, v2) counted the running runs of its queue and task at every claim through
-- runs_lease_idx, and every run claimed within the last lease period leaves an entry there
-- until vacuum: after a 30,000-run drain, with nothing running, that count read 1,576 buffers
-- and took 2.8 ms against 0.15 ms for the claim's own index walk.
--
-- Now each limited queue's and task's settings row keeps running_bound: an upper bound of its
-- runs running, written by the claim under the row's lock (the exact count when it counted,
-- else the bound as it was, plus the runs it claimed). A run that ends never lowers it; the
-- next exact count does. The bound never refuses a run by itself: when it cannot rule a limit
-- out (bound + the claim's size above max_running or key_max_running) the claim counts from
-- the rows as before, so the limit holds exactly, and a SIGKILLed worker's slots come back when
-- its leases run out, as before: a leaked slot is only ever a bound too high, which the next
-- count puts right. While the limits are far from binding the claim counts nothing.
--
-- The bound holds only if every claim of the queue's (task's) runs adds to it. So it is not
-- trusted (the claim counts, and writes NULL): at an injected instant (tests); while a worker
-- of an older release is registered (workers.bounds_claims false: its claims by v1/v2 do not
-- add); and for BOUND_SETTLE (10 s) after the row's limits change (limits_changed_at, set by a
-- trigger with the bound cleared), while workers still claim by their old copy of the settings.
--
-- Expand only: columns with constant or now() defaults (no rewrite), a partial index on the
-- few worker rows, a trigger, a new function. v1 and v2 are unchanged; the previous release's
-- workers keep calling them and leave bounds_claims false, which keeps v3 counting.

ALTER TABLE pgsched.queues
    ADD COLUMN running_bound integer,
    ADD COLUMN limits_changed_at timestamptz NOT NULL DEFAULT now();

ALTER TABLE pgsched.task_settings
    ADD COLUMN running_bound integer,
    ADD COLUMN limits_changed_at timestamptz NOT NULL DEFAULT now();

-- This release's workers claim by run_claim_limited_v3, which keeps the bounds; a row an older
-- release wrote is false, and makes v3 count at every claim as v2 does.
ALTER TABLE pgsched.workers ADD COLUMN bounds_claims boolean NOT NULL DEFAULT false;

-- v3's "is an older worker registered?": empty once every worker is new.
CREATE INDEX workers_not_bounding_idx ON pgsched.workers (id) WHERE NOT bounds_claims;

-- A change of the limits (not the claim's writes of tokens, cursor or bound) clears the bound
-- and restarts its settling time.
CREATE FUNCTION pgsched.limits_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.running_bound := NULL;
    NEW.limits_changed_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER queues_limits_changed
    BEFORE UPDATE OF name, paused, max_running, rate, burst, key_max_running, fair ON pgsched.queues
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.limits_changed();

CREATE TRIGGER task_settings_limits_changed
    BEFORE UPDATE OF task, paused, max_running, rate, burst ON pgsched.task_settings
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.limits_changed();

-- Tenant max_running (issue #14, item 5): at most that many of the tenant's runs running at
-- once over every queue and worker (NULL: no limit; at least 1, as a queue's or a task's). Its
-- runs are claimed only by run_claim_limited_v3 with p_tenant, which counts them (through
-- runs_tenant_running_idx) under the tenant's claim lock; every other claim of this release
-- (run_claim, v3 without p_tenant) passes them over. The previous release's claims know nothing
-- of it: it holds once every worker runs this release. A change wakes the workers, as a queue's.
ALTER TABLE pgsched.tenants
    ADD COLUMN max_running integer,
    ADD CONSTRAINT tenant_max_running_must_be_at_least_1 CHECK (max_running >= 1);

-- A tenant's running runs, for its max_running count: only runs with a tenant are in it, so a
-- claim of runs without one writes no entry here. Built under a SHARE lock, as 0026's was.
CREATE INDEX runs_tenant_running_idx ON pgsched.runs (tenant) WHERE status = 'running' AND tenant IS NOT NULL;

CREATE FUNCTION pgsched.notify_tenant_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsched_queues', 'tenant:' || coalesce(NEW.name, OLD.name));
    RETURN NULL;
END;
$$;

CREATE TRIGGER tenants_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF name, max_running ON pgsched.tenants
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.notify_tenant_changed();

-- run_claim_limited_v2, with the counts of the running runs (the queue's, the task's, each
-- concurrency key's) made only when the bound cannot rule their limit out, and with p_tenant:
-- the runs of that tenant only, within its max_running (NULL: no tenant with a max_running).
CREATE FUNCTION pgsched.run_claim_limited_v3(
    p_queues       text[],
    p_task         text,
    p_queue_locked boolean,
    p_limit        integer,
    p_worker_id    bigint,
    p_lease_s      float8,
    p_now          timestamptz,
    p_only_tasks   text[],
    p_skip_tasks   text[],
    p_skip_flush   boolean,
    p_tenant       text
) RETURNS TABLE (
    locked            boolean,
    headroom          integer,
    more_due          boolean,
    held_by_key       boolean,
    queue_tokens      float8,
    queue_per_s       float8,
    task_tokens       float8,
    task_per_s        float8,
    run_id            bigint,
    run_task          text,
    run_args          jsonb,
    run_attempt       integer,
    run_max_attempts  integer,
    run_queue         text,
    run_trace_context text,
    run_request_id    text,
    run_priority      smallint,
    run_run_at        timestamptz,
    run_has_parents   boolean
) LANGUAGE plpgsql
-- No JIT: once PL/pgSQL's plan cache took the claim statement's generic plan (after five
-- calls), its estimates (the laterals' LIMIT from a CTE it cannot see: a tenth of the queued
-- runs) crossed jit_above_cost, and every claim compiled its expressions anew: 0.42 s of a
-- 0.43 s claim, a drain with limits that do not bind at 0.12-0.22x. A claim reads a few hundred
-- rows at most; JIT never pays for it.
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    q_max     integer;
    q_key     integer;
    q_tokens  float8;
    q_per_s   float8;
    q_fair    boolean := false;
    q_after   text;
    t_max     integer;
    t_tokens  float8;
    t_per_s   float8;
    v_top     smallint;
    v_groups  text[] := '{}';
    v_per     integer := 0;
    -- The bounds (0033): q_bound/t_bound as the settings rows hold them, trusted or not; which
    -- counts this claim must make (v_count_q: the queue's running runs; v_key: key_max_running
    -- if some key could bind, else NULL; v_count_t: the task's running runs).
    q_bound   integer;
    q_trusted boolean := false;
    t_bound   integer;
    t_trusted boolean := false;
    v_count_q boolean := false;
    v_key     integer;
    v_count_t boolean := false;
    v_settled boolean;
    n_max     integer;  -- p_tenant's max_running
    -- How long after a change of a row's limits its bound is not trusted: the workers reload
    -- their settings on the change's NOTIFY, or at their poll (2 s by default) if they missed
    -- it, and until then a worker may still claim a newly limited task outside its limit's
    -- claim (its skip list is the worker's copy).
    BOUND_SETTLE constant interval := '10 seconds';
BEGIN
    IF p_skip_flush THEN  -- through a transaction-mode pooler: this transaction only
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- The rows that apply, locked (SKIP LOCKED: another worker's turn is no wait). FOR UPDATE
    -- returns each as the last holder committed it, tokens and fair cursor included.
    IF p_queue_locked THEN
        SELECT s.max_running, s.key_max_running, pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, v_now),
               pgsched.rate_per_s(s.rate), s.fair, s.fair_after, s.running_bound, s.limits_changed_at <= now() - BOUND_SETTLE
        INTO q_max, q_key, q_tokens, q_per_s, q_fair, q_after, q_bound, q_trusted
        FROM pgsched.queues AS s
        WHERE s.name = p_queues[1] AND NOT s.paused
          AND (s.max_running IS NOT NULL OR s.rate IS NOT NULL OR s.key_max_running IS NOT NULL OR s.fair)
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN QUERY SELECT false, 0, false, false, NULL::float8, NULL::float8, NULL::float8, NULL::float8,
                                NULL::bigint, NULL::text, NULL::jsonb, NULL::integer, NULL::integer, NULL::text,
                                NULL::text, NULL::text, NULL::smallint, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    IF p_task IS NOT NULL THEN
        SELECT s.max_running, pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, v_now), pgsched.rate_per_s(s.rate),
               s.running_bound, s.limits_changed_at <= now() - BOUND_SETTLE
        INTO t_max, t_tokens, t_per_s, t_bound, t_trusted
        FROM pgsched.task_settings AS s
        WHERE s.task = p_task AND NOT s.paused AND (s.max_running IS NOT NULL OR s.rate IS NOT NULL)
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN QUERY SELECT false, 0, false, false, NULL::float8, NULL::float8, NULL::float8, NULL::float8,
                                NULL::bigint, NULL::text, NULL::jsonb, NULL::integer, NULL::integer, NULL::text,
                                NULL::text, NULL::text, NULL::smallint, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
    END IF;
    -- A tenant's max_running holds over every queue. Its claims take turns by a transaction
    -- advisory lock, not its row's: an enqueue of the tenant's runs holds the row (the quota
    -- check) to its commit, maybe in a long transaction of the caller's, and must not stop them.
    IF p_tenant IS NOT NULL THEN
        SELECT s.max_running INTO n_max
        FROM pgsched.tenants AS s
        WHERE s.name = p_tenant AND s.max_running IS NOT NULL
          AND pg_try_advisory_xact_lock(1885827950, hashtext(p_tenant));
        IF NOT FOUND THEN
            RETURN QUERY SELECT false, 0, false, false, NULL::float8, NULL::float8, NULL::float8, NULL::float8,
                                NULL::bigint, NULL::text, NULL::jsonb, NULL::integer, NULL::integer, NULL::text,
                                NULL::text, NULL::text, NULL::smallint, NULL::timestamptz, NULL::boolean;
            RETURN;
        END IF;
        q_fair := false;  -- one tenant's runs: no turns between tenants to take
    END IF;
    -- A bound is trusted on the real clock only (a claim at an injected instant counts, as v2
    -- did), while no worker of an older release is registered (its claims, by v1/v2, leave the
    -- bounds as they were), and BOUND_SETTLE after the row's limits last changed.
    v_settled := p_now IS NULL AND NOT EXISTS (SELECT FROM pgsched.workers WHERE NOT bounds_claims);
    q_trusted := coalesce(q_trusted AND v_settled, false);
    t_trusted := coalesce(t_trusted AND v_settled, false);
    -- What must be counted from the rows: a limit the bound cannot rule out.
    IF p_queue_locked AND (q_max IS NOT NULL OR q_key IS NOT NULL) THEN
        v_count_q := NOT (q_trusted AND q_bound IS NOT NULL AND q_bound + p_limit <= coalesce(q_max, 2147483647)
                          AND q_bound + p_limit <= coalesce(q_key, 2147483647));
        -- A key's running runs are some of the queue's: within the bound, no key can bind.
        v_key := CASE WHEN q_trusted AND q_bound IS NOT NULL AND q_bound + p_limit <= q_key THEN NULL ELSE q_key END;
    END IF;
    IF p_task IS NOT NULL AND t_max IS NOT NULL THEN
        v_count_t := NOT (t_trusted AND t_bound IS NOT NULL AND t_bound + p_limit <= t_max);
    END IF;
    IF q_fair THEN
        -- The first due priority (the head of the claim index), then its groups in turn.
        SELECT priority INTO v_top
        FROM pgsched.runs
        WHERE status = 'queued' AND queue = p_queues[1]
          AND run_at <= v_now
          AND (expires_at IS NULL OR expires_at > v_now)
          AND (p_task IS NULL OR task = p_task)
          AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
          AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
        ORDER BY priority, run_at, id
        LIMIT 1;
        IF v_top IS NOT NULL THEN
            v_groups := ARRAY(
                WITH RECURSIVE ahead (grp, n) AS (
                    SELECT (SELECT coalesce(tenant, '~' || concurrency_key) COLLATE "C"
                            FROM pgsched.runs
                            WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                              AND queue = p_queues[1] AND priority = v_top
                              AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" > coalesce(q_after, '')
                            ORDER BY 1 LIMIT 1), 1
                    UNION ALL
                    SELECT (SELECT coalesce(tenant, '~' || concurrency_key) COLLATE "C"
                            FROM pgsched.runs
                            WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                              AND queue = p_queues[1] AND priority = v_top
                              AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" > a.grp
                            ORDER BY 1 LIMIT 1), a.n + 1
                    FROM ahead AS a WHERE a.grp IS NOT NULL AND a.n < p_limit
                ), wrapped (grp, n) AS (
                    -- From the first group again, up to the cursor (the turn wraps round).
                    SELECT (SELECT coalesce(tenant, '~' || concurrency_key) COLLATE "C"
                            FROM pgsched.runs
                            WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                              AND queue = p_queues[1] AND priority = v_top
                              AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" <= q_after
                            ORDER BY 1 LIMIT 1), 1
                    WHERE q_after IS NOT NULL
                    UNION ALL
                    SELECT (SELECT coalesce(tenant, '~' || concurrency_key) COLLATE "C"
                            FROM pgsched.runs
                            WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                              AND queue = p_queues[1] AND priority = v_top
                              AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" > r.grp
                              AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" <= q_after
                            ORDER BY 1 LIMIT 1), r.n + 1
                    FROM wrapped AS r WHERE r.grp IS NOT NULL AND r.n < p_limit
                )
                SELECT grp FROM (SELECT grp, n FROM ahead WHERE grp IS NOT NULL
                                 UNION ALL
                                 SELECT grp, n + p_limit FROM wrapped WHERE grp IS NOT NULL) AS g
                ORDER BY n
                LIMIT p_limit);
            -- Not the tenants with a max_running: their own claims take their runs.
            v_groups := ARRAY(
                SELECT g.grp FROM unnest(v_groups) WITH ORDINALITY AS g(grp, at)
                WHERE NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = g.grp AND lt.max_running IS NOT NULL)
                ORDER BY g.at);
            -- Each group's first few: enough for a full claim from two groups, ~2 runs per slot
            -- read in all whatever the number of groups (the one without tenant or key included).
            v_per := least(p_limit, ceil(2.0 * p_limit / (cardinality(v_groups) + 1))::integer + 1);
        END IF;
    END IF;
    -- A statement of its own, so a snapshot of its own, taken after the locks: it sees every
    -- claim the previous holder committed.
    RETURN QUERY
    WITH running AS MATERIALIZED (
        SELECT count(*) FILTER (WHERE queue = ANY (p_queues)) AS in_queue,
               count(*) FILTER (WHERE task = p_task) AS of_task
        FROM pgsched.runs
        WHERE lease_expires_at > v_now AND status = 'running'
          AND (v_count_q OR v_count_t)
    ), tenant_running AS MATERIALIZED (
        -- The tenant's running runs in every queue (runs_tenant_running_idx).
        SELECT count(*) AS n
        FROM pgsched.runs
        WHERE p_tenant IS NOT NULL AND tenant = p_tenant AND status = 'running' AND lease_expires_at > v_now
    ), headroom AS MATERIALIZED (
        SELECT greatest(0, least(
                   2147483647,
                   n_max - (SELECT n FROM tenant_running),
                   CASE WHEN v_count_q THEN q_max - running.in_queue END,
                   CASE WHEN v_count_t THEN t_max - running.of_task END,
                   floor(q_tokens),
                   floor(t_tokens)))::integer AS n
        FROM running
    ), take AS MATERIALIZED (
        SELECT least(p_limit, headroom.n) AS n FROM headroom
    ), key_running AS MATERIALIZED (
        SELECT concurrency_key AS key, count(*) AS n
        FROM pgsched.runs
        WHERE v_key IS NOT NULL
          AND lease_expires_at > v_now AND status = 'running'
          AND queue = ANY (p_queues) AND concurrency_key IS NOT NULL
        GROUP BY concurrency_key
    ), next AS MATERIALIZED (
        -- turn: the place in its group (0: not a fair claim, claim order alone); grp_at: the
        -- group's place in this turn (0 for the runs without tenant or key).
        SELECT c.id, c.priority, c.run_at, c.concurrency_key, 0::bigint AS turn, 0::bigint AS grp_at, NULL::text AS grp
        FROM unnest(p_queues) AS q(name)
             LEFT JOIN pgsched.queues AS s ON s.name = q.name,
             LATERAL (
                 SELECT id, priority, run_at, concurrency_key
                 FROM pgsched.runs
                 WHERE status = 'queued' AND queue = q.name
                   AND run_at <= v_now
                   AND (expires_at IS NULL OR expires_at > v_now)
                   AND (p_task IS NULL OR task = p_task)
                   AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                   AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                   AND (p_tenant IS NULL OR tenant = p_tenant)
                   AND (p_tenant IS NOT NULL OR tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY priority, run_at, id
                 LIMIT (SELECT n + 1 FROM take)
                 FOR UPDATE SKIP LOCKED
             ) AS c
        WHERE v_key IS NULL AND NOT q_fair
          AND (p_queue_locked OR s.name IS NULL
               OR (NOT s.paused AND s.max_running IS NULL AND s.rate IS NULL AND s.key_max_running IS NULL
                   AND NOT s.fair))
        UNION ALL
        SELECT c.id, c.priority, c.run_at, c.concurrency_key, 0, 0, NULL
        FROM unnest(p_queues) AS q(name),
             LATERAL (
                 SELECT id, priority, run_at, concurrency_key
                 FROM pgsched.runs
                 WHERE status = 'queued' AND queue = q.name
                   AND run_at <= v_now
                   AND (expires_at IS NULL OR expires_at > v_now)
                   AND (p_task IS NULL OR task = p_task)
                   AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                   AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                   AND (p_tenant IS NULL OR tenant = p_tenant)
                   AND (p_tenant IS NOT NULL OR tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY priority, run_at, id
                 LIMIT (SELECT n + 101 FROM take)
             ) AS c
        WHERE v_key IS NOT NULL AND NOT q_fair
        UNION ALL
        -- A fair queue: the first v_per due runs of each group of this turn.
        SELECT c.id, c.priority, c.run_at, c.concurrency_key, c.turn, g.at, g.grp
        FROM unnest(v_groups) WITH ORDINALITY AS g(grp, at),
             LATERAL (
                 SELECT id, priority, run_at, concurrency_key, row_number() OVER (ORDER BY run_at, id) AS turn
                 FROM pgsched.runs
                 WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                   AND queue = p_queues[1] AND priority = v_top
                   AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" = g.grp
                   AND run_at <= v_now
                   AND (expires_at IS NULL OR expires_at > v_now)
                   AND (p_task IS NULL OR task = p_task)
                   AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                   AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                   AND (p_tenant IS NULL OR tenant = p_tenant)
                   AND (p_tenant IS NOT NULL OR tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY run_at, id
                 LIMIT v_per
             ) AS c
        WHERE q_fair
        UNION ALL
        SELECT w.id, w.priority, w.run_at, w.concurrency_key, row_number() OVER (ORDER BY w.run_at, w.id), 0, NULL
        FROM (
            SELECT id, priority, run_at, concurrency_key, tenant
            FROM pgsched.runs
            WHERE q_fair AND status = 'queued' AND queue = p_queues[1] AND priority = v_top
              AND run_at <= v_now
              AND (expires_at IS NULL OR expires_at > v_now)
              AND (p_task IS NULL OR task = p_task)
              AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
              AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
            ORDER BY priority, run_at, id
            LIMIT 200
        ) AS w
        WHERE w.tenant IS NULL AND w.concurrency_key IS NULL
    ), ranked AS MATERIALIZED (
        SELECT next.*, row_number() OVER (ORDER BY turn, grp_at, priority, run_at, id) AS place
        FROM (SELECT *, row_number() OVER (PARTITION BY concurrency_key ORDER BY priority, run_at, id) AS nth
              FROM next) AS next
             LEFT JOIN key_running AS k ON k.key = next.concurrency_key
        WHERE v_key IS NULL OR next.concurrency_key IS NULL
           OR coalesce(k.n, 0) + next.nth <= v_key
    ), taken AS MATERIALIZED (
        SELECT id, grp, place FROM ranked WHERE place <= (SELECT n FROM take)
    ), claimed AS (
        UPDATE pgsched.runs AS r
        SET status = 'running',
            attempt = r.attempt + 1,
            worker_id = p_worker_id,
            started_at = v_now,
            lease_expires_at = v_now + make_interval(secs => p_lease_s)
        -- By primary key, whatever the planner guesses of taken's size: joined to taken, the
        -- generic plan (taken estimated at a third of ranked, itself 10% of the queued runs)
        -- hashed taken against a sequential scan of every run, 27 of a claim's 41 ms with
        -- 30,000 runs in the table; a scan that grows with the finished runs kept. The status
        -- test is written so that it matches no partial index: as `status = 'queued'` it let
        -- the planner AND the primary key with a bitmap of the whole claim index (19,500
        -- entries read for a claim of 100 from a freshly filled table, 115 ms a claim).
        WHERE r.id = ANY (ARRAY(SELECT id FROM taken)) AND r.status::text = 'queued'
        RETURNING r.id, r.task, r.args, r.attempt, r.max_attempts, r.queue, r.trace_context, r.request_id,
                  r.priority, r.run_at, r.parents_pending IS NOT NULL AS has_parents
    ), bounds AS MATERIALIZED (
        -- The bounds after this claim: counted (exact) or as they were, plus what it claimed;
        -- NULL while not trusted (the next claim counts).
        SELECT CASE WHEN NOT q_trusted OR (q_max IS NULL AND q_key IS NULL) THEN NULL
                    WHEN v_count_q THEN running.in_queue + n.claimed
                    ELSE q_bound + n.claimed END::integer AS queue_bound,
               CASE WHEN NOT t_trusted OR t_max IS NULL THEN NULL
                    WHEN v_count_t THEN running.of_task + n.claimed
                    ELSE t_bound + n.claimed END::integer AS task_bound
        FROM running CROSS JOIN (SELECT count(*) AS claimed FROM claimed) AS n
    ), queue_spent AS (
        -- One UPDATE of the row for all three (two in one statement: only one would take effect).
        -- Its conditions name no column, so they gate the statement (one-time filters): a
        -- claim that changes nothing does not even read the row (q_bound: the row's bound as
        -- this claim locked it). Naming running_bound there made every idle claim read it.
        UPDATE pgsched.queues
        SET running_bound = CASE WHEN p_queue_locked THEN (SELECT queue_bound FROM bounds) ELSE running_bound END,
            tokens = CASE WHEN q_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)
                          THEN q_tokens - (SELECT count(*) FROM claimed) ELSE tokens END,
            tokens_at = CASE WHEN q_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)
                             THEN greatest(tokens_at, v_now) ELSE tokens_at END,
            -- The next turn starts after the last group served; after the last group visited
            -- when the claim had room for more (every group of this turn was served, or had
            -- no due run: a turn of groups whose runs are all deferred must not repeat forever).
            fair_after = CASE WHEN NOT q_fair OR cardinality(v_groups) = 0 THEN fair_after
                              WHEN (SELECT count(*) FROM taken) < (SELECT n FROM take)
                              THEN v_groups[cardinality(v_groups)]
                              ELSE coalesce((SELECT grp FROM taken WHERE grp IS NOT NULL ORDER BY place DESC LIMIT 1),
                                            fair_after) END
        WHERE name = (p_queues)[1]
          AND ((q_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)) OR (q_fair AND cardinality(v_groups) > 0)
               OR (p_queue_locked AND q_bound IS DISTINCT FROM (SELECT queue_bound FROM bounds)))
    ), task_spent AS (
        UPDATE pgsched.task_settings
        SET tokens = CASE WHEN t_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)
                          THEN t_tokens - (SELECT count(*) FROM claimed) ELSE tokens END,
            tokens_at = CASE WHEN t_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)
                             THEN greatest(tokens_at, v_now) ELSE tokens_at END,
            running_bound = (SELECT task_bound FROM bounds)
        WHERE task = p_task
          AND ((t_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed))
               OR t_bound IS DISTINCT FROM (SELECT task_bound FROM bounds))
    )
    -- more_due: in a fair queue also whenever the turn took some (a group's first few, or the
    -- first priority, may have run out while other runs are due: look again soon), or visited
    -- as many groups as it could (more may follow the last).
    SELECT true, h.n,
           (SELECT count(*) FROM ranked) > t.n OR (q_fair AND (EXISTS (SELECT FROM taken) OR cardinality(v_groups) >= p_limit)),
           (SELECT count(*) FROM next) > (SELECT count(*) FROM ranked),
               q_tokens, q_per_s, t_tokens, t_per_s,
               c.id, c.task, c.args, c.attempt, c.max_attempts, c.queue, c.trace_context, c.request_id,
               c.priority, c.run_at, c.has_parents
        FROM headroom AS h CROSS JOIN take AS t LEFT JOIN claimed AS c ON true;
END;
$$;

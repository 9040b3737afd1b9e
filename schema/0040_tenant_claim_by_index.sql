-- A tenant's claim finds its own runs through an index (issue #14, the tenant's max_running
-- of 0033). run_claim_limited_v3 with p_tenant walked the claim index of its queues with a
-- filter on the tenant: past every other run queued ahead of the tenant's, at every claim round
-- of every worker and for every tenant with a max_running, even one with no run queued (20,000
-- runs of others queued: ~10 ms a claim, measured). v4 takes the tenant's next due runs from
-- runs_fair_idx (0028), where a queue's runs of one tenant and priority lie together in claim
-- order: a descent per priority present in the queue, and then only the tenant's own runs.
--
-- The other claims of a limited queue or task walked past such a tenant's runs at every claim
-- when they were queued ahead of the rest (a heap fetch each: 10,000 of them, ~4 ms a claim on
-- a quiet machine, 10-20 ms at load 8). v4 takes run_claim's cursor (pgsched.claim_cursor) for
-- its claim in claim order, so they are walked past once a second per worker, on its full pass,
-- as run_claim already did.
--
-- Expand only: a new function beside v3, which the previous release's workers keep calling.
-- Without p_tenant and from the start, v4 claims as v3 does.

-- run_claim_limited_v3, with p_tenant's runs read from runs_fair_idx (tenant_next).
CREATE FUNCTION pgsched.run_claim_limited_v4(
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
    p_tenant       text,
    -- Where each queue's walk starts (aligned with p_queues; NULL or NULL elements: from the
    -- start), as run_claim's cursor (pgsched.claim_cursor): strictly after the last run this
    -- fetcher's claim of the unit took there, plus that priority's runs due from
    -- p_from_run_at up to it. Only the claim in claim order uses them (not a fair queue's, not
    -- the key window's, not a tenant's).
    p_after_priority smallint[],
    p_after_run_at   timestamptz[],
    p_after_id       bigint[],
    p_from_run_at    timestamptz[]
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
    ), tenant_next AS MATERIALIZED (
        -- p_tenant's next due runs in each queue (0040): per priority present in the queue's
        -- part of runs_fair_idx (a descent each, ascending), the tenant's runs of that priority
        -- in (run_at, id) order (one descent: the group's runs are together there), so the
        -- claim visits its own runs only. v3 walked the claim index with a filter on the
        -- tenant, past every other run queued ahead of them (20,000: ~10 ms a claim, at every
        -- claim round of every worker, even for a tenant with no run queued). Read, not locked:
        -- the tenant's claims take turns under its claim lock, no claim of this release takes
        -- its runs otherwise, and the UPDATE takes only the runs still queued.
        SELECT c.id, c.priority, c.run_at, c.concurrency_key
        FROM unnest(p_queues) AS q(name)
             LEFT JOIN pgsched.queues AS s ON s.name = q.name,
             LATERAL (
                 WITH RECURSIVE priorities (p) AS (
                     SELECT (SELECT priority FROM pgsched.runs
                             WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                               AND queue = q.name
                             ORDER BY priority LIMIT 1)
                     UNION ALL
                     SELECT (SELECT priority FROM pgsched.runs
                             WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                               AND queue = q.name AND priority > pr.p
                             ORDER BY priority LIMIT 1)
                     FROM priorities AS pr WHERE pr.p IS NOT NULL
                 )
                 SELECT r.id, r.priority, r.run_at, r.concurrency_key
                 FROM priorities AS pr,
                      LATERAL (
                          SELECT id, priority, run_at, concurrency_key
                          FROM pgsched.runs
                          WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL)
                            AND queue = q.name AND priority = pr.p
                            AND coalesce(tenant, '~' || concurrency_key) COLLATE "C" = p_tenant
                            AND tenant = p_tenant
                            AND run_at <= v_now
                            AND (expires_at IS NULL OR expires_at > v_now)
                            AND (p_task IS NULL OR task = p_task)
                            AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                            AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                          ORDER BY run_at, id
                          LIMIT (SELECT n + CASE WHEN v_key IS NULL THEN 1 ELSE 101 END FROM take)
                      ) AS r
                 WHERE pr.p IS NOT NULL
                 ORDER BY r.priority, r.run_at, r.id
                 LIMIT (SELECT n + CASE WHEN v_key IS NULL THEN 1 ELSE 101 END FROM take)
             ) AS c
        WHERE p_tenant IS NOT NULL
          AND (p_queue_locked OR s.name IS NULL
               OR (NOT s.paused AND s.max_running IS NULL AND s.rate IS NULL AND s.key_max_running IS NULL
                   AND NOT s.fair))
    ), next AS MATERIALIZED (
        -- turn: the place in its group (0: not a fair claim, claim order alone); grp_at: the
        -- group's place in this turn (0 for the runs without tenant or key).
        -- From each queue's cursor (0040), as run_claim: a limited tenant's runs queued ahead
        -- of the others are walked past on a full pass (once a second per worker), not at
        -- every claim as v3 did (10,000 of them: ~4 ms a claim on a quiet machine).
        SELECT c.id, c.priority, c.run_at, c.concurrency_key, 0::bigint AS turn, 0::bigint AS grp_at, NULL::text AS grp
        FROM unnest(p_queues, p_after_priority, p_after_run_at, p_after_id, p_from_run_at)
                 AS q(name, after_priority, after_run_at, after_id, from_run_at)
             LEFT JOIN pgsched.queues AS s ON s.name = q.name,
             LATERAL (
                 SELECT * FROM (
                     SELECT id, priority, run_at, concurrency_key
                     FROM pgsched.runs
                     WHERE status = 'queued' AND queue = q.name
                       AND priority = q.after_priority AND run_at >= q.from_run_at AND run_at < q.after_run_at
                       AND run_at <= v_now
                       AND (expires_at IS NULL OR expires_at > v_now)
                       AND (p_task IS NULL OR task = p_task)
                       AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                       AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                       AND (tenant IS NULL
                            OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                     ORDER BY priority, run_at, id
                     LIMIT (SELECT n + 1 FROM take)
                     FOR UPDATE SKIP LOCKED
                 ) AS behind
                 UNION ALL
                 SELECT * FROM (
                     SELECT id, priority, run_at, concurrency_key
                     FROM pgsched.runs
                     WHERE status = 'queued' AND queue = q.name
                       AND (priority, run_at, id) > (coalesce(q.after_priority, -32768), coalesce(q.after_run_at, '-infinity'),
                                                     coalesce(q.after_id, 0))
                       AND run_at <= v_now
                       AND (expires_at IS NULL OR expires_at > v_now)
                       AND (p_task IS NULL OR task = p_task)
                       AND (p_only_tasks IS NULL OR task = ANY (p_only_tasks))
                       AND (p_skip_tasks IS NULL OR task <> ALL (p_skip_tasks))
                       AND (tenant IS NULL
                            OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                     ORDER BY priority, run_at, id
                     LIMIT (SELECT n + 1 FROM take)
                     FOR UPDATE SKIP LOCKED
                 ) AS ahead
             ) AS c
        WHERE v_key IS NULL AND NOT q_fair AND p_tenant IS NULL
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
                   AND (tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY priority, run_at, id
                 LIMIT (SELECT n + 101 FROM take)
             ) AS c
        WHERE v_key IS NOT NULL AND NOT q_fair AND p_tenant IS NULL
        UNION ALL
        -- p_tenant's runs (0040): its next due ones, found through runs_fair_idx, not by a walk
        -- of the claim index past every other run of the queues.
        SELECT t.id, t.priority, t.run_at, t.concurrency_key, 0, 0, NULL
        FROM tenant_next AS t
        WHERE p_tenant IS NOT NULL
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
                   AND (tenant IS NULL
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

-- Fair queues (issue #14, item 4): in a queue with `fair` set, the claim interleaves tenants
-- (and, for runs without a tenant, concurrency keys) instead of serving strict id order within
-- a priority, so a tenant with 10 runs behind another's 10,000 starts them at once. Priorities
-- still win: only the runs of the first due priority are interleaved.
--
-- Opt-in per queue: a queue where fairness cannot matter (one tenant, no keys) keeps the plain
-- claim (run_claim) and its speed. A fair queue is claimed like a limited one, under its
-- settings row's lock (run_claim_limited_v2), which also keeps the round-robin cursor
-- (fair_after, the last group served) exact across workers.
--
-- Expand only: two columns with constant defaults (no rewrite), a partial index, a new
-- function, and the settings trigger re-created to also fire on `fair`. The previous
-- release's workers keep calling run_claim and run_claim_limited_v1, which know nothing of
-- `fair`: until they are replaced they claim a fair queue in id order, as before. Building the
-- index reads the runs table once under a SHARE lock (as 0026's did); it holds only the queued
-- runs with a tenant or a key, so runs without either cost an enqueue nothing more.

ALTER TABLE pgsched.queues
    ADD COLUMN fair boolean NOT NULL DEFAULT false,
    ADD COLUMN fair_after text;

-- The fair claim's groups: a tenant, or a concurrency key ('~' and the key: no tenant name
-- starts with '~') for runs without a tenant. "C" collation: the skip scan only needs an
-- order, and "C" compares bytes (cheaper than the database's collation).
CREATE INDEX runs_fair_idx ON pgsched.runs (queue, priority, (coalesce(tenant, '~' || concurrency_key) COLLATE "C"), run_at, id)
    WHERE status = 'queued' AND (tenant IS NOT NULL OR concurrency_key IS NOT NULL);

DROP TRIGGER queues_notify_changed ON pgsched.queues;
CREATE TRIGGER queues_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF name, paused, max_running, rate, burst, key_max_running, fair ON pgsched.queues
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.notify_queue_changed();

-- run_claim_limited_v1 and, for a fair queue, the claim in turns: the first due priority's
-- groups, from the one after fair_after round to it, at most p_limit of them (one descent of
-- runs_fair_idx each, a skip scan); from each the first few due runs (read, not locked: the
-- queue's row lock keeps every other v2 claim of the queue away, and the UPDATE takes only
-- the runs still queued), ranked by their place in their group, then the group's turn. The
-- runs with neither tenant nor key are one group more, first in each turn, looked for among
-- the first FAIR_WINDOW (200) due runs of the priority (a bounded walk of runs_claim_idx).
CREATE FUNCTION pgsched.run_claim_limited_v2(
    p_queues       text[],
    p_task         text,
    p_queue_locked boolean,
    p_limit        integer,
    p_worker_id    bigint,
    p_lease_s      float8,
    p_now          timestamptz,
    p_only_tasks   text[],
    p_skip_tasks   text[],
    p_skip_flush   boolean
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
) LANGUAGE plpgsql AS $$
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
BEGIN
    IF p_skip_flush THEN  -- through a transaction-mode pooler: this transaction only
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- The rows that apply, locked (SKIP LOCKED: another worker's turn is no wait). FOR UPDATE
    -- returns each as the last holder committed it, tokens and fair cursor included.
    IF p_queue_locked THEN
        SELECT s.max_running, s.key_max_running, pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, v_now),
               pgsched.rate_per_s(s.rate), s.fair, s.fair_after
        INTO q_max, q_key, q_tokens, q_per_s, q_fair, q_after
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
        SELECT s.max_running, pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, v_now), pgsched.rate_per_s(s.rate)
        INTO t_max, t_tokens, t_per_s
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
          AND (q_max IS NOT NULL OR t_max IS NOT NULL)
    ), headroom AS MATERIALIZED (
        SELECT greatest(0, least(
                   2147483647,
                   q_max - running.in_queue,
                   t_max - running.of_task,
                   floor(q_tokens),
                   floor(t_tokens)))::integer AS n
        FROM running
    ), take AS MATERIALIZED (
        SELECT least(p_limit, headroom.n) AS n FROM headroom
    ), key_running AS MATERIALIZED (
        SELECT concurrency_key AS key, count(*) AS n
        FROM pgsched.runs
        WHERE q_key IS NOT NULL
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
                 ORDER BY priority, run_at, id
                 LIMIT (SELECT n + 1 FROM take)
                 FOR UPDATE SKIP LOCKED
             ) AS c
        WHERE q_key IS NULL AND NOT q_fair
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
                 ORDER BY priority, run_at, id
                 LIMIT (SELECT n + 101 FROM take)
             ) AS c
        WHERE q_key IS NOT NULL AND NOT q_fair
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
        WHERE q_key IS NULL OR next.concurrency_key IS NULL
           OR coalesce(k.n, 0) + next.nth <= q_key
    ), taken AS MATERIALIZED (
        SELECT id, grp, place FROM ranked WHERE place <= (SELECT n FROM take)
    ), claimed AS (
        UPDATE pgsched.runs AS r
        SET status = 'running',
            attempt = r.attempt + 1,
            worker_id = p_worker_id,
            started_at = v_now,
            lease_expires_at = v_now + make_interval(secs => p_lease_s)
        FROM taken
        WHERE r.id = taken.id AND r.status = 'queued'
        RETURNING r.id, r.task, r.args, r.attempt, r.max_attempts, r.queue, r.trace_context, r.request_id,
                  r.priority, r.run_at, r.parents_pending IS NOT NULL AS has_parents
    ), queue_spent AS (
        -- One UPDATE of the row for both (two in one statement: only one would take effect).
        UPDATE pgsched.queues
        SET tokens = CASE WHEN q_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)
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
          AND ((q_tokens IS NOT NULL AND EXISTS (SELECT FROM claimed)) OR (q_fair AND cardinality(v_groups) > 0))
    ), task_spent AS (
        UPDATE pgsched.task_settings
        SET tokens = t_tokens - (SELECT count(*) FROM claimed),
            tokens_at = greatest(tokens_at, v_now)
        WHERE t_tokens IS NOT NULL AND task = p_task AND EXISTS (SELECT FROM claimed)
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

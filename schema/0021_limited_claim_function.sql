-- The claim of runs behind limits in one round trip (issue #14): 0020's claim was a
-- transaction of four (BEGIN, the row locks, the claim, COMMIT), and limits that never bind
-- cost a drain 0.77x. A VOLATILE function's statements each take a fresh snapshot, so the
-- claim statement here still sees every claim the previous lock holder committed, as the
-- second statement of 0020's transaction did; called alone it is its own transaction, and the
-- locks last until it commits.
--
-- Expand only: a new function. The previous release's workers do not call it.

CREATE FUNCTION pgsched.run_claim_limited_v1(
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
    v_now    timestamptz := coalesce(p_now, now());
    q_max    integer;
    q_key    integer;
    q_tokens float8;
    q_per_s  float8;
    t_max    integer;
    t_tokens float8;
    t_per_s  float8;
BEGIN
    IF p_skip_flush THEN  -- through a transaction-mode pooler: this transaction only
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- The rows that apply, locked (SKIP LOCKED: another worker's turn is no wait). FOR UPDATE
    -- returns each as the last holder committed it, tokens included. Not locked: no claim.
    IF p_queue_locked THEN
        SELECT s.max_running, s.key_max_running, pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, v_now),
               pgsched.rate_per_s(s.rate)
        INTO q_max, q_key, q_tokens, q_per_s
        FROM pgsched.queues AS s
        WHERE s.name = p_queues[1] AND NOT s.paused
          AND (s.max_running IS NOT NULL OR s.rate IS NOT NULL OR s.key_max_running IS NOT NULL)
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
        -- Without a key limit: the take and one more, locked (SKIP LOCKED: a run another claim
        -- holds is passed over).
        SELECT c.id, c.priority, c.run_at, c.concurrency_key
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
        -- A limited task's claim over open queues: as run_claim, none just paused or limited.
        WHERE q_key IS NULL
          AND (p_queue_locked OR s.name IS NULL
               OR (NOT s.paused AND s.max_running IS NULL AND s.rate IS NULL AND s.key_max_running IS NULL))
        UNION ALL
        -- With one: KEY_WINDOW (100) runs more, to rank by key, read but not locked (locking them
        -- all made each claim write 100 rows: a drain with a key limit that never bound ran at
        -- 0.83x). The queue's row lock keeps every other limited claim of the queue away; the
        -- UPDATE below takes only the runs still queued when it locks them.
        SELECT c.id, c.priority, c.run_at, c.concurrency_key
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
        WHERE q_key IS NOT NULL
    ), allowed AS MATERIALIZED (
        SELECT next.id, next.priority, next.run_at
        FROM (SELECT *, row_number() OVER (PARTITION BY concurrency_key ORDER BY priority, run_at, id) AS nth
              FROM next) AS next
             LEFT JOIN key_running AS k ON k.key = next.concurrency_key
        WHERE q_key IS NULL OR next.concurrency_key IS NULL
           OR coalesce(k.n, 0) + next.nth <= q_key
    ), taken AS MATERIALIZED (
        SELECT id FROM allowed ORDER BY priority, run_at, id LIMIT (SELECT n FROM take)
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
        UPDATE pgsched.queues
        SET tokens = q_tokens - (SELECT count(*) FROM claimed),
            tokens_at = greatest(tokens_at, v_now)
        WHERE q_tokens IS NOT NULL AND name = (p_queues)[1] AND EXISTS (SELECT FROM claimed)
    ), task_spent AS (
        UPDATE pgsched.task_settings
        SET tokens = t_tokens - (SELECT count(*) FROM claimed),
            tokens_at = greatest(tokens_at, v_now)
        WHERE t_tokens IS NOT NULL AND task = p_task AND EXISTS (SELECT FROM claimed)
    )
    SELECT true, h.n, (SELECT count(*) FROM allowed) > t.n, (SELECT count(*) FROM next) > (SELECT count(*) FROM allowed),
               q_tokens, q_per_s, t_tokens, t_per_s,
               c.id, c.task, c.args, c.attempt, c.max_attempts, c.queue, c.trace_context, c.request_id,
               c.priority, c.run_at, c.has_parents
        FROM headroom AS h CROSS JOIN take AS t LEFT JOIN claimed AS c ON true;
END;
$$;

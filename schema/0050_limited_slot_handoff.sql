-- A limited run's slot handed to the next run without a commit in between (issue #14, target
-- (b): max_running 10 over 4 workers kept 6.2-6.4 slots busy of 10, for a mean of 9 wanted).
-- A slot went idle from its run's end to the next claim's start: the completion committed (its
-- flush), the worker was woken, and a claim of its own (another round trip, another commit)
-- counted the slot free; the slot-freed NOTIFY woke the other workers too, whose claims mostly
-- found the row taken or no headroom (2 in 3 claims took nothing, measured) and held the
-- settings row meanwhile. run_complete_and_claim_limited_v1 is the fenced completion of
-- run_complete_many followed, in the same transaction, by run_claim_limited_v4's claim of the
-- unit the ended runs held slots of: its count sees the completion, so the freed slots go to
-- the next runs in one round trip and one flush.
--
-- Expand only: a new function; run_complete_many and v4 are untouched, and a worker of the
-- previous release never calls it.

-- The fenced completion (run_complete_many, verbatim: only rows this worker still holds at
-- that attempt change), then run_claim_limited_v4 for p_queues / p_task / p_tenant. One row per
-- claimed run (or one row without a run), each with the ids the completion changed first.
-- The claim is durable with the completion (it never skips the flush: the completion must not).
CREATE FUNCTION pgsched.run_complete_and_claim_limited_v1(
    p_ids            bigint[],
    p_attempts       integer[],
    p_statuses       text[],
    p_results        text[],
    p_errors         text[],
    p_retry_delays_s float8[],
    p_queues         text[],
    p_task           text,
    p_queue_locked   boolean,
    p_limit          integer,
    p_worker_id      bigint,
    p_lease_s        float8,
    p_only_tasks     text[],
    p_skip_tasks     text[],
    p_tenant         text,
    p_after_priority smallint[],
    p_after_run_at   timestamptz[],
    p_after_id       bigint[],
    p_from_run_at    timestamptz[]
) RETURNS TABLE (
    completed         bigint[],
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
-- The generic plans, as on the fetcher's connection (CLAIM_CONNECTION) where v4 is otherwise
-- called: this runs on the worker's pool, whose "auto" plan cache re-planned v4's claim at
-- each call (the hand-off took 25 ms against 12.5 ms for a plain completion at load 8).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_done    bigint[];
    v_timeout text := current_setting('lock_timeout');
BEGIN
    WITH done AS (
        UPDATE pgsched.runs AS r
        SET status = CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE o.status END::pgsched.run_status,
            result = o.result::jsonb,
            errors = CASE WHEN o.error IS NULL THEN r.errors
                          ELSE r.errors || jsonb_build_array(o.error::jsonb || jsonb_build_object('started_at', r.started_at)) END,
            run_at = CASE WHEN o.status = 'queued' AND r.cancel_requested_at IS NULL
                          THEN now() + make_interval(secs => o.retry_delay_s) ELSE r.run_at END,
            finished_at = CASE WHEN o.status = 'queued' AND r.cancel_requested_at IS NULL THEN NULL ELSE now() END,
            lease_expires_at = NULL
        FROM unnest(p_ids, p_attempts, p_statuses, p_results, p_errors, p_retry_delays_s)
             AS o(id, attempt, status, result, error, retry_delay_s)
        WHERE r.id = o.id AND r.attempt = o.attempt AND r.worker_id = p_worker_id AND r.status = 'running'
        RETURNING r.id
    )
    SELECT coalesce(array_agg(id), '{}') INTO v_done FROM done;
    -- Then the queue's settings row, waiting for it (a claim holds it for a statement): v4's
    -- SKIP LOCKED would give up the hand-off whenever another worker's claim, most often one
    -- that finds no headroom, held it (1 hand-off in 3, measured). The completion comes first,
    -- so its UPDATE and the move to the history it triggers are not inside the rows' turn; and
    -- the wait lasts HANDOFF_LOCK_WAIT at most, since a completion must not wait on a settings
    -- row an UPDATE in some long transaction holds: then v4 skips it, and the worker claims
    -- the usual way.
    IF p_queue_locked THEN
        PERFORM set_config('lock_timeout', '50ms', true);  -- HANDOFF_LOCK_WAIT
        BEGIN
            PERFORM FROM pgsched.queues WHERE name = p_queues[1] FOR UPDATE;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
        PERFORM set_config('lock_timeout', v_timeout, true);
    END IF;
    -- A statement of its own: v4's count (a snapshot taken after its row locks) sees the
    -- completion above, this transaction's own write.
    RETURN QUERY
    SELECT v_done, c.*
    FROM pgsched.run_claim_limited_v4(p_queues, p_task, p_queue_locked, p_limit, p_worker_id, p_lease_s, NULL,
                                      p_only_tasks, p_skip_tasks, false, p_tenant,
                                      p_after_priority, p_after_run_at, p_after_id, p_from_run_at) AS c;
END;
$$;

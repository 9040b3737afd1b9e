-- Observability (issue 17): each run keeps the trace context of the code that queued it, so a
-- worker's span continues the caller's trace, and the X-Request-ID of the API request that
-- made it, so a run can be traced back to that request.
--
-- Expand only: two nullable columns without a default (a catalog change, no rewrite), two
-- checks added NOT VALID (every existing row has NULL there: nothing to scan under the lock),
-- and pgsched.enqueue_v2 re-created with one more argument (0011's, not released yet: nobody
-- calls it with the old argument list). The previous release's claim and insert name their
-- columns, so they keep working and write NULL here.
SET LOCAL lock_timeout = '10s';  -- behind a long transaction, fail the upgrade rather than stall every worker

ALTER TABLE pgsched.runs
    ADD COLUMN trace_context text,
    ADD COLUMN request_id    text;

-- Written out, not as function calls, as 0009 says why. trace_context is a W3C traceparent
-- (version-trace id-span id-flags, lowercase hex; an all-zero id is invalid in W3C terms but
-- harmless here: the worker ignores it); request_id is 1-128 visible ASCII characters, so no
-- log line or terminal ever shows a control character from it. The traceparent's shape is
-- checked by length, an unbounded character class and the dashes' places: every claim and
-- completion re-checks a row, and a bounded repetition ({32}) costs a regex automaton per row
-- (~3 us; 0006 measured the same for the queue check).
ALTER TABLE pgsched.runs
    ADD CONSTRAINT run_trace_context_must_be_a_w3c_traceparent
        CHECK (length(trace_context) = 55 AND trace_context ~ '^[0-9a-f-]*$'
               AND substr(trace_context, 3, 1) = '-' AND substr(trace_context, 36, 1) = '-'
               AND substr(trace_context, 53, 1) = '-') NOT VALID,
    ADD CONSTRAINT run_request_id_must_be_1_to_128_visible_ascii_characters
        CHECK (request_id ~ '^[!-~]+$' AND length(request_id) <= 128) NOT VALID;

-- pgsched.enqueue_v2 with trace_context: a service in another language passes its span's W3C
-- traceparent, and the worker's span for the run joins that trace.
DROP FUNCTION pgsched.enqueue_v2(text, jsonb, text, integer, timestamptz, integer, text, timestamptz);

CREATE FUNCTION pgsched.enqueue_v2(
    task          text,
    args          jsonb DEFAULT '{}',
    queue         text DEFAULT 'default',
    priority      integer DEFAULT 0,
    run_at        timestamptz DEFAULT now(),
    max_attempts  integer DEFAULT 3,
    unique_key    text DEFAULT NULL,
    expires_at    timestamptz DEFAULT NULL,
    trace_context text DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    IF task IS NULL OR task !~ '\S' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: task must be a non-empty name' USING ERRCODE = '22023';
    END IF;
    IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: args must be a JSON object, got %', coalesce(jsonb_typeof(args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: priority must be between -100 and 100, got %', priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: max_attempts must be at least 1, got %', max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF expires_at IS NOT NULL AND expires_at <= coalesce(run_at, now()) THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: expires_at (%) must be after run_at (%): the run would never start',
            expires_at, coalesce(run_at, now()) USING ERRCODE = '22023';
    END IF;
    IF trace_context !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v2: trace_context must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>), got %',
            quote_literal(left(trace_context, 80)) USING ERRCODE = '22023';
    END IF;
    INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key, expires_at, trace_context)
    VALUES (enqueue_v2.task, enqueue_v2.args, coalesce(enqueue_v2.queue, 'default'), enqueue_v2.priority,
            coalesce(enqueue_v2.run_at, now()), enqueue_v2.max_attempts, enqueue_v2.unique_key, enqueue_v2.expires_at,
            enqueue_v2.trace_context)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING r.id INTO new_id;
    IF new_id IS NULL THEN
        SELECT r.id INTO new_id FROM pgsched.runs AS r WHERE r.unique_key = enqueue_v2.unique_key;
    END IF;
    RETURN new_id;
END;
$$;

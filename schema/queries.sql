-- Every statement pgsched runs, by name (entity_verb[_qualifier]).
-- Loaded once at import by pgsched/sql.py. Time-sensitive queries take an optional
-- %(now)s so tests can move the clock instead of sleeping.

-- name: migration_lock
-- Serialises concurrent `pgsched migrate` runs for the rest of the transaction.
SELECT pg_advisory_xact_lock(%(key)s);

-- name: migration_lock_session
-- Held across the transactions of one `pgsched migrate` (a file that adds an enum value ends
-- one, see migrate.py): a concurrent migrate waits for the whole run, not just its first part.
SELECT pg_advisory_lock(%(key)s);

-- name: migration_unlock_session
-- Release the session lock that serialises concurrent `pgsched migrate` runs.
SELECT pg_advisory_unlock(%(key)s);

-- name: migration_bootstrap
-- The bookkeeping table every later migration is recorded in.
CREATE SCHEMA IF NOT EXISTS pgsched;
CREATE TABLE IF NOT EXISTS pgsched.schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migration_table_exists
-- Whether this database has been migrated at all (pgsched.schema_migrations exists).
SELECT to_regclass('pgsched.schema_migrations') IS NOT NULL;

-- name: migration_repairs_recorded
-- Whether the table of rows repaired by schema 0009 exists (pgsched.repaired_rows).
SELECT to_regclass('pgsched.repaired_rows') IS NOT NULL;

-- name: migration_applied
-- The versions already applied, in order.
SELECT version FROM pgsched.schema_migrations ORDER BY version;

-- name: migration_record
-- Record a migration as applied, in the transaction that applied it.
INSERT INTO pgsched.schema_migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: worker_listen
-- Workers wake on pgsched (payload: a queue name), hear cancel requests on pgsched_cancel
-- (payload: a run id), and reload a queue's settings on pgsched_queues (payload: its name).
LISTEN pgsched;
LISTEN pgsched_cancel;
LISTEN pgsched_queues;

-- name: run_insert
-- One run; the AFTER INSERT trigger sends the NOTIFY in the same transaction.
-- expires: an instant (%(expires_at)s) or seconds from now (%(expires_in)s), or neither.
-- trace_context: the caller's W3C traceparent; request_id: the API request's X-Request-ID.
INSERT INTO pgsched.runs (task, args, queue, priority, run_at, max_attempts, tenant, expires_at,
                          trace_context, request_id, concurrency_key)
VALUES (%(task)s, %(args)s, %(queue)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now()) + make_interval(secs => %(delay)s),
        %(max_attempts)s, %(tenant)s,
        coalesce(%(expires_at)s::timestamptz, now() + make_interval(secs => %(expires_in)s::float8)),
        %(trace_context)s, %(request_id)s, %(concurrency_key)s)
RETURNING id, true AS created;

-- name: run_insert_now
-- run_insert for the common case, due now with no key and no expiry: 9 parameters instead of
-- 13, no interval arithmetic (run_at and created_at are the column default, now()).
INSERT INTO pgsched.runs (task, args, queue, priority, max_attempts, tenant, trace_context, request_id,
                          concurrency_key)
VALUES (%(task)s, %(args)s, %(queue)s, %(priority)s, %(max_attempts)s, %(tenant)s, %(trace_context)s, %(request_id)s,
        %(concurrency_key)s)
RETURNING id, true AS created;

-- name: run_insert_bare
-- run_insert_now for a run that asks for nothing the columns do not default to (queue
-- 'default', priority 0, 3 attempts; no tenant, key or trace): the statement a one-call
-- enqueue sends most, with 2 parameters instead of 9.
INSERT INTO pgsched.runs (task, args)
VALUES (%(task)s, %(args)s)
RETURNING id, true AS created;

-- name: run_insert_returning
-- run_insert that returns the new run as run_get reads it: the REST API answers POST /runs with
-- this row, so the insert and its read-back are one statement (one round trip, no transaction).
INSERT INTO pgsched.runs (task, args, queue, priority, run_at, max_attempts, tenant, expires_at,
                          trace_context, request_id, concurrency_key)
VALUES (%(task)s, %(args)s, %(queue)s, %(priority)s,
        coalesce(%(run_at)s::timestamptz, now()) + make_interval(secs => %(delay)s),
        %(max_attempts)s, %(tenant)s,
        coalesce(%(expires_at)s::timestamptz, now() + make_interval(secs => %(expires_in)s::float8)),
        %(trace_context)s, %(request_id)s, %(concurrency_key)s)
RETURNING id, task, args, queue, priority, status::text AS status, attempt, max_attempts, run_at,
          job_id, scheduled_for, worker_id, started_at, finished_at, lease_expires_at, result,
          errors, unique_key, tenant, created_at, expires_at, trace_context, request_id, concurrency_key;

-- name: run_insert_returning_many
-- run_insert_returning for the POST /runs that wait together (pgsched.api.batching): one row per
-- array element, each with its own options, tenant and origin. nextval numbers the ids in the
-- arrays' order, so the caller matches rows to requests by id, whatever order RETURNING gives.
WITH runs_ids AS MATERIALIZED (SELECT pg_get_serial_sequence('pgsched.runs', 'id')::regclass AS seq),
wanted AS MATERIALIZED (
    SELECT nextval(runs_ids.seq) AS id, w.*
    FROM runs_ids,
         unnest(%(task)s::text[], %(args)s::jsonb[], %(queue)s::text[], %(priority)s::int[],
                %(run_at)s::timestamptz[], %(delay)s::float8[], %(max_attempts)s::int[], %(tenant)s::text[],
                %(expires_at)s::timestamptz[], %(expires_in)s::float8[], %(trace_context)s::text[],
                %(request_id)s::text[], %(concurrency_key)s::text[])
             WITH ORDINALITY AS w(task, args, queue, priority, run_at, delay, max_attempts, tenant, expires_at,
                                  expires_in, trace_context, request_id, concurrency_key, n)
    ORDER BY w.n
)
INSERT INTO pgsched.runs (id, task, args, queue, priority, run_at, max_attempts, tenant, expires_at,
                          trace_context, request_id, concurrency_key)
SELECT id, task, args, queue, priority, coalesce(run_at, now()) + make_interval(secs => delay), max_attempts,
       tenant, coalesce(expires_at, now() + make_interval(secs => expires_in)), trace_context, request_id,
       concurrency_key
FROM wanted
RETURNING id, task, args, queue, priority, status::text AS status, attempt, max_attempts, run_at,
          job_id, scheduled_for, worker_id, started_at, finished_at, lease_expires_at, result,
          errors, unique_key, tenant, created_at, expires_at, trace_context, request_id, concurrency_key;

-- name: run_insert_unique
-- One run with an idempotency key: inserts it, or returns the run that already holds the key,
-- in runs or in runs_history (schema 0037: pgsched.run_unique_key_holder, which reads a new
-- snapshot, so a holder that committed while this statement ran is found too). Inserted only
-- when the key has no holder; runs' index refuses the row to a concurrent enqueue of the key
-- that is still in runs, and the key's trigger one whose run has since moved (unique_violation:
-- that run would have had to be claimed, run and ended within this statement).
WITH held AS MATERIALIZED (
    SELECT pgsched.run_unique_key_holder(%(unique_key)s) AS id
), inserted AS (
    INSERT INTO pgsched.runs (task, args, queue, priority, run_at, max_attempts, unique_key, tenant, expires_at,
                              trace_context, request_id, concurrency_key)
    SELECT %(task)s::text, %(args)s::jsonb, %(queue)s::text, %(priority)s::integer,
           coalesce(%(run_at)s::timestamptz, now()) + make_interval(secs => %(delay)s),
           %(max_attempts)s::integer, %(unique_key)s::text, %(tenant)s::text,
           coalesce(%(expires_at)s::timestamptz, now() + make_interval(secs => %(expires_in)s::float8)),
           %(trace_context)s::text, %(request_id)s::text, %(concurrency_key)s::text
    FROM held WHERE held.id IS NULL
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, true AS created FROM inserted
UNION ALL
SELECT coalesce(held.id, pgsched.run_unique_key_holder(%(unique_key)s)), false FROM held
WHERE NOT EXISTS (SELECT FROM inserted);

-- name: run_reserve_ids
-- Ids and the run_at for a bulk enqueue, so COPY can write rows whose ids the caller gets back.
-- MATERIALIZED: the sequence is looked up once; as a plain subquery the planner pulled it up
-- and called pg_get_serial_sequence per row (45 ms instead of 5 for 20,000 ids).
WITH runs_ids AS MATERIALIZED (SELECT pg_get_serial_sequence('pgsched.runs', 'id')::regclass AS seq)
SELECT array_agg(nextval(runs_ids.seq)) AS ids,
       coalesce(%(run_at)s::timestamptz, now()) + make_interval(secs => %(delay)s) AS run_at
FROM runs_ids, generate_series(1, %(n)s);

-- name: run_copy
-- Bulk enqueue (enqueue_many): the runs' rows streamed by COPY, ids taken beforehand.
COPY pgsched.runs (id, task, args, queue, priority, run_at, max_attempts, tenant, trace_context, request_id,
                   concurrency_key) FROM STDIN;

-- name: run_claim
-- Claim up to %(limit)s due runs (never more than the worker's free slots). has_parents: a
-- workflow step whose worker reads its parents' results (run_parent_results) before running it. The lateral
-- subquery walks the claim index once per queue, in claim order, and locks with SKIP LOCKED
-- so concurrent workers never wait on each other; MATERIALIZED fences the planner so the
-- LIMIT applies before the UPDATE (a nested loop could otherwise update more rows).
-- %(only_tasks)s / %(skip_tasks)s (NULL: any task) let a worker with a process pool claim
-- its process-pool tasks apart from the others, up to the children it has free.
-- An expired run is never started: the claim passes over it (one more test on a row it reads
-- anyway) and the sweep (run_cancel_expired) ends it 'cancelled'.
-- Not the runs of a tenant with a max_running (0033): run_claim_limited claims them, within it
-- (one primary-key probe of pgsched.tenants per run with a tenant walked).
-- Only queues with no settings row, or one neither paused nor limited: a limited queue is
-- claimed by run_claim_limited under its row lock, a paused one not at all. Read here, in the
-- claim's own snapshot, so a worker whose copy of the settings is stale still never claims
-- from a queue that was just paused or limited (one primary-key probe per queue per claim).
-- %(after_priority)s / %(after_run_at)s / %(after_id)s and %(from_run_at)s: arrays aligned with
-- %(queues)s (NULL, or NULL elements: a full pass from the start) saying where each queue's walk
-- of the claim index starts (pgsched.claim_cursor): strictly after the last run this fetcher
-- claimed there (ahead; from the start on a full pass), plus the runs of that priority due from
-- %(from_run_at)s (a second before it) up to it (behind: enqueues that committed late; none on a
-- full pass). Both are index conditions, so each scan descends straight to its start; behind's
-- bounds are plain column bounds, which end its scan (PostgreSQL 15's btree ends a scan on a
-- row comparison only when its first column decides it). Why: while a transaction holds vacuum's horizon
-- back, every run claimed since leaves a dead entry at the front of the index that no scan can
-- kill, and a walk from the start visits them all (issue 13: 16 KB -> 3 MB of index and 0.9 ->
-- 9.7 ms a claim in 150 s at 400 runs/s). A run that sorts before the start waits for the next
-- full pass. Two scans, not one range with slack, so a claim within a bulk enqueue (one run_at
-- for all its runs) starts at the last id, not at the batch's first run.
WITH next AS MATERIALIZED (
    SELECT c.id
    FROM unnest(%(queues)s::text[], %(after_priority)s::smallint[], %(after_run_at)s::timestamptz[],
                %(after_id)s::bigint[], %(from_run_at)s::timestamptz[])
             AS q(name, after_priority, after_run_at, after_id, from_run_at)
         LEFT JOIN pgsched.queues AS s ON s.name = q.name,
         LATERAL (
             SELECT * FROM (
                 SELECT id, priority, run_at
                 FROM pgsched.runs
                 WHERE status = 'queued' AND queue = q.name
                   AND priority = q.after_priority AND run_at >= q.from_run_at AND run_at < q.after_run_at
                   AND run_at <= coalesce(%(now)s::timestamptz, now())
                   AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
                   AND (%(only_tasks)s::text[] IS NULL OR task = ANY (%(only_tasks)s::text[]))
                   AND (%(skip_tasks)s::text[] IS NULL OR task <> ALL (%(skip_tasks)s::text[]))
                   AND (tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY priority, run_at, id
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED
             ) AS behind
             UNION ALL
             SELECT * FROM (
                 SELECT id, priority, run_at
                 FROM pgsched.runs
                 WHERE status = 'queued' AND queue = q.name
                   AND (priority, run_at, id) > (coalesce(q.after_priority, -32768), coalesce(q.after_run_at, '-infinity'),
                                                 coalesce(q.after_id, 0))
                   AND run_at <= coalesce(%(now)s::timestamptz, now())
                   AND (expires_at IS NULL OR expires_at > coalesce(%(now)s::timestamptz, now()))
                   AND (%(only_tasks)s::text[] IS NULL OR task = ANY (%(only_tasks)s::text[]))
                   AND (%(skip_tasks)s::text[] IS NULL OR task <> ALL (%(skip_tasks)s::text[]))
                   AND (tenant IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.tenants AS lt WHERE lt.name = runs.tenant AND lt.max_running IS NOT NULL))
                 ORDER BY priority, run_at, id
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED
             ) AS ahead
         ) AS c
    WHERE s.name IS NULL
       OR (NOT s.paused AND s.max_running IS NULL AND s.rate IS NULL AND s.key_max_running IS NULL AND NOT s.fair)
    ORDER BY c.priority, c.run_at, c.id
    LIMIT %(limit)s
)
UPDATE pgsched.runs AS r
SET status = 'running',
    attempt = r.attempt + 1,
    worker_id = %(worker_id)s,
    started_at = coalesce(%(now)s::timestamptz, now()),
    lease_expires_at = coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(lease_s)s)
FROM next
WHERE r.id = next.id
RETURNING r.id, r.task, r.args, r.attempt, r.max_attempts, r.queue, r.trace_context, r.request_id, r.priority, r.run_at,
          r.parents_pending IS NOT NULL AS has_parents;

-- name: run_claim_limited
-- The claim of runs behind limits (pgsched.run_claim_limited_v4, schema 0040, which claims as v3
-- of 0033 does but for a tenant's runs; v2 of 0028 counts at every claim, v1 of 0021 has no
-- fair queues either), one round trip:
-- up to %(limit)s due runs of %(queues)s (one queue when it is limited; the worker's open
-- queues for a limited task's claim), of %(task)s only (NULL: any task but %(skip_tasks)s),
-- and no more than each limit leaves:
-- * first the settings rows that apply are locked (the queue's if %(queue_locked)s, the task's
--   if %(task)s), FOR UPDATE SKIP LOCKED: the claims of every worker for one limit take turns,
--   and none waits. A row not locked (another worker's turn, or paused, or no longer limited):
--   one row with locked false, and nothing claimed;
-- * then, in a statement of its own (a snapshot taken after the locks, that sees every claim
--   the previous holder committed): max_running of the queue and of the task less their runs
--   running now, counted from the rows through runs_lease_idx (every running run has a lease:
--   a run whose lease ran out counts no more, so a SIGKILLed worker's slots come back at its
--   leases' expiry) unless the row's running_bound (an upper bound the claims keep, 0033) plus
--   %(limit)s is within the limit, so the count could not bind; the buckets' whole tokens (refilled by pgsched.tokens_at, written back
--   less what the claim spends; a claim that spends nothing writes nothing); key_max_running:
--   runs of one concurrency key, counting those running, ranked among the next due runs, with
--   a window of KEY_WINDOW (100) runs past the take, read but not locked (locking them made
--   each claim write 100 rows: a drain with a key limit that never bound ran at 0.83x).
-- One row per claimed run, each with locked, the headroom the limits left before this claim,
-- more_due (due runs wait behind a limit: the fetcher looks again soon, or when the next token
-- is due), held_by_key, and the buckets' tokens before the claim and rates; no run claimed: one
-- row with those and NULLs. No run of a tenant with a max_running (run_claim_tenant_limited
-- claims those). %(skip_flush)s: through a transaction-mode pooler, the claim's
-- transaction skips the WAL flush by itself (SET LOCAL), as run_claim_skip_flush does.
SELECT * FROM pgsched.run_claim_limited_v4(
    %(queues)s::text[], %(task)s::text, %(queue_locked)s::boolean, %(limit)s::integer, %(worker_id)s::bigint,
    %(lease_s)s::float8, %(now)s::timestamptz, %(only_tasks)s::text[], %(skip_tasks)s::text[], %(skip_flush)s::boolean,
    NULL::text, NULL, NULL, NULL, NULL);

-- name: run_claim_limited_from
-- run_claim_limited from each queue's cursor (%(after_priority)s, %(after_run_at)s, %(after_id)s,
-- %(from_run_at)s: arrays aligned with %(queues)s, as run_claim's; 0040): what the fetcher
-- makes. Its claim in claim order starts there instead of at the head of each queue, so runs
-- it may not take (a limited tenant's, queued ahead of the rest) are walked past only on a
-- full pass.
SELECT * FROM pgsched.run_claim_limited_v4(
    %(queues)s::text[], %(task)s::text, %(queue_locked)s::boolean, %(limit)s::integer, %(worker_id)s::bigint,
    %(lease_s)s::float8, %(now)s::timestamptz, %(only_tasks)s::text[], %(skip_tasks)s::text[], %(skip_flush)s::boolean,
    NULL::text, %(after_priority)s::smallint[], %(after_run_at)s::timestamptz[], %(after_id)s::bigint[],
    %(from_run_at)s::timestamptz[]);

-- name: run_claim_tenant_limited
-- run_claim_limited for the runs of %(tenant)s only, a tenant with a max_running (0033): within
-- its max_running too, counted over every queue (runs_tenant_running_idx) while this claim
-- holds the tenant's claim lock (a transaction advisory lock, try only: another worker's turn
-- is one row with locked false). A tenant without a max_running now: locked false too. The
-- tenant's runs are found through runs_fair_idx (0040), not by walking the queues' other runs.
SELECT * FROM pgsched.run_claim_limited_v4(
    %(queues)s::text[], %(task)s::text, %(queue_locked)s::boolean, %(limit)s::integer, %(worker_id)s::bigint,
    %(lease_s)s::float8, %(now)s::timestamptz, %(only_tasks)s::text[], %(skip_tasks)s::text[], %(skip_flush)s::boolean,
    %(tenant)s::text, NULL, NULL, NULL, NULL);

-- name: run_complete_and_claim_limited
-- A batch of outcomes that ended runs a limit counted, and the claim of the next runs of that
-- limit's unit in the same transaction (pgsched.run_complete_and_claim_limited_v1, schema 0050):
-- run_complete_many's fenced UPDATE, then run_claim_limited_v4 (as run_claim_limited_from, or
-- run_claim_tenant_limited with %(tenant)s), whose count sees the completion: the freed slots
-- go to the next runs with one round trip and one flush, no commit in between. Rows as
-- run_claim_limited's, each led by the ids the completion changed.
SELECT * FROM pgsched.run_complete_and_claim_limited_v1(
    %(ids)s::bigint[], %(attempts)s::integer[], %(statuses)s::text[], %(results)s::text[], %(errors)s::text[],
    %(retry_delays_s)s::float8[],
    %(queues)s::text[], %(task)s::text, %(queue_locked)s::boolean, %(limit)s::integer, %(worker_id)s::bigint,
    %(lease_s)s::float8, %(only_tasks)s::text[], %(skip_tasks)s::text[], %(tenant)s::text,
    %(after_priority)s::smallint[], %(after_run_at)s::timestamptz[], %(after_id)s::bigint[],
    %(from_run_at)s::timestamptz[]);

-- name: queue_settings_of_worker
-- The settings that change how a worker claims (at start, on a pgsched_queues notification and
-- at every poll): which of its queues are paused or limited, which tasks are, and which of
-- those have a rate; and which tenants have a max_running (0033).
-- A fair queue counts as limited: it is claimed by run_claim_limited (in turns, under its row lock).
SELECT 'queue' AS scope, name, paused,
       max_running IS NOT NULL OR rate IS NOT NULL OR key_max_running IS NOT NULL OR fair AS limited,
       rate IS NOT NULL AS rated
FROM pgsched.queues
WHERE name = ANY (%(queues)s::text[]) AND (paused OR max_running IS NOT NULL OR rate IS NOT NULL
                                          OR key_max_running IS NOT NULL OR fair)
UNION ALL
SELECT 'task', task, paused, max_running IS NOT NULL OR rate IS NOT NULL, rate IS NOT NULL
FROM pgsched.task_settings
WHERE paused OR max_running IS NOT NULL OR rate IS NOT NULL
UNION ALL
SELECT 'tenant', name, false, true, false
FROM pgsched.tenants
WHERE max_running IS NOT NULL;

-- name: queue_notify_slots_freed
-- Runs a limit counted have ended on this worker: wake the workers of their queues on the
-- enqueue channel, as new runs would (a slot they may be waiting for is free).
SELECT pg_notify('pgsched', q) FROM unnest(%(queues)s::text[]) AS q;

-- name: run_claim_skip_flush
-- This transaction commits without waiting for the WAL flush (SET LOCAL): what the direct
-- fetcher connection sets at connect, for a claim through a transaction-mode pooler.
SELECT set_config('synchronous_commit', 'off', true);

-- name: run_next_due
-- Seconds until the earliest deferred run of these queues is due (the fetcher sleeps until
-- then). Runs due at creation need no timer: their insert's NOTIFY wakes the fetcher. An
-- expired run is no reason to wake: the claim would pass it over, and the fetcher would look
-- again every LOCKED_BY_OTHERS_PAUSE_S until the sweep cancelled it.
SELECT extract(epoch FROM min(n.run_at) - now())::float8
FROM unnest(%(queues)s::text[]) AS q(name),
     LATERAL (SELECT run_at FROM pgsched.runs
              WHERE status = 'queued' AND queue = q.name AND run_at > created_at
                AND (expires_at IS NULL OR expires_at > now())
              ORDER BY run_at LIMIT 1) AS n;

-- name: run_parent_results
-- A workflow step's parents' results, in the order of its edges (a chord callback's: its
-- header's order). Read by the worker before it runs a step with parents.
SELECT p.result FROM pgsched.run_edges AS e JOIN pgsched.runs_all AS p ON p.id = e.parent
WHERE e.child = %(id)s
ORDER BY e.position, e.parent;

-- name: run_complete_many
-- Write a batch of outcomes in one statement. Fenced: only rows still held by this worker
-- at this attempt change, so a worker that lost its lease cannot overwrite a rescue.
-- status 'queued' is a retry: run_at moves by retry_delay_s. A run whose cancel was requested
-- ends 'cancelled' whatever its task did (the request may have raced the worker).
-- An error records when its attempt started: started_at holds only the last attempt's.
UPDATE pgsched.runs AS r
SET status = CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE o.status END::pgsched.run_status,
    result = o.result::jsonb,
    errors = CASE WHEN o.error IS NULL THEN r.errors
                  ELSE r.errors || jsonb_build_array(o.error::jsonb || jsonb_build_object('started_at', r.started_at)) END,
    run_at = CASE WHEN o.status = 'queued' AND r.cancel_requested_at IS NULL
                  THEN now() + make_interval(secs => o.retry_delay_s) ELSE r.run_at END,
    finished_at = CASE WHEN o.status = 'queued' AND r.cancel_requested_at IS NULL THEN NULL ELSE now() END,
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(statuses)s::text[],
            %(results)s::text[], %(errors)s::text[], %(retry_delays_s)s::float8[])
     AS o(id, attempt, status, result, error, retry_delay_s)
WHERE r.id = o.id AND r.attempt = o.attempt AND r.worker_id = %(worker_id)s AND r.status = 'running'
RETURNING r.id;

-- name: run_complete_succeeded
-- run_complete_many for a batch whose outcomes all succeeded (the common batch): the same
-- fenced UPDATE, with only what a success writes (status, result, finished_at, the lease
-- cleared), from three arrays instead of six. A run whose cancel was requested still ends
-- 'cancelled', as there.
UPDATE pgsched.runs AS r
SET status = CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled' ELSE 'succeeded' END::pgsched.run_status,
    result = o.result::jsonb,
    finished_at = now(),
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(results)s::text[]) AS o(id, attempt, result)
WHERE r.id = o.id AND r.attempt = o.attempt AND r.worker_id = %(worker_id)s AND r.status = 'running'
RETURNING r.id;

-- name: run_release_many
-- Graceful shutdown: hand runs that did not finish back to the queue without using up an
-- attempt, and wake the other workers.
WITH released AS (
    UPDATE pgsched.runs AS r
    SET status = CASE WHEN r.cancel_requested_at IS NULL THEN 'queued' ELSE 'cancelled' END::pgsched.run_status,
        finished_at = CASE WHEN r.cancel_requested_at IS NULL THEN NULL ELSE now() END,
        attempt = r.attempt - 1, lease_expires_at = NULL, run_at = now()
    FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS h(id, attempt)
    WHERE r.id = h.id AND r.attempt = h.attempt AND r.worker_id = %(worker_id)s AND r.status = 'running'
    RETURNING r.id, r.queue
), notified AS (
    SELECT pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM released) AS q
)
SELECT (SELECT count(*) FROM released) AS released, (SELECT count(*) FROM notified) AS queues;

-- name: run_rescue_expired
-- Runs whose lease ran out (their worker died or stopped heartbeating) go back to the
-- queue, or fail when their attempts are used up. Batched and SKIP LOCKED: never waits.
-- Not within %(restart_grace_s)s of a server start: leases also ran out while PostgreSQL was
-- down, and live workers need that long to reconnect and renew theirs.
WITH expired AS (
    SELECT id FROM pgsched.runs
    WHERE status = 'running' AND lease_expires_at < coalesce(%(now)s::timestamptz, now())
      AND coalesce(%(now)s::timestamptz, now()) >= pg_postmaster_start_time() + make_interval(secs => %(restart_grace_s)s)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), rescued AS (
    UPDATE pgsched.runs AS r
    SET status = CASE WHEN r.cancel_requested_at IS NOT NULL THEN 'cancelled'
                      WHEN r.attempt >= r.max_attempts THEN 'failed' ELSE 'queued' END::pgsched.run_status,
        run_at = coalesce(%(now)s::timestamptz, now()),
        finished_at = CASE WHEN r.cancel_requested_at IS NOT NULL OR r.attempt >= r.max_attempts
                           THEN coalesce(%(now)s::timestamptz, now()) END,
        lease_expires_at = NULL,
        errors = r.errors || jsonb_build_array(jsonb_build_object(
            'attempt', r.attempt, 'at', coalesce(%(now)s::timestamptz, now()), 'worker_id', r.worker_id,
            'started_at', r.started_at, 'type', 'LeaseExpired',
            'message', format('worker %%s stopped heartbeating: lease expired at %%s', r.worker_id, r.lease_expires_at)))
    FROM expired
    WHERE r.id = expired.id
    RETURNING r.id, r.queue, r.status
), notified AS (
    SELECT pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM rescued WHERE status = 'queued') AS q
)
SELECT (SELECT count(*) FROM rescued WHERE status = 'queued') AS requeued,
       (SELECT count(*) FROM rescued WHERE status = 'failed') AS failed,
       (SELECT count(*) FROM notified) AS queues;

-- name: run_cancel_expired
-- Queued runs whose expires_at has passed end 'cancelled', with an 'Expired' entry in errors
-- (the reason the API, the CLI and pgsched.recent_cancellations show). Batched and SKIP
-- LOCKED, through runs_expires_idx: never waits, and costs nothing while no run expires.
WITH expired AS (
    SELECT id FROM pgsched.runs
    WHERE status = 'queued' AND expires_at <= coalesce(%(now)s::timestamptz, now())
    ORDER BY expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgsched.runs AS r
SET status = 'cancelled', finished_at = coalesce(%(now)s::timestamptz, now()),
    errors = r.errors || jsonb_build_array(jsonb_build_object(
        'attempt', r.attempt, 'at', coalesce(%(now)s::timestamptz, now()), 'type', 'Expired',
        'message', format('expired at %%s before a worker started it', r.expires_at)))
FROM expired
WHERE r.id = expired.id
RETURNING r.id;

-- name: run_rescue_try_lock
-- One sweeper at a time across all workers, for the rest of the transaction.
SELECT pg_try_advisory_xact_lock(%(key)s);

-- name: worker_register
-- advertises_waits: this worker says when it waits (worker_advertise_waiting), so the insert
-- trigger may skip the NOTIFY of a queue nobody waits on (0027). bounds_claims: its limited
-- claims keep the settings rows' running bounds (run_claim_limited_v3, 0033).
INSERT INTO pgsched.workers (host, pid, queues, concurrency, advertises_waits, bounds_claims)
VALUES (%(host)s, %(pid)s, %(queues)s, %(concurrency)s, true, true)
RETURNING id;

-- name: worker_advertise_waiting
-- On the LISTEN connection: this worker waits for runs of these queues, as long as the session
-- holds the 'pgsw' lock SHARED (see 0027). Waits only for an insert's momentary probe.
SELECT count(pg_advisory_lock_shared(1885827959, h))
FROM (SELECT DISTINCT hashtext(q) AS h FROM unnest(%(queues)s::text[]) AS q) AS queues;

-- name: worker_withdraw_waiting
-- On the LISTEN connection: waiting no more (it holds no other session lock).
SELECT pg_advisory_unlock_all();

-- name: worker_await_enqueuers
-- After advertising, before the last claim: wait for the inserts into these queues that
-- looked for a waiter before this worker advertised ('pgse' held shared to their commit, see
-- 0027). An insert normally commits within a millisecond; one inside a longer transaction
-- times out the wait (lock_timeout, local to this statement's transaction) and the worker
-- looks again shortly instead. The volatile filter runs before the first lock.
SELECT count(pg_advisory_xact_lock(1885827941, h))
FROM (SELECT DISTINCT hashtext(q) AS h FROM unnest(%(queues)s::text[]) AS q) AS queues
WHERE set_config('lock_timeout', %(timeout)s, true) IS NOT NULL;

-- name: worker_heartbeat
-- Proves the worker alive and extends the leases of the runs it holds; returns those whose
-- cancel was requested (a safety net for a missed pgsched_cancel notification).
-- SKIP LOCKED: the heartbeat never waits for a run's row, so it cannot deadlock with the
-- completer's batch (seen once under a 300k-run backlog: the two locked the same rows in
-- other orders). A row locked now is being completed or rescued, so its lease no longer
-- matters; any other is extended at the next heartbeat, a third of a lease later.
-- Only the ids the worker knows it holds (executing, or ended and not yet written): a run a
-- claim took whose answer never reached the worker (the connection lost after the commit) is
-- the worker's in the table but runs nowhere; extended with the rest, it stayed 'running', and
-- held its limit's slot, for as long as the worker lived. Left alone, its lease runs out and the
-- sweep hands it on.
WITH seen AS (
    UPDATE pgsched.workers SET last_seen_at = now() WHERE id = %(worker_id)s RETURNING id
), held AS (
    SELECT id FROM pgsched.runs
    WHERE id = ANY(%(ids)s::bigint[])
      AND lease_expires_at IS NOT NULL AND worker_id = %(worker_id)s AND status = 'running'
    FOR UPDATE SKIP LOCKED
)
UPDATE pgsched.runs AS r
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
FROM held
WHERE r.id = held.id
RETURNING r.id, r.cancel_requested_at IS NOT NULL AS cancel_requested;

-- name: run_cancel_requested
-- Which of these running runs someone asked to cancel (after the listener reconnects).
SELECT id FROM pgsched.runs
WHERE id = ANY(%(ids)s::bigint[]) AND status = 'running' AND cancel_requested_at IS NOT NULL;

-- name: worker_deregister
-- A stopping worker removes its row (a killed one is removed by the sweep as stale).
DELETE FROM pgsched.workers WHERE id = %(worker_id)s;

-- name: worker_remove_stale
-- Workers not seen for a while are gone; their runs are rescued by lease expiry.
DELETE FROM pgsched.workers
WHERE last_seen_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(stale_s)s);

-- name: run_get
-- Wherever the run is (pgsched.run_by_id, schema 0029: runs, else runs_history).
SELECT id, task, args, queue, priority, status::text AS status, attempt, max_attempts, run_at,
       job_id, scheduled_for, worker_id, started_at, finished_at, lease_expires_at, result,
       errors, unique_key, tenant, created_at, expires_at, trace_context, request_id, concurrency_key
FROM pgsched.run_by_id(%(id)s) WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: run_list
-- Newest first, keyset-paginated by id; every filter is optional. Time windows are half-open:
-- *_after includes its instant, *_before excludes it, so adjacent windows neither overlap nor
-- leave a gap. job is the scheduled job's name (a job that does not exist matches no run; names
-- are unique per tenant since 0012, so a key without a tenant sees the runs of each tenant's job).
-- args: containment (args @> '{"customer": 42}'); error_type: the type of the last attempt's error.
-- scan_floor: read no run below this id (an args search reads a window of ids a page; no index
-- serves containment, see runs.page_runs).
SELECT id, task, queue, priority, status::text AS status, attempt, max_attempts, run_at,
       started_at, finished_at, created_at
FROM pgsched.runs_all
WHERE (%(status)s::pgsched.run_status IS NULL OR status = %(status)s::pgsched.run_status)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(job)s::text IS NULL OR job_id IN (SELECT j.id FROM pgsched.jobs AS j WHERE j.name = %(job)s))
  AND (%(created_after)s::timestamptz IS NULL OR created_at >= %(created_after)s)
  AND (%(created_before)s::timestamptz IS NULL OR created_at < %(created_before)s)
  AND (%(finished_after)s::timestamptz IS NULL OR finished_at >= %(finished_after)s)
  AND (%(finished_before)s::timestamptz IS NULL OR finished_at < %(finished_before)s)
  AND (%(id)s::bigint IS NULL OR id = %(id)s)
  AND (%(args)s::jsonb IS NULL OR args @> %(args)s::jsonb)
  AND (%(error_type)s::text IS NULL OR errors -> -1 ->> 'type' = %(error_type)s)
  AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
  AND (%(scan_floor)s::bigint IS NULL OR id >= %(scan_floor)s)
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: run_id_range
-- The lowest and highest run id (two probes of the primary key): where an args search's
-- window of ids starts, and whether anything is left below it.
SELECT min(id) AS lowest, max(id) AS highest FROM pgsched.runs_all;

-- name: run_retry_many
-- Run failed or cancelled runs again, now, each with one more attempt if it used them all
-- (one run: the UI's and the API's Retry; many: the dashboard's bulk retry, a batch at a time).
-- Returns the ids retried; the others (another status, another tenant's) are left alone.
WITH retried AS (
    UPDATE pgsched.runs
    SET status = 'queued', run_at = now(), finished_at = NULL, lease_expires_at = NULL,
        max_attempts = greatest(max_attempts, attempt + 1)
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('failed', 'cancelled')
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    RETURNING id, queue
), notified AS (
    SELECT pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM retried) AS q
)
SELECT id, (SELECT count(*) FROM notified) AS notified FROM retried;

-- name: run_retry_from_history
-- The first half of a retry of finished runs that moved to runs_history (schema 0029): each comes
-- back to runs as a run is inserted (queued, attempt 0: what runs' insert trigger allows, and
-- it wakes the queue's workers), then run_retry_attempts gives it back its attempts, in the same
-- transaction (a worker sees neither half before the other). Returns each one's id and attempts.
WITH back AS (
    DELETE FROM pgsched.runs_history
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('failed', 'cancelled')
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    RETURNING *
), queued AS (
    INSERT INTO pgsched.runs (id, task, args, queue, priority, status, attempt, max_attempts, run_at, job_id,
                              scheduled_for, worker_id, started_at, finished_at, lease_expires_at, result, errors,
                              unique_key, tenant, created_at, cancel_requested_at, expires_at, awaited, trace_context,
                              request_id, workflow_id, parents_pending, concurrency_key)
    SELECT id, task, args, queue, priority, 'queued', 0, max_attempts, now(), job_id,
           scheduled_for, worker_id, started_at, NULL, NULL, result, errors,
           unique_key, tenant, created_at, cancel_requested_at, expires_at, awaited, trace_context,
           request_id, workflow_id, parents_pending, concurrency_key
    FROM back
    RETURNING id
)
SELECT back.id, back.attempt FROM back JOIN queued USING (id);

-- name: run_retry_attempts
-- The second half (see run_retry_from_history): the attempts they had, and one more to make.
UPDATE pgsched.runs AS r
SET attempt = b.attempt, max_attempts = greatest(r.max_attempts, b.attempt + 1)
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS b(id, attempt)
WHERE r.id = b.id AND r.status = 'queued';

-- name: run_cancel
-- Cancel a queued run now, or ask the worker of a running one to stop it (schema 0004).
-- No row: no such run (for this tenant).
SELECT pgsched.cancel(id) FROM pgsched.runs WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: run_cancel_many
-- The dashboard's bulk cancel, a batch at a time: the queued and running runs among these ids
-- (pgsched.cancel decides each, as run_cancel does). Returns the ids it cancelled or asked to stop.
SELECT id, pgsched.cancel(id) FROM pgsched.runs
WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('queued', 'running')
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: run_status
-- A run's status, wherever it is (runs or the history), for the message of a refused action.
SELECT status::text FROM pgsched.run_by_id(%(id)s) WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: run_listen_finished
-- A waiter hears the ends of awaited runs (payload: the run id) on its own connection.
LISTEN pgsched_finished;

-- name: run_unlisten_finished
-- Before a waiter's connection goes back to the pool.
UNLISTEN pgsched_finished;

-- name: run_watch
-- Ask for a notification when this run ends (the runs_notify_finished trigger), unless it has
-- ended already or someone asked before. A claim that met the row locked by this update
-- skipped it: the NOTIFY on 'pgsched' wakes the fetchers again, so the run is not left
-- waiting for their poll.
WITH watched AS (
    UPDATE pgsched.runs SET awaited = true
    WHERE id = %(id)s AND status IN ('queued', 'running') AND awaited IS NOT TRUE
    RETURNING queue, status
)
SELECT pg_notify('pgsched', queue) FROM watched WHERE status = 'queued';

-- name: run_outcome
-- What a waiter reads: the status, the result, and the last errors entry (the failure or the
-- cancellation reason). No row: no such run.
SELECT status::text, result, errors -> -1 AS last_error, task FROM pgsched.run_by_id(%(id)s);

-- name: queue_list_stats
-- The queue_stats view's numbers (schema 0005), for every tenant or for one; without the last
-- hour (succeeded_last_hour NULL, schema 0017) for what refreshes every few seconds.
-- Beside them, each queue's settings (0016, 0020) and held_back: its due runs its limits do not
-- let start now, from the figures at hand and the settings row (no scan; queue_settings_list
-- says how). For a tenant's key, of that tenant's due runs against the queue's limits.
SELECT q.queue, q.queued, q.due, q.running, q.failed, q.succeeded_last_hour, q.succeeded_last_minute,
       q.failed_last_minute, extract(epoch FROM q.oldest_queued_age)::float8 AS oldest_queued_age_s,
       coalesce(s.paused, false) AS paused, s.max_running, s.rate, s.burst, s.key_max_running,
       coalesce(s.fair, false) AS fair, pgsched.rate_per_s(s.rate) AS rate_per_s,
       CASE WHEN s.paused THEN q.due
            ELSE greatest(0, q.due - least(
                q.due,
                greatest(0, s.max_running - q.running),
                floor(pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, now()))::bigint))
       END AS held_back
FROM pgsched.queue_stats_v2(%(tenant)s::text, %(last_hour)s) AS q
     LEFT JOIN pgsched.queues AS s ON s.name = q.queue
ORDER BY q.queue;

-- name: queue_settings_get
-- One queue's settings; a queue without a row has the defaults (not paused, no limit).
SELECT %(name)s::text AS name, coalesce(s.paused, false) AS paused, s.max_running, s.rate, s.burst,
       s.key_max_running, coalesce(s.fair, false) AS fair, s.updated_at
FROM (SELECT) AS one LEFT JOIN pgsched.queues AS s ON s.name = %(name)s;

-- name: queue_settings_list
-- Every queue that has runs (queue_stats_for's, as `pgsched stats` reads them) or settings:
-- its settings beside its queued and running runs, and held_back: its due runs that its
-- limits do not let start now (all of them while paused; beyond what max_running less the
-- running and the bucket's whole tokens allow). Read from the figures the stats have anyway
-- plus the settings row: no scan. Runs waiting only for their key's turn are not counted.
SELECT coalesce(s.name, q.queue) AS name, coalesce(s.paused, false) AS paused, s.max_running, s.rate, s.burst,
       s.key_max_running, coalesce(s.fair, false) AS fair, coalesce(q.queued, 0) AS queued,
       coalesce(q.running, 0) AS running,
       CASE WHEN s.paused THEN coalesce(q.due, 0)
            ELSE greatest(0, coalesce(q.due, 0) - least(
                coalesce(q.due, 0),
                greatest(0, s.max_running - coalesce(q.running, 0)),
                floor(pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, now()))::bigint))
       END AS held_back,
       s.updated_at
FROM pgsched.queues AS s
     FULL JOIN pgsched.queue_stats_for(NULL) AS q ON q.queue = s.name
ORDER BY 1;

-- name: queue_settings_set
-- Change the settings given (%(set_paused)s, %(set_max_running)s, ... say which), creating the
-- row if the queue has none; the trigger tells the workers. A new rate starts a full bucket.
INSERT INTO pgsched.queues AS s (name, paused, max_running, rate, burst, key_max_running, fair)
VALUES (%(name)s, coalesce(%(paused)s::boolean, false), %(max_running)s::integer, %(rate)s::text,
        %(burst)s::integer, %(key_max_running)s::integer, coalesce(%(fair)s::boolean, false))
ON CONFLICT (name) DO UPDATE
SET paused = CASE WHEN %(set_paused)s THEN EXCLUDED.paused ELSE s.paused END,
    max_running = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running ELSE s.max_running END,
    rate = CASE WHEN %(set_rate)s THEN EXCLUDED.rate ELSE s.rate END,
    burst = CASE WHEN %(set_burst)s THEN EXCLUDED.burst WHEN %(set_rate)s AND EXCLUDED.rate IS NULL THEN NULL
                 ELSE s.burst END,
    key_max_running = CASE WHEN %(set_key_max_running)s THEN EXCLUDED.key_max_running ELSE s.key_max_running END,
    fair = CASE WHEN %(set_fair)s THEN EXCLUDED.fair ELSE s.fair END,
    tokens = CASE WHEN %(set_rate)s OR %(set_burst)s THEN NULL ELSE s.tokens END,
    updated_at = now()
RETURNING s.name, s.paused, s.max_running, s.rate, s.burst, s.key_max_running, s.fair, s.updated_at;

-- name: task_settings_get
-- One task's settings; a task without a row has the defaults (not paused, no limit).
SELECT %(task)s::text AS name, coalesce(s.paused, false) AS paused, s.max_running, s.rate, s.burst, s.updated_at
FROM (SELECT) AS one LEFT JOIN pgsched.task_settings AS s ON s.task = %(task)s;

-- name: task_settings_list
-- Every task with settings, with its queued (due) and running runs and held_back as for a
-- queue. Counted over the unfinished runs of these tasks only (a few tasks: a scan of the
-- runs not finished, through the claim and lease indexes' predicates).
SELECT s.task AS name, s.paused, s.max_running, s.rate, s.burst,
       coalesce(n.queued, 0) AS queued, coalesce(n.running, 0) AS running,
       CASE WHEN s.paused THEN coalesce(n.due, 0)
            ELSE greatest(0, coalesce(n.due, 0) - least(
                coalesce(n.due, 0),
                greatest(0, s.max_running - coalesce(n.running, 0)),
                floor(pgsched.tokens_at(s.rate, s.burst, s.tokens, s.tokens_at, now()))::bigint))
       END AS held_back,
       s.updated_at
FROM pgsched.task_settings AS s
     LEFT JOIN LATERAL (
         SELECT count(*) FILTER (WHERE status = 'queued') AS queued,
                count(*) FILTER (WHERE status = 'queued' AND run_at <= now()) AS due,
                count(*) FILTER (WHERE status = 'running') AS running
         FROM pgsched.runs WHERE task = s.task AND status IN ('queued', 'running')
     ) AS n ON true
ORDER BY 1;

-- name: task_settings_set
-- Change the settings given of a task, creating its row; the trigger tells the workers.
INSERT INTO pgsched.task_settings AS s (task, paused, max_running, rate, burst)
VALUES (%(name)s, coalesce(%(paused)s::boolean, false), %(max_running)s::integer, %(rate)s::text, %(burst)s::integer)
ON CONFLICT (task) DO UPDATE
SET paused = CASE WHEN %(set_paused)s THEN EXCLUDED.paused ELSE s.paused END,
    max_running = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running ELSE s.max_running END,
    rate = CASE WHEN %(set_rate)s THEN EXCLUDED.rate ELSE s.rate END,
    burst = CASE WHEN %(set_burst)s THEN EXCLUDED.burst WHEN %(set_rate)s AND EXCLUDED.rate IS NULL THEN NULL
                 ELSE s.burst END,
    tokens = CASE WHEN %(set_rate)s OR %(set_burst)s THEN NULL ELSE s.tokens END,
    updated_at = now()
RETURNING s.task AS name, s.paused, s.max_running, s.rate, s.burst, s.updated_at;

-- name: task_settings_declare
-- A worker's start: the rates its app's tasks declare (@app.task(rate_limit=...)), written
-- over what the table holds for those tasks (the code is where a declared rate is changed).
-- Rows whose rate is already that one stay untouched: a restart wakes nobody.
INSERT INTO pgsched.task_settings AS s (task, rate)
SELECT * FROM unnest(%(tasks)s::text[], %(rates)s::text[])
ON CONFLICT (task) DO UPDATE
SET rate = EXCLUDED.rate, burst = NULL, tokens = NULL, updated_at = now()
WHERE s.rate IS DISTINCT FROM EXCLUDED.rate;

-- name: job_upsert
-- Create or replace a job definition by tenant and name. next_run_at is computed by the caller
-- (or left NULL for the beat to compute); a definition change clears last_error.
INSERT INTO pgsched.jobs AS j (name, task, args, queue, priority, cron, every_s, at, tz, misfire, max_catchup,
                               max_attempts, enabled, next_run_at, tenant)
VALUES (%(name)s, %(task)s, %(args)s, %(queue)s, %(priority)s, %(cron)s, %(every_s)s, %(at)s, %(tz)s,
        %(misfire)s, %(max_catchup)s, %(max_attempts)s, %(enabled)s, %(next_run_at)s, %(tenant)s)
ON CONFLICT ((coalesce(tenant, '')), name) DO UPDATE
SET task = excluded.task, args = excluded.args, queue = excluded.queue, priority = excluded.priority,
    cron = excluded.cron, every_s = excluded.every_s, at = excluded.at, tz = excluded.tz,
    misfire = excluded.misfire, max_catchup = excluded.max_catchup, max_attempts = excluded.max_attempts,
    enabled = excluded.enabled, last_error = NULL, updated_at = now(),
    -- the same schedule keeps its place (and its missed runs); a new one starts afresh
    next_run_at = CASE WHEN (j.cron, j.every_s, j.at, j.tz) IS NOT DISTINCT FROM
                            (excluded.cron, excluded.every_s, excluded.at, excluded.tz)
                       THEN coalesce(j.next_run_at, excluded.next_run_at)
                       ELSE excluded.next_run_at END
RETURNING j.id, (xmax = 0) AS created;

-- name: job_find
-- The job a name means: the given tenant's; without one, the job without a tenant, else the
-- one tenant's job of that name. Two rows whose first has a tenant: the name is ambiguous.
SELECT id, tenant FROM pgsched.jobs
WHERE name = %(name)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
ORDER BY tenant NULLS FIRST
LIMIT 2;

-- name: job_get
-- One schedule by id, every column.
SELECT id, name, task, args, queue, priority, cron, every_s, at, tz, misfire, max_catchup, max_attempts,
       enabled, next_run_at, last_scheduled_for, last_error, tenant, created_at, updated_at
FROM pgsched.jobs WHERE id = %(id)s;

-- name: job_list
-- By name then tenant, keyset-paginated: %(after_name)s, %(after_tenant)s are the previous
-- page's last (NULL: from the start; '' for no tenant); %(limit)s NULL lists every job.
SELECT id, name, task, queue, cron, every_s, at, tz, misfire, enabled, next_run_at, last_scheduled_for, last_error,
       tenant
FROM pgsched.jobs
WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
  AND (%(after_name)s::text IS NULL OR (name, coalesce(tenant, '')) > (%(after_name)s, %(after_tenant)s::text))
ORDER BY name, coalesce(tenant, '')
LIMIT %(limit)s;

-- name: job_set_enabled
-- Enable or disable a schedule; returns its tenant for the caller's tenant check.
UPDATE pgsched.jobs SET enabled = %(enabled)s, updated_at = now() WHERE id = %(id)s RETURNING id, tenant;

-- name: job_delete
-- Delete a schedule; returns its tenant for the caller's tenant check.
DELETE FROM pgsched.jobs WHERE id = %(id)s RETURNING id, tenant;

-- name: job_trigger
-- One run of the job now, outside its schedule (a tenant's job makes that tenant's run).
INSERT INTO pgsched.runs (task, args, queue, priority, max_attempts, job_id, scheduled_for, tenant)
SELECT task, args, queue, priority, max_attempts, id, now(), tenant FROM pgsched.jobs WHERE id = %(id)s
RETURNING id;

-- name: job_due
-- Jobs the leader must fire now (due, or inserted by SQL without a next_run_at yet), read
-- without locks: job_fire applies a firing only if next_run_at is still what this read saw.
SELECT id, name, task, args, queue, priority, cron, every_s, at, tz, misfire, max_catchup, max_attempts,
       next_run_at, last_scheduled_for, coalesce(%(now)s::timestamptz, now()) AS now
FROM pgsched.jobs
WHERE enabled AND (next_run_at IS NULL OR next_run_at <= coalesce(%(now)s::timestamptz, now()))
ORDER BY next_run_at NULLS FIRST
LIMIT %(limit)s;

-- name: job_disable_unreadable
-- Disable the jobs job_due would read whose instants no reader can hold (pgsched.readable_instant,
-- schema 0009, which refuses such rows since; one written before would fail the whole batch
-- and stop every job from firing). Run before job_due. The instants move to the nearest
-- readable ones, so the row passes 0009's checks; last_error keeps what they were.
UPDATE pgsched.jobs
SET enabled = false, updated_at = now(),
    at = pgsched.readable_instant_near(at), next_run_at = pgsched.readable_instant_near(next_run_at),
    last_scheduled_for = pgsched.readable_instant_near(last_scheduled_for),
    last_error = 'its ' || concat_ws(', ',
        CASE WHEN NOT pgsched.readable_instant(at) THEN 'at ' || at END,
        CASE WHEN NOT pgsched.readable_instant(next_run_at) THEN 'next_run_at ' || next_run_at END,
        CASE WHEN NOT pgsched.readable_instant(last_scheduled_for) THEN 'last_scheduled_for ' || last_scheduled_for END)
        || ' cannot be read: instants must be finite and within the years 1 to 9999'
WHERE enabled AND (next_run_at IS NULL OR next_run_at <= coalesce(%(now)s::timestamptz, now()))
  AND NOT (pgsched.readable_instant(at) AND pgsched.readable_instant(next_run_at)
           AND pgsched.readable_instant(last_scheduled_for))
RETURNING name, last_error;

-- name: job_fire
-- One statement (one transaction) per firing: advance the job's next fire time, compare-and-set
-- on the next_run_at the leader read, and insert the runs of its fire times. A job paused,
-- rescheduled or fired by another beat since that read matches nothing and fires nothing
-- (a concurrent update is re-checked after its commit); (job_id, scheduled_for) is unique
-- besides, so a fire time reached twice from a stale view still makes one run.
-- Returns whether the job was advanced and how many runs were created.
WITH advanced AS (
    UPDATE pgsched.jobs
    SET next_run_at = %(next_run_at)s, last_error = NULL,
        last_scheduled_for = coalesce(%(last_scheduled_for)s, last_scheduled_for)
    WHERE id = %(id)s AND enabled AND next_run_at IS NOT DISTINCT FROM %(seen_next_run_at)s
    RETURNING id, task, args, queue, priority, max_attempts, tenant
), fired AS (
    INSERT INTO pgsched.runs (task, args, queue, priority, max_attempts, job_id, scheduled_for, run_at, tenant)
    SELECT a.task, a.args, a.queue, a.priority, a.max_attempts, a.id, t.at, t.at, a.tenant
    FROM advanced AS a, unnest(%(times)s::timestamptz[]) AS t(at)
    -- Its run may have ended and moved to runs_history (schema 0030), out of the index's reach.
    WHERE NOT EXISTS (SELECT FROM pgsched.runs_history AS h WHERE h.job_id = a.id AND h.scheduled_for = t.at)
    ON CONFLICT (job_id, scheduled_for) WHERE job_id IS NOT NULL AND scheduled_for IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT (SELECT count(*) FROM advanced) = 1 AS advanced, (SELECT count(*) FROM fired) AS created;

-- name: job_finish
-- A one-off that has fired is done: disabled (this one notifies pgsched_jobs; job_fire,
-- which runs every firing, does not touch the columns that do). Its own statement, so it
-- applies only if job_fire's "no next time" still stands: a definition re-applied in
-- between (a new `at`) is left to fire.
UPDATE pgsched.jobs SET enabled = false, updated_at = now()
WHERE id = %(id)s AND enabled AND next_run_at IS NULL;

-- name: job_disable_invalid
-- A row the beat cannot fire (inserted by SQL with a bad cron or timezone, or with values
-- its runs cannot take): keep it, stop it, and say why — unless it changed since the beat
-- read it (it may be fixed).
UPDATE pgsched.jobs SET enabled = false, last_error = %(error)s, updated_at = now()
WHERE id = %(id)s AND next_run_at IS NOT DISTINCT FROM %(seen_next_run_at)s;

-- name: job_next_due_in
-- Seconds until the next enabled job is due (NULL: no job scheduled).
SELECT extract(epoch FROM min(next_run_at) - now())::float8 FROM pgsched.jobs WHERE enabled;

-- name: leader_try_lock
-- Session-level: held until released or the connection ends, so a dead leader's lock frees itself.
SELECT pg_try_advisory_lock(hashtextextended('pgsched.beat', 0));

-- name: leader_unlock
-- The beat leader gives up its session advisory lock (on resigning).
SELECT pg_advisory_unlock(hashtextextended('pgsched.beat', 0));

-- name: leader_record
-- The new leader says who it is (on its lock connection).
INSERT INTO pgsched.beat_leader (host, pid, since, last_seen_at)
VALUES (%(host)s, %(pid)s, now(), now())
ON CONFLICT (singleton) DO UPDATE SET host = excluded.host, pid = excluded.pid, since = now(), last_seen_at = now();

-- name: leader_heartbeat
-- Run by the leader on its lock connection each round: any error means stepping down.
UPDATE pgsched.beat_leader SET last_seen_at = now() WHERE host = %(host)s AND pid = %(pid)s;

-- name: leader_resign
-- The resigning beat leader removes its row from beat_leader.
DELETE FROM pgsched.beat_leader WHERE host = %(host)s AND pid = %(pid)s;

-- name: leader_status
-- The recorded leader, if it still holds the leader lock: a beat that died without resigning
-- leaves its row, but its lock went with its connection.
SELECT host, pid, since, leading_for, last_seen_at FROM pgsched.beat_status
WHERE EXISTS (SELECT FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND (classid::bigint << 32 | objid::bigint) = hashtextextended('pgsched.beat', 0));

-- name: run_prune_finished
-- Delete up to %(limit)s finished runs older than the retention (batched: short locks). A
-- workflow's steps stay while its row does: a still running workflow's finished steps are its
-- dependents' parent_results and what `workflows show` draws. workflow_prune, run just before,
-- forgets a workflow (its row and edges) once the workflow itself ended before the retention;
-- its steps go here in the same round. (The workflows lookup is by primary key and only for
-- workflow steps: plain runs pay the NULL test.)
-- Their unique_keys go with them (schema 0037); returns how many runs went.
WITH gone AS (
    DELETE FROM pgsched.runs
    WHERE id IN (SELECT r.id FROM pgsched.runs AS r
                 WHERE r.finished_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s)
                   AND (r.workflow_id IS NULL
                        OR NOT EXISTS (SELECT FROM pgsched.workflows AS w WHERE w.id = r.workflow_id))
                 LIMIT %(limit)s)
    RETURNING id, unique_key
), keys_gone AS (
    DELETE FROM pgsched.run_unique_keys AS k USING gone
    WHERE gone.unique_key IS NOT NULL AND k.unique_key = gone.unique_key AND k.run_id = gone.id
)
SELECT count(*) FROM gone;

-- name: history_prune_default
-- Delete up to %(limit)s finished runs older than the retention from the DEFAULT partition of
-- runs_history (strays: runs of a day that had no partition); the day partitions go whole.
-- With their unique_keys (see run_prune_finished); returns how many runs went.
WITH gone AS (
    DELETE FROM pgsched.runs_history_default
    WHERE (id, finished_at) IN (SELECT id, finished_at FROM pgsched.runs_history_default
                                WHERE finished_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s)
                                LIMIT %(limit)s)
    RETURNING id, unique_key
), keys_gone AS (
    DELETE FROM pgsched.run_unique_keys AS k USING gone
    WHERE gone.unique_key IS NOT NULL AND k.unique_key = gone.unique_key AND k.run_id = gone.id
)
SELECT count(*) FROM gone;

-- name: history_prune_rows
-- With a retention shorter than a day (no partition is ever wholly past it), the rows past it
-- in any partition, up to %(limit)s (runs_history_finished_idx).
-- With their unique_keys (see run_prune_finished); returns how many runs went.
WITH gone AS (
    DELETE FROM pgsched.runs_history
    WHERE (id, finished_at) IN (SELECT id, finished_at FROM pgsched.runs_history
                                WHERE finished_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s)
                                LIMIT %(limit)s)
    RETURNING id, unique_key
), keys_gone AS (
    DELETE FROM pgsched.run_unique_keys AS k USING gone
    WHERE gone.unique_key IS NOT NULL AND k.unique_key = gone.unique_key AND k.run_id = gone.id
)
SELECT count(*) FROM gone;

-- name: history_lock_timeout
-- For the partition changes that follow in this transaction: give up rather than queue readers
-- and moves behind a lock wait (the maintenance retries on its next round).
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: history_partition_create
-- The day partition of runs_history for %(day)s (UTC); false: it exists.
-- (v2, schema 0032: DEFAULT locked against inserts while its strays move.)
SELECT pgsched.history_partition_create_v2(%(day)s::date);

-- name: history_partition_list
-- runs_history's day partitions, oldest first, each with the instant its range ends.
SELECT name, day, ends_at FROM pgsched.history_partitions();

-- name: history_partition_drop
-- Drop one day partition whose range ended before %(before)s (false: not that old, or gone).
-- (v2, schema 0037: its runs' unique_keys go with it.)
SELECT pgsched.history_partition_drop_v2(%(name)s, %(before)s::timestamptz);

-- name: history_mover_ready
-- Which runs move to runs_history here: 0 none (before schema 0030, post-deploy: the previous
-- release may still read finished runs in runs, and the leader leaves them there); 1 those
-- without a unique_key (0030); 2 those with one too (0049, post-deploy).
SELECT CASE WHEN to_regprocedure('pgsched.history_move_finished_v2(bigint, integer)') IS NOT NULL THEN 2
            WHEN to_regprocedure('pgsched.history_move_finished(bigint, integer)') IS NOT NULL THEN 1
            ELSE 0 END;

-- name: history_move_finished
-- Up to %(batch)s runs that ended before schema 0030 (id above %(after_id)s), moved to
-- runs_history in one statement; returns how many and the highest id reached (NULL: the end).
SELECT moved, reached FROM pgsched.history_move_finished(%(after_id)s, %(batch)s);

-- name: history_move_finished_v2
-- history_move_finished with the runs that have a unique_key (schema 0049), keys registered.
SELECT moved, reached FROM pgsched.history_move_finished_v2(%(after_id)s, %(batch)s);

-- name: history_move_workflow_steps
-- Up to %(batch)s steps of workflows that succeeded, moved to runs_history in one statement
-- (schema 0047); returns how many.
SELECT pgsched.history_move_workflow_steps(%(batch)s);

-- name: history_move_workflow_steps_v2
-- history_move_workflow_steps with the steps that have a unique_key (schema 0049), keys registered.
SELECT pgsched.history_move_workflow_steps_v2(%(batch)s);

-- name: history_default_rows
-- Rows in runs_history's DEFAULT partition, counted up to %(cap)s: it should be empty, and a
-- scrape never counts a large one whole.
SELECT count(*) FROM (SELECT FROM pgsched.runs_history_default LIMIT %(cap)s) AS strays;

-- name: beat_listen
-- The leader wakes when a job definition changes.
LISTEN pgsched_jobs;

-- ---- The REST API: workers, metrics, API keys.
-- The queries it shares with the CLI take an optional %(tenant)s filter themselves (NULL: every
-- tenant), so no query has a per-tenant copy.

-- name: run_count_by_queue_status
-- The /metrics gauge, without reading the history at each scrape (issue 13): unfinished runs
-- per queue and status counted exactly from their rows (queued: the claim index; running:
-- runs_lease_idx, every running run has a lease; waiting: runs_waiting_idx), finished ones (succeeded, failed, cancelled)
-- over the last hour from the per-minute rollup (recounted by the beat leader each round).
SELECT queue, 'queued' AS status, count(*) AS runs
FROM pgsched.runs WHERE status = 'queued'
GROUP BY queue
UNION ALL
SELECT queue, 'running', count(*)
FROM pgsched.runs WHERE lease_expires_at IS NOT NULL AND status = 'running'
GROUP BY queue
UNION ALL
SELECT queue, 'waiting', count(*)  -- workflow steps (runs_waiting_idx)
FROM pgsched.runs WHERE status = 'waiting'
GROUP BY queue
UNION ALL
SELECT r.queue, f.status, sum(f.runs)::bigint
FROM pgsched.run_rollup AS r,
     LATERAL (VALUES ('succeeded', r.succeeded), ('failed', r.failed), ('cancelled', r.cancelled)) AS f(status, runs)
WHERE r.minute >= date_trunc('minute', coalesce(%(now)s::timestamptz, now())) - interval '59 minutes'
GROUP BY r.queue, f.status
ORDER BY 1, 2;

-- name: run_duration_buckets
-- The /metrics histograms: how long the runs that finished in the last %(window_s)s seconds
-- waited (from due, or created if later, to their last start) and ran (last start to finish),
-- per queue. One row per (queue, metric, bucket) that holds runs: bucket k holds durations d
-- with bounds[k] < d <= bounds[k+1] (1-based bounds; k = 0 below the first, k = n above the
-- last). width_bucket counts the bounds <= d; Prometheus' "le" is inclusive, so a d equal to a
-- bound is moved down into that bound's bucket. Reads only recent rows (runs_finished_idx).
-- A row with an infinite instant (a plain SQL INSERT can write one) has no duration to count,
-- and subtracting it would fail the whole scrape: it is left out.
WITH recent AS (
    SELECT queue,
           greatest(extract(epoch FROM started_at - greatest(run_at, created_at))::float8, 0) AS wait_s,
           greatest(extract(epoch FROM finished_at - started_at)::float8, 0) AS run_s
    FROM pgsched.runs_all
    WHERE finished_at > coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(window_s)s)
      AND started_at IS NOT NULL
      AND isfinite(finished_at) AND isfinite(started_at) AND isfinite(run_at) AND isfinite(created_at)
), measured AS (
    SELECT queue, 'wait' AS metric, wait_s AS seconds FROM recent
    UNION ALL
    SELECT queue, 'run', run_s FROM recent
)
SELECT queue, metric,
       width_bucket(seconds, %(bounds)s::float8[]) - (seconds = ANY(%(bounds)s::float8[]))::int AS bucket,
       count(*) AS runs, sum(seconds) AS seconds
FROM measured
GROUP BY queue, metric, bucket
ORDER BY queue, metric, bucket;

-- name: worker_list
-- Live workers and how many runs each holds now (counted through runs_lease_idx: only
-- running runs have a lease).
WITH held AS (
    SELECT worker_id, count(*) AS running
    FROM pgsched.runs
    WHERE lease_expires_at IS NOT NULL AND status = 'running'
    GROUP BY worker_id
)
SELECT w.id, w.host, w.pid, w.queues, w.concurrency, coalesce(h.running, 0) AS running,
       w.started_at, w.last_seen_at
FROM pgsched.workers AS w
LEFT JOIN held AS h ON h.worker_id = w.id
ORDER BY w.id;

-- name: api_key_insert
-- The key itself is never stored: only its sha256 and its first characters.
INSERT INTO pgsched.api_keys (name, key_hash, prefix, scope, tenant)
VALUES (%(name)s, %(key_hash)s, %(prefix)s, %(scope)s, %(tenant)s)
RETURNING id, name, prefix, scope, tenant, created_at, revoked_at;

-- name: api_key_list
-- Every API key, without its hash.
SELECT id, name, prefix, scope, tenant, created_at, revoked_at FROM pgsched.api_keys ORDER BY id;

-- name: api_key_revoke
-- Idempotent: revoking a revoked key keeps its first revocation time.
UPDATE pgsched.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %(id)s
RETURNING id, name, prefix, scope, tenant, created_at, revoked_at;

-- name: api_key_authenticate
-- The live key with this digest (one index lookup per request).
SELECT id, scope, tenant FROM pgsched.api_keys WHERE key_hash = %(key_hash)s AND revoked_at IS NULL;

-- name: doctor_rows_breaking_rules
-- Rows that break schema 0009's rules now (a full scan of runs and jobs: for `pgsched doctor`,
-- not for a timer). After 0009 only rows written between its two repair passes can.
SELECT 'runs' AS table_name, count(*) AS rows, min(r.id) AS first_id, min(pgsched.run_problems(r)) AS example
FROM pgsched.runs AS r WHERE pgsched.run_problems(r) IS NOT NULL
UNION ALL
SELECT 'jobs', count(*), min(j.id), min(pgsched.job_problems(j))
FROM pgsched.jobs AS j WHERE pgsched.job_problems(j) IS NOT NULL;

-- name: doctor_repaired_rows
-- What repairs changed so far (the originals are in pgsched.repaired_rows.original).
SELECT table_name, repaired_by, count(*) AS rows, max(repaired_at) AS last_repaired_at,
       (array_agg(row_id ORDER BY id))[1:10] AS first_ids
FROM pgsched.repaired_rows
GROUP BY table_name, repaired_by
ORDER BY table_name, repaired_by;

-- name: doctor_unvalidated_constraints
-- Constraints added NOT VALID by a migration: they hold for every write since, not yet for
-- every old row.
SELECT c.conrelid::regclass::text AS table_name, c.conname AS constraint_name
FROM pg_constraint AS c
WHERE c.connamespace = 'pgsched'::regnamespace AND NOT c.convalidated
ORDER BY 1, 2;

-- name: doctor_autovacuum
-- Whether autovacuum runs at all (it needs track_counts) and which pgsched tables turned it off.
SELECT current_setting('autovacuum')::bool AS autovacuum, current_setting('track_counts')::bool AS track_counts,
       coalesce(array_agg(c.relname::text ORDER BY c.relname) FILTER (WHERE EXISTS (
           SELECT FROM pg_options_to_table(c.reloptions) AS o
           WHERE o.option_name = 'autovacuum_enabled' AND NOT o.option_value::bool)), '{}') AS disabled_on
FROM pg_class AS c
WHERE c.relnamespace = 'pgsched'::regnamespace AND c.relkind IN ('r', 'p');

-- name: doctor_settings
-- Settings that hurt a queue: synchronous_commit as a new session of this role gets it (the
-- configuration file, ALTER SYSTEM, ALTER DATABASE/ROLE), and the connections left to take.
SELECT s.reset_val AS synchronous_commit, s.source AS synchronous_commit_source,
       current_setting('max_connections')::int AS max_connections,
       current_setting('superuser_reserved_connections')::int AS reserved_connections,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections_in_use
FROM pg_settings AS s
WHERE s.name = 'synchronous_commit';

-- name: doctor_server
-- Which server this connection reached: the database, when its postmaster started (two DSNs
-- reach the same server and database when both agree), and the port the server itself listens
-- on (another port than the one connected to means something sits in between).
SELECT current_database() AS database, pg_postmaster_start_time() AS started, inet_server_port() AS port;

-- name: doctor_clock
-- The database's clock, for `pgsched doctor`'s clock-skew check.
SELECT clock_timestamp() AS now;

-- name: worker_heartbeat_ages
-- Every worker row and how long since its last heartbeat (the database's clock on both ends).
SELECT id, host, pid, queues, extract(epoch FROM now() - last_seen_at)::float8 AS silent_s
FROM pgsched.workers
ORDER BY id;

-- name: doctor_repair
-- `pgsched doctor --fix`: repair the runs and schedules that break a schema rule.
SELECT pgsched.repair_runs(0, 'pgsched doctor --fix') AS runs, pgsched.repair_jobs('pgsched doctor --fix') AS jobs;

-- ---- The dashboard (/ui, pgsched/ui/): sessions, sign-in links, the per-minute rollup, failure groups.

-- name: ui_statement_timeout
-- Every dashboard query runs in a transaction that starts with this: a page never holds the
-- database longer than %(ms)s milliseconds (SET LOCAL, as a function so it takes a parameter).
SELECT set_config('statement_timeout', %(ms)s, true);

-- name: ui_session_insert
-- A dashboard session for an API key, valid for ttl_s.
INSERT INTO pgsched.ui_sessions (token_hash, key_id, expires_at)
VALUES (%(token_hash)s, %(key_id)s, coalesce(%(now)s::timestamptz, now()) + make_interval(secs => %(ttl_s)s));

-- name: ui_session_key
-- The live key behind a session token's digest: none once the session expired, was ended, or
-- its key was revoked (one primary-key lookup and one on api_keys per page).
SELECT k.id, k.scope, k.tenant
FROM pgsched.ui_sessions AS s JOIN pgsched.api_keys AS k ON k.id = s.key_id
WHERE s.token_hash = %(token_hash)s AND s.expires_at > coalesce(%(now)s::timestamptz, now()) AND k.revoked_at IS NULL;

-- name: ui_session_delete
-- Sign out: delete the session.
DELETE FROM pgsched.ui_sessions WHERE token_hash = %(token_hash)s;

-- name: ui_sign_in_insert
-- A one-time dashboard sign-in link's token, valid for ttl_s.
INSERT INTO pgsched.ui_sign_in_tokens (token_hash, key_id, expires_at)
VALUES (%(token_hash)s, %(key_id)s, now() + make_interval(secs => %(ttl_s)s));

-- name: ui_sign_in_consume
-- Use a one-time sign-in token: deleted whatever happens next, so it works at most once;
-- returns its key's id while the token is fresh and the key live.
WITH used AS (
    DELETE FROM pgsched.ui_sign_in_tokens WHERE token_hash = %(token_hash)s RETURNING key_id, expires_at
)
SELECT k.id FROM used JOIN pgsched.api_keys AS k ON k.id = used.key_id
WHERE used.expires_at > now() AND k.revoked_at IS NULL;

-- name: ui_session_prune
-- The leader's maintenance: forget expired sessions and sign-in tokens.
WITH sessions AS (
    DELETE FROM pgsched.ui_sessions WHERE expires_at < coalesce(%(now)s::timestamptz, now()) RETURNING 1
), tokens AS (
    DELETE FROM pgsched.ui_sign_in_tokens WHERE expires_at < coalesce(%(now)s::timestamptz, now()) RETURNING 1
)
SELECT (SELECT count(*) FROM sessions) + (SELECT count(*) FROM tokens);

-- name: rollup_refresh
-- Recount, whole, the minutes since %(minutes)s minutes ago from the runs that finished in them
-- (runs_finished_idx): idempotent, so an overlapping or repeated round writes the same numbers.
-- Succeeded, failed and cancelled runs count (a retried attempt is not an outcome); the
-- durations only of the first two (the dashboard's averages divide by them). Rows with an
-- infinite instant (a plain SQL INSERT can write one) have no duration and are left out.
INSERT INTO pgsched.run_rollup AS r (minute, queue, task, tenant, succeeded, failed, run_s_sum, wait_s_sum, cancelled)
SELECT date_trunc('minute', finished_at), queue, task, coalesce(tenant, ''),
       count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
       coalesce(sum(greatest(extract(epoch FROM finished_at - started_at)::float8, 0))
                    FILTER (WHERE status <> 'cancelled'), 0),
       coalesce(sum(greatest(extract(epoch FROM started_at - greatest(run_at, created_at))::float8, 0))
                    FILTER (WHERE status <> 'cancelled'), 0),
       count(*) FILTER (WHERE status = 'cancelled')
FROM pgsched.runs_all
WHERE finished_at >= date_trunc('minute', coalesce(%(now)s::timestamptz, now())) - make_interval(mins => %(minutes)s)
  AND finished_at <= coalesce(%(now)s::timestamptz, now())
  AND status IN ('succeeded', 'failed', 'cancelled') AND isfinite(finished_at)
  AND isfinite(coalesce(started_at, finished_at)) AND isfinite(run_at) AND isfinite(created_at)
GROUP BY 1, 2, 3, 4
ON CONFLICT (minute, queue, task, tenant) DO UPDATE
SET succeeded = excluded.succeeded, failed = excluded.failed, run_s_sum = excluded.run_s_sum,
    wait_s_sum = excluded.wait_s_sum, cancelled = excluded.cancelled;

-- name: rollup_prune
-- The leader drops the per-minute rollup's rows older than 8 days (the insights compare with the last 7).
DELETE FROM pgsched.run_rollup WHERE minute < coalesce(%(now)s::timestamptz, now()) - interval '8 days';

-- name: rollup_last_hour
-- Succeeded and failed runs per queue and minute over the last hour (the queues page's charts).
SELECT queue, minute, sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed
FROM pgsched.run_rollup
WHERE minute >= date_trunc('minute', coalesce(%(now)s::timestamptz, now())) - interval '59 minutes'
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
GROUP BY queue, minute
ORDER BY queue, minute;

-- name: rollup_against_baseline
-- Per queue and task: the last hour's runs, failures, run and wait seconds, and the same hour of each
-- of the 7 days before (the baseline the anomaly flags compare against). Every pair with a
-- baseline, ran this hour or not: a queue whose runs are stuck finishes none, and its usual
-- wait is what its oldest due run's age is held against. Eight range scans of
-- the primary key (minute first); now() stays in each WHERE so the planner can use it.
WITH recent AS (
    SELECT queue, task, sum(succeeded + failed) AS runs, sum(failed) AS failed, sum(run_s_sum) AS run_s,
           sum(wait_s_sum) AS wait_s
    FROM pgsched.run_rollup
    WHERE minute > coalesce(%(now)s::timestamptz, now()) - interval '1 hour'
      AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    GROUP BY queue, task
), usual AS (
    SELECT r.queue, r.task, sum(r.succeeded + r.failed) AS runs, sum(r.failed) AS failed, sum(r.run_s_sum) AS run_s,
           sum(r.wait_s_sum) AS wait_s
    FROM generate_series(1, 7) AS d(days),
         LATERAL (SELECT queue, task, succeeded, failed, run_s_sum, wait_s_sum FROM pgsched.run_rollup
                  WHERE minute > coalesce(%(now)s::timestamptz, now()) - make_interval(days => d.days, hours => 1)
                    AND minute <= coalesce(%(now)s::timestamptz, now()) - make_interval(days => d.days)
                    AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)) AS r
    GROUP BY r.queue, r.task
)
SELECT usual.queue, usual.task, coalesce(recent.runs, 0)::bigint AS runs, coalesce(recent.failed, 0)::bigint AS failed,
       coalesce(recent.run_s, 0) AS run_s, coalesce(recent.wait_s, 0) AS wait_s,
       usual.runs::bigint AS usual_runs, usual.failed::bigint AS usual_failed, usual.run_s AS usual_run_s,
       usual.wait_s AS usual_wait_s
FROM usual LEFT JOIN recent USING (queue, task)
ORDER BY usual.queue, usual.task;

-- name: run_failure_groups
-- Runs that ended failed in the last week, by task and the type of their last error, with the
-- counts of the last hour, day and week (runs_failed_idx: small while failures are rare).
SELECT task, coalesce(errors -> -1 ->> 'type', '') AS error_type,
       count(*) FILTER (WHERE finished_at > coalesce(%(now)s::timestamptz, now()) - interval '1 hour') AS last_hour,
       count(*) FILTER (WHERE finished_at > coalesce(%(now)s::timestamptz, now()) - interval '1 day') AS last_day,
       count(*) AS last_week, max(finished_at) AS last_seen
FROM pgsched.runs_all
WHERE status = 'failed' AND finished_at > coalesce(%(now)s::timestamptz, now()) - interval '7 days'
  AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
GROUP BY 1, 2
ORDER BY last_seen DESC
LIMIT %(limit)s;

-- name: run_last_of_jobs
-- The newest run of each of these jobs (by fire time, through runs_job_scheduled_for_idx).
SELECT j.id AS job_id, last.id, last.status::text AS status, last.scheduled_for
FROM unnest(%(job_ids)s::bigint[]) AS j(id),
     LATERAL (SELECT id, status, scheduled_for FROM pgsched.runs_all
              WHERE job_id = j.id AND scheduled_for IS NOT NULL
              ORDER BY scheduled_for DESC LIMIT 1) AS last;

-- name: job_name_of
-- A schedule's name, for the dashboard's run page.
SELECT name FROM pgsched.jobs WHERE id = %(id)s;

-- name: worker_get
-- One registered worker by id.
SELECT id, host, pid, queues, concurrency, started_at, last_seen_at FROM pgsched.workers WHERE id = %(id)s;

-- ---- Vital signs of a deployment: read by /metrics at every scrape and by `pgsched doctor`,
-- so each reads only what an index isolates or a small catalog view, never the run history.

-- name: worker_live_by_queue
-- Workers seen within %(live_s)s seconds, per queue they serve, with their largest concurrency.
-- A worker that died keeps its row until a sweep removes it: last_seen_at, not the row, says alive.
SELECT q.queue, count(*) AS workers, max(w.concurrency) AS concurrency
FROM pgsched.workers AS w, unnest(w.queues) AS q(queue)
WHERE w.last_seen_at > now() - make_interval(secs => %(live_s)s)
GROUP BY q.queue
ORDER BY q.queue;

-- name: run_lease_expired_by_queue
-- Running runs whose lease ran out and that nobody rescued yet, per queue (runs_lease_idx).
-- A lease of -infinity (a row from before schema 0009's rules) counts from year 1, as
-- queue_stats_for does: subtracting it would fail the whole scrape.
SELECT queue, count(*) AS runs,
       extract(epoch FROM now() - greatest(min(lease_expires_at), '0001-01-02 00:00:00+00'))::float8 AS oldest_s
FROM pgsched.runs
WHERE lease_expires_at < now() AND status = 'running'
GROUP BY queue
ORDER BY queue;

-- name: queue_desired_workers
-- pgsched.desired_workers (schema 0014) for each queue, each with its own runs per worker.
SELECT q.queue, pgsched.desired_workers(q.queue, q.per_worker) AS workers
FROM unnest(%(queues)s::text[], %(per_worker)s::int[]) AS q(queue, per_worker)
ORDER BY q.queue;

-- name: database_oldest_transaction
-- The oldest open transaction of this database (or a replication connection, which can hold
-- the horizon back for every database): its age in seconds and its xmin's age in transactions,
-- and who holds it. Vacuum cannot remove a row version deleted after that xmin, so the claim
-- index fills with dead entries. Prepared transactions pin the horizon too. Other roles'
-- sessions show their xact_start only to a member of pg_read_all_stats (pg_monitor).
WITH open AS (
    SELECT now() - xact_start AS age, greatest(age(backend_xmin), age(backend_xid)) AS xmin_age,
           'pid ' || pid || ' (' || concat_ws(', ', usename, nullif(application_name, ''), state) || ')' AS holder
    FROM pg_stat_activity
    WHERE pid <> pg_backend_pid() AND (backend_xmin IS NOT NULL OR backend_xid IS NOT NULL)
      -- Not autovacuum's workers: other vacuums ignore a vacuum's xmin (and it ends by itself).
      AND ((datname = current_database() AND backend_type = 'client backend') OR backend_type = 'walsender')
    UNION ALL
    SELECT now() - prepared, age(transaction), 'prepared transaction ' || quote_literal(gid)
    FROM pg_prepared_xacts
    WHERE database = current_database()
    UNION ALL
    -- A replication slot's xmin (a standby with hot_standby_feedback, connected or not) holds
    -- the horizon of every database with no session open: it has no age in seconds, only in
    -- transactions. A logical slot's catalog_xmin holds back only the system catalogs.
    SELECT NULL, age(xmin), 'replication slot ' || quote_literal(slot_name)
    FROM pg_replication_slots
    WHERE xmin IS NOT NULL
)
SELECT coalesce(extract(epoch FROM max(age)), 0)::float8 AS age_s, coalesce(max(xmin_age), 0) AS xmin_age,
       (SELECT holder FROM open ORDER BY age DESC NULLS LAST, xmin_age DESC NULLS LAST LIMIT 1) AS holder
FROM open;

-- name: replica_lag
-- On the read replica (PGSCHED_READ_DSN): whether it is a standby, whether a WAL receiver runs
-- (none: its upstream is gone, and what it lacks is unknown), and how many seconds of the
-- primary's commits it has received but not replayed (0 when replay has caught up with what
-- arrived: an idle primary commits nothing, and the last replayed commit's age says nothing).
SELECT pg_is_in_recovery() AS in_recovery,
       EXISTS (SELECT FROM pg_stat_wal_receiver) AS receiving,
       CASE WHEN NOT pg_is_in_recovery() OR pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
            ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0) END::float8 AS lag_s;

-- name: run_table_vacuum_state
-- The runs table's dead row versions (pg_stat_user_tables: an estimate the statistics collector
-- keeps, no scan) and its claim index's size: both grow while a transaction holds vacuum's
-- horizon back, and shrink (the index: stops growing) once vacuum can do its work.
SELECT coalesce(s.n_dead_tup, 0) AS dead_tuples, coalesce(s.n_live_tup, 0) AS live_tuples,
       pg_relation_size('pgsched.runs_claim_idx') AS claim_index_bytes
FROM pg_stat_user_tables AS s
WHERE s.relid = 'pgsched.runs'::regclass;

-- name: tenant_get
-- One tenant's quotas (a tenant never set: none), its queued runs (runs_tenant_queued_idx),
-- its running runs (runs_tenant_running_idx, 0033) and the runs it created today (UTC; counted
-- only while it has a quota).
SELECT n.name, t.max_queued, t.runs_per_day, t.max_running, t.updated_at,
       (SELECT count(*) FROM pgsched.runs WHERE tenant = n.name AND status = 'queued') AS queued,
       (SELECT count(*) FROM pgsched.runs WHERE tenant = n.name AND status = 'running') AS running,
       coalesce((SELECT created FROM pgsched.tenant_days
                 WHERE tenant = n.name AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS created_today
FROM (SELECT %(name)s::text AS name) AS n
LEFT JOIN pgsched.tenants AS t ON t.name = n.name;

-- name: tenant_list
-- Every tenant with a quota row, as tenant_get shows one (also each /metrics scrape: two index
-- counts per such tenant, none over the history).
SELECT t.name, t.max_queued, t.runs_per_day, t.max_running, t.updated_at,
       (SELECT count(*) FROM pgsched.runs WHERE tenant = t.name AND status = 'queued') AS queued,
       (SELECT count(*) FROM pgsched.runs WHERE tenant = t.name AND status = 'running') AS running,
       coalesce((SELECT created FROM pgsched.tenant_days
                 WHERE tenant = t.name AND day = (now() AT TIME ZONE 'UTC')::date), 0) AS created_today
FROM pgsched.tenants AS t
ORDER BY t.name;

-- name: tenant_set
-- Change the quotas given (%(set_max_queued)s / %(set_runs_per_day)s / %(set_max_running)s say which), creating the
-- tenant's row if it has none. runs_per_day counts every run the tenant created today (UTC),
-- before the quota was set too (the trigger reads the usage once a day per tenant).
INSERT INTO pgsched.tenants AS t (name, max_queued, runs_per_day, max_running)
VALUES (%(name)s, %(max_queued)s::integer, %(runs_per_day)s::integer, %(max_running)s::integer)
ON CONFLICT (name) DO UPDATE
SET max_queued = CASE WHEN %(set_max_queued)s THEN EXCLUDED.max_queued ELSE t.max_queued END,
    runs_per_day = CASE WHEN %(set_runs_per_day)s THEN EXCLUDED.runs_per_day ELSE t.runs_per_day END,
    max_running = CASE WHEN %(set_max_running)s THEN EXCLUDED.max_running ELSE t.max_running END,
    updated_at = now()
RETURNING t.name;

-- name: tenant_usage_fold_lock
-- The fold's watermark, locked for the rest of the transaction (a second leader in a brief
-- split-brain waits, then folds from where the first left off), and how far this round goes:
-- up to %(lag_s)s seconds ago. The lag leaves time for completions to commit: their
-- finished_at is their transaction's start. No row (a schema made from schema.sql): none yet.
WITH created AS (
    INSERT INTO pgsched.tenant_usage_fold (finished_until) VALUES (now()) ON CONFLICT DO NOTHING
)
SELECT finished_until AS since,
       greatest(finished_until, coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(lag_s)s)) AS up_to
FROM pgsched.tenant_usage_fold FOR UPDATE;

-- name: tenant_usage_fold
-- Fold into tenant_usage, per tenant and UTC day: the created-runs log (deleted as it is read:
-- rows committed after this statement's snapshot stay for the next round), and the tenant runs
-- that finished from %(since)s to %(up_to)s (tenant_usage_fold_lock's; a range scan of
-- runs_finished_idx), then %(up_to)s becomes the watermark. In tenant_usage_fold_lock's
-- transaction. The bounds are parameters, not a CTE: a CTE hid them from the planner, which
-- read every run (20,000 finished: 1.1 s; now the round's own runs only).
WITH logged AS (
    DELETE FROM pgsched.tenant_usage_log RETURNING tenant, day, created
), finished AS (
    SELECT r.tenant, (r.finished_at AT TIME ZONE 'UTC')::date AS day, r.attempt, r.status,
           -- Seconds of every attempt: each failed one from its errors entry, the last one (when
           -- it left no entry: it succeeded, or was cancelled) from its start to the finish.
           coalesce((SELECT sum(greatest(extract(epoch FROM pgsched.instant_or_null(e ->> 'at')
                                                  - pgsched.instant_or_null(e ->> 'started_at')), 0))
                     FROM jsonb_array_elements(CASE WHEN jsonb_typeof(r.errors) = 'array' THEN r.errors END) AS e), 0)
           + CASE WHEN jsonb_array_length(CASE WHEN jsonb_typeof(r.errors) = 'array' THEN r.errors ELSE '[]' END) < r.attempt
                  THEN coalesce(greatest(extract(epoch FROM r.finished_at - r.started_at), 0), 0) ELSE 0 END AS task_s
    FROM pgsched.runs_all AS r
    WHERE r.finished_at >= %(since)s AND r.finished_at < %(up_to)s AND r.tenant IS NOT NULL
      AND r.status IN ('succeeded', 'failed', 'cancelled') AND isfinite(r.finished_at)
), counted AS (
    SELECT tenant, day, created::bigint, 0::bigint AS started, 0::bigint AS succeeded, 0::bigint AS failed,
           0::bigint AS cancelled, 0::float8 AS task_s
    FROM logged
    UNION ALL
    SELECT tenant, day, 0, attempt, (status = 'succeeded')::int, (status = 'failed')::int,
           (status = 'cancelled')::int, task_s::float8
    FROM finished
), added AS (
    INSERT INTO pgsched.tenant_usage AS u (tenant, day, created, started, succeeded, failed, cancelled, task_s)
    SELECT tenant, day, sum(created), sum(started), sum(succeeded), sum(failed), sum(cancelled), sum(task_s)
    FROM counted
    GROUP BY tenant, day
    ON CONFLICT (tenant, day) DO UPDATE
    SET created = u.created + excluded.created, started = u.started + excluded.started,
        succeeded = u.succeeded + excluded.succeeded, failed = u.failed + excluded.failed,
        cancelled = u.cancelled + excluded.cancelled, task_s = u.task_s + excluded.task_s
    RETURNING 1
), advanced AS (
    UPDATE pgsched.tenant_usage_fold SET finished_until = %(up_to)s
    RETURNING finished_until
)
SELECT (SELECT count(*) FROM added) AS rows, (SELECT finished_until FROM advanced) AS finished_until;

-- name: tenant_usage_prune
-- Usage is kept 400 days (a year of monthly bills and their disputes); quota day counters 2.
WITH usage AS (
    DELETE FROM pgsched.tenant_usage WHERE day < (coalesce(%(now)s::timestamptz, now()) AT TIME ZONE 'UTC')::date - 400
)
DELETE FROM pgsched.tenant_days WHERE day < (coalesce(%(now)s::timestamptz, now()) AT TIME ZONE 'UTC')::date - 1;

-- name: tenant_usage_list
-- Usage per tenant and UTC day since %(since)s (a tenant, or all with %(tenant)s NULL): the
-- folded figures plus the created runs logged since the last fold, so created is current; the
-- finished figures lag by the fold's lag and the leader's round.
SELECT tenant, day, sum(created)::bigint AS created, sum(started)::bigint AS started,
       sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed,
       sum(cancelled)::bigint AS cancelled, sum(task_s)::float8 AS task_s
FROM (
    SELECT tenant, day, created, started, succeeded, failed, cancelled, task_s FROM pgsched.tenant_usage
    WHERE day >= %(since)s::date AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
    UNION ALL
    SELECT tenant, day, created, 0, 0, 0, 0, 0 FROM pgsched.tenant_usage_log
    WHERE day >= %(since)s::date AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)
) AS u
GROUP BY tenant, day
ORDER BY day, tenant;

-- name: job_skip_firing
-- A firing the job's tenant quota refused (SQLSTATE PS429): its fire times pass without runs
-- and last_error says why; the job stays enabled and fires again at its next time.
UPDATE pgsched.jobs
SET next_run_at = %(next_run_at)s, last_error = %(error)s,
    last_scheduled_for = coalesce(%(last_scheduled_for)s, last_scheduled_for)
WHERE id = %(id)s AND enabled AND next_run_at IS NOT DISTINCT FROM %(seen_next_run_at)s
RETURNING id;

-- ---- Workflows (schema 0019): chains, groups, chords and DAGs of runs.

-- name: workflow_insert
-- A workflow's row (its runs follow in the same transaction).
INSERT INTO pgsched.workflows (name, tenant, steps)
VALUES (%(name)s, %(tenant)s, %(steps)s)
RETURNING id;

-- name: workflow_run_copy
-- A workflow's runs: steps with parents 'waiting' (parents_pending set: no deferred check), the others 'queued'.
COPY pgsched.runs (id, task, args, queue, priority, run_at, max_attempts, tenant, trace_context, request_id,
                   status, workflow_id, parents_pending) FROM STDIN;

-- name: workflow_edge_copy
-- Their edges; the run_edges_inserted trigger checks them and counts what each step waits for.
COPY pgsched.run_edges (child, parent, condition, position) FROM STDIN;

-- name: workflow_list
-- Newest first, keyset-paginated by id; for one tenant or all. unfinished: its steps not
-- ended, counted for running workflows only (runs_workflow_idx).
SELECT w.id, w.name, w.tenant, w.status, w.steps, CASE WHEN w.status = 'running' THEN (SELECT count(*) FROM pgsched.runs AS r
                                             WHERE r.workflow_id = w.id AND r.status IN ('waiting', 'queued', 'running'))
            ELSE 0 END AS unfinished,
       w.created_at, w.finished_at, w.cancel_requested_at
FROM pgsched.workflows AS w
WHERE (%(status)s::text IS NULL OR w.status = %(status)s)
  AND (%(before_id)s::bigint IS NULL OR w.id < %(before_id)s)
  AND (%(tenant)s::text IS NULL OR w.tenant = %(tenant)s)
ORDER BY w.id DESC
LIMIT %(limit)s;

-- name: workflow_get
-- One workflow with how many of its steps have not ended (0 once it has ended).
SELECT w.id, w.name, w.tenant, w.status, w.steps, CASE WHEN w.status = 'running' THEN (SELECT count(*) FROM pgsched.runs AS r
                                             WHERE r.workflow_id = w.id AND r.status IN ('waiting', 'queued', 'running'))
            ELSE 0 END AS unfinished,
       w.created_at, w.finished_at, w.cancel_requested_at
FROM pgsched.workflows AS w
WHERE w.id = %(id)s AND (%(tenant)s::text IS NULL OR w.tenant = %(tenant)s);

-- name: workflow_steps
-- Each step with its parents (in order) and conditions, and why it was cancelled (runs_workflow_idx).
SELECT r.id, r.task, r.status::text AS status, r.attempt, r.max_attempts, r.parents_pending,
       r.started_at, r.finished_at,
       coalesce((SELECT array_agg(e.parent ORDER BY e.position, e.parent) FROM pgsched.run_edges AS e
                 WHERE e.child = r.id), '{}') AS parents,
       coalesce((SELECT array_agg(e.condition ORDER BY e.position, e.parent) FROM pgsched.run_edges AS e
                 WHERE e.child = r.id), '{}') AS conditions,
       CASE WHEN r.status = 'cancelled' THEN r.errors -> -1 ->> 'message' END AS cancel_reason
FROM pgsched.runs_all AS r
WHERE r.workflow_id = %(id)s
ORDER BY r.id
LIMIT %(limit)s;

-- name: workflow_cancel
-- Cancel every step not yet ended (schema 0019's pgsched.workflow_cancel). No row: no such
-- workflow (for this tenant).
SELECT pgsched.workflow_cancel(id) FROM pgsched.workflows
WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: workflow_status
-- A workflow's status (WorkflowHandle.status).
SELECT status FROM pgsched.workflows WHERE id = %(id)s;

-- name: run_workflow_of
-- The workflow a run is a step of (NULL: none), for the run's detail page.
SELECT workflow_id FROM pgsched.run_by_id(%(id)s) WHERE (%(tenant)s::text IS NULL OR tenant = %(tenant)s);

-- name: workflow_prune
-- The leader's maintenance, before run_prune_finished: forget up to %(limit)s workflows that
-- ended before the retention, with the edges of their steps (runs_workflow_idx finds them while
-- the runs are still there). Their runs go with the runs' own pruning.
WITH old AS (
    SELECT id FROM pgsched.workflows
    WHERE status <> 'running' AND finished_at < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(retention_s)s)
    ORDER BY finished_at
    LIMIT %(limit)s
), edges AS (
    DELETE FROM pgsched.run_edges AS e
    USING pgsched.runs_all AS r, old
    WHERE r.workflow_id = old.id AND e.child = r.id
), gone AS (
    DELETE FROM pgsched.workflows AS w USING old WHERE w.id = old.id RETURNING w.id
)
SELECT count(*) FROM gone;

-- name: workflow_repair
-- The leader's maintenance: release or cancel what was left waiting, settle finished workflows
-- (finds nothing on a healthy system). (v2, schema 0058: parents that moved to the history count.)
SELECT pgsched.workflow_repair_v2(make_interval(secs => %(min_age_s)s), %(limit)s);

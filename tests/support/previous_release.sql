-- Statements as the release before 0011_celery ran them, for tests/test_upgrade.py: a worker of that
-- release claims with these while a migration is applied (the current ones read columns the
-- migrations being applied add). Only the statements the current release changed are here.

-- name: run_claim
-- Claim up to %(limit)s due runs (never more than the worker's free slots). The lateral
-- subquery walks the claim index once per queue, in claim order, and locks with SKIP LOCKED
-- so concurrent workers never wait on each other; MATERIALIZED fences the planner so the
-- LIMIT applies before the UPDATE (a nested loop could otherwise update more rows).
-- %(only_tasks)s / %(skip_tasks)s (NULL: any task) let a worker with a process pool claim
-- its process-pool tasks apart from the others, up to the children it has free.
WITH next AS MATERIALIZED (
    SELECT c.id
    FROM unnest(%(queues)s::text[]) AS q(name),
         LATERAL (
             SELECT id, priority, run_at
             FROM pgsched.runs
             WHERE status = 'queued' AND queue = q.name
               AND run_at <= coalesce(%(now)s::timestamptz, now())
               AND (%(only_tasks)s::text[] IS NULL OR task = ANY (%(only_tasks)s::text[]))
               AND (%(skip_tasks)s::text[] IS NULL OR task <> ALL (%(skip_tasks)s::text[]))
             ORDER BY priority, run_at, id
             LIMIT %(limit)s
             FOR UPDATE SKIP LOCKED
         ) AS c
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
RETURNING r.id, r.task, r.args, r.attempt, r.max_attempts;

-- name: queue_settings_of_worker
-- The previous release read no queue settings (pgsched.queues came with 0016): none are paused
-- or limited, and it claims from every queue with run_claim above.
SELECT NULL::text AS name, false AS paused, NULL::integer AS max_running WHERE false;

-- name: worker_register
-- The previous release registered without advertises_waits (0027): its workers LISTEN but never
-- say they wait, so while one is registered the insert trigger notifies every queue.
INSERT INTO pgsched.workers (host, pid, queues, concurrency)
VALUES (%(host)s, %(pid)s, %(queues)s, %(concurrency)s)
RETURNING id;

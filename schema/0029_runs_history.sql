-- Expand (issue 13, part 1: a small hot table): the home of finished runs, and one view of
-- every run. Nothing moves here yet: runs_history stays empty until a later release's
-- post-deploy file switches the move on, and every reader of this release already reads
-- pgsched.runs_all, so that when runs start moving none of them loses a run.
--
-- runs_history: finished runs, never updated, partitioned by RANGE (finished_at) in UTC days
-- (runs_history_YYYYMMDD, created ahead by the beat leader's maintenance), so that retention
-- drops a day's partition (one catalog change) instead of deleting its rows one by one. A run
-- whose day has no partition lands in runs_history_default; /metrics says when it holds any.
-- The columns are runs' own, in runs' order: a column added to runs is added here too, and
-- runs_all is replaced with it.

CREATE TABLE pgsched.runs_history (LIKE pgsched.runs) PARTITION BY RANGE (finished_at);
ALTER TABLE pgsched.runs_history ALTER COLUMN finished_at SET NOT NULL;

-- By id (run_get, run_status, run_outcome: one probe per partition) and the partition key,
-- which a unique index over partitions must include.
ALTER TABLE pgsched.runs_history ADD CONSTRAINT runs_history_pkey PRIMARY KEY (id, finished_at);
-- The indexes of runs that serve readers of finished runs, and no other: each costs the move.
CREATE INDEX runs_history_finished_idx ON pgsched.runs_history (finished_at);
CREATE INDEX runs_history_failed_idx ON pgsched.runs_history (queue) WHERE status = 'failed';
CREATE INDEX runs_history_tenant_idx ON pgsched.runs_history (tenant, id) WHERE tenant IS NOT NULL;
CREATE INDEX runs_history_failed_task_idx ON pgsched.runs_history (task, id) WHERE status = 'failed';
CREATE INDEX runs_history_workflow_idx ON pgsched.runs_history (workflow_id, id) WHERE workflow_id IS NOT NULL;
-- Not unique: a unique index over partitions must include finished_at. A unique_key repeated
-- after its run finished finds the run here.
CREATE INDEX runs_history_unique_key_idx ON pgsched.runs_history (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX runs_history_job_scheduled_for_idx ON pgsched.runs_history (job_id, scheduled_for)
    WHERE job_id IS NOT NULL AND scheduled_for IS NOT NULL;

CREATE TABLE pgsched.runs_history_default PARTITION OF pgsched.runs_history DEFAULT;

-- Every run, unfinished (runs) or finished (runs_history), as one: what every reader reads. A
-- run moves in one transaction (deleted from runs, inserted into runs_history), so a snapshot
-- sees it in exactly one of the two.
CREATE VIEW pgsched.runs_all AS
SELECT * FROM pgsched.runs
UNION ALL
SELECT * FROM pgsched.runs_history;

-- One run by id, wherever it is: runs' primary key first (unfinished runs, and what a waiter
-- polls), then the history's. In PL/pgSQL, so that its two plans are made once per session:
-- planning the same read through runs_all, every call, probes every partition (~350 us with 14
-- day partitions against 45 us for runs alone, benchmarks.history_reads; the API prepares no
-- statement, for PgBouncer). STABLE: both reads see the caller's snapshot, so a run moving in
-- between is found in one of them.
CREATE FUNCTION pgsched.run_by_id(run_id bigint) RETURNS SETOF pgsched.runs LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY SELECT * FROM pgsched.runs AS r WHERE r.id = run_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM pgsched.runs_history AS h WHERE h.id = run_id;
    END IF;
END;
$$;

-- Create the partition of one UTC day (false: it exists). Rows of that day already in the
-- DEFAULT partition (strays: written while no partition was there) move into it first, or the
-- attach would fail. ATTACH, not CREATE TABLE ... PARTITION OF: it takes SHARE UPDATE
-- EXCLUSIVE on runs_history (ACCESS EXCLUSIVE on the small DEFAULT partition only), so the
-- moves and readers go on while a partition is added. The caller sets lock_timeout.
CREATE FUNCTION pgsched.history_partition_create(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    part text := 'runs_history_' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'pgsched.history_partition_create: day must be a date, got NULL' USING ERRCODE = '22023';
    END IF;
    IF to_regclass(format('pgsched.%I', part)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE pgsched.%I (LIKE pgsched.runs_history)', part);
    EXECUTE format('ALTER TABLE pgsched.%I ADD CONSTRAINT %I CHECK (finished_at >= %L AND finished_at < %L)',
                   part, part || '_range', low, high);  -- lets ATTACH skip its scan of the new table
    EXECUTE format('WITH strays AS (DELETE FROM pgsched.runs_history_default WHERE finished_at >= $1 AND finished_at < $2 RETURNING *)
                    INSERT INTO pgsched.%I SELECT * FROM strays', part) USING low, high;
    EXECUTE format('ALTER TABLE pgsched.runs_history ATTACH PARTITION pgsched.%I FOR VALUES FROM (%L) TO (%L)',
                   part, low, high);
    EXECUTE format('ALTER TABLE pgsched.%I DROP CONSTRAINT %I', part, part || '_range');
    RETURN true;
END;
$$;

-- The day partitions, oldest first, with the instant each one's range ends (exclusive).
CREATE FUNCTION pgsched.history_partitions() RETURNS TABLE (name text, day date, ends_at timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT c.relname::text, to_date(right(c.relname, 8), 'YYYYMMDD'),
           (to_date(right(c.relname, 8), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC'
    FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'pgsched.runs_history'::regclass AND c.relname ~ '^runs_history_[0-9]{8}$'
    ORDER BY 2
$$;

-- Drop one day partition whose whole range ended before `before` (false: none by that name,
-- or not that old). DROP takes ACCESS EXCLUSIVE on runs_history: the caller sets a short
-- lock_timeout and retries on its next round.
CREATE FUNCTION pgsched.history_partition_drop(part text, before timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pgsched.history_partitions() AS p WHERE p.name = part AND p.ends_at <= before) THEN
        RETURN false;
    END IF;
    EXECUTE format('DROP TABLE pgsched.%I', part);
    RETURN true;
END;
$$;

-- Readers of finished runs for people at a psql prompt read both tables (same columns).
CREATE OR REPLACE VIEW pgsched.recent_failures AS
SELECT r.id, r.task, r.queue, r.attempt, r.max_attempts, r.finished_at,
       r.errors -> -1 ->> 'type'    AS error_type,
       r.errors -> -1 ->> 'message' AS error_message,
       r.errors -> -1 ->> 'traceback' AS traceback
FROM pgsched.runs_all AS r
WHERE r.status = 'failed'
ORDER BY r.finished_at DESC NULLS LAST;

CREATE OR REPLACE VIEW pgsched.recent_cancellations AS
SELECT r.id, r.task, r.queue, r.attempt, r.expires_at, r.finished_at,
       CASE r.errors -> -1 ->> 'type' WHEN 'Expired' THEN 'expired'
                                      WHEN 'Cancel' THEN 'cancelled by the task'
                                      ELSE 'cancel requested' END AS reason,
       CASE WHEN r.errors -> -1 ->> 'type' IN ('Expired', 'Cancel', 'Cancelled')
            THEN r.errors -> -1 ->> 'message' END AS message
FROM pgsched.runs_all AS r
WHERE r.status = 'cancelled'
ORDER BY r.finished_at DESC NULLS LAST;

CREATE OR REPLACE VIEW pgsched.workflow_steps AS
SELECT w.id AS workflow_id, w.name AS workflow, w.status AS workflow_status, r.id AS run_id, r.task,
       r.status::text AS status, r.parents_pending,
       (SELECT array_agg(e.parent ORDER BY e.position, e.parent) FROM pgsched.run_edges AS e WHERE e.child = r.id) AS parents,
       (SELECT array_agg(DISTINCT e.condition) FROM pgsched.run_edges AS e WHERE e.child = r.id) AS conditions,
       CASE WHEN r.status = 'cancelled' THEN r.errors -> -1 ->> 'message' END AS cancel_reason,
       r.started_at, r.finished_at, w.tenant
FROM pgsched.workflows AS w JOIN pgsched.runs_all AS r ON r.workflow_id = w.id;

-- Failed and recently finished runs are in either table (the same figures as before).
CREATE OR REPLACE FUNCTION pgsched.queue_stats_v2(of_tenant text, with_last_hour boolean)
RETURNS TABLE (
    queue                 text,
    queued                bigint,
    due                   bigint,
    running               bigint,
    failed                bigint,
    succeeded_last_hour   bigint,
    oldest_queued_age     interval,
    succeeded_last_minute bigint,
    failed_last_minute    bigint
) LANGUAGE sql STABLE AS $$
    -- of_tenant NULL: every tenant's runs. failed_last_minute counts runs that ended failed
    -- (attempts used up), not attempts that will be retried. Without the last hour, only the
    -- last minute's finished runs are read and succeeded_last_hour is NULL.
    SELECT part.queue,
           sum(part.queued)::bigint, sum(part.due)::bigint, sum(part.running)::bigint, sum(part.failed)::bigint,
           CASE WHEN with_last_hour THEN sum(part.succeeded_last_hour)::bigint END, now() - CASE WHEN min(part.oldest_due_run_at) = '-infinity' THEN '0001-01-02 00:00:00+00'
                              ELSE min(part.oldest_due_run_at) END,
           sum(part.succeeded_last_minute)::bigint, sum(part.failed_last_minute)::bigint
    FROM (
        SELECT r.queue, count(*) AS queued, count(*) FILTER (WHERE r.run_at <= now()) AS due,
               0 AS running, 0 AS failed, 0 AS succeeded_last_hour,
               min(r.run_at) FILTER (WHERE r.run_at <= now()) AS oldest_due_run_at,
               0 AS succeeded_last_minute, 0 AS failed_last_minute
        FROM pgsched.runs AS r
        WHERE r.status = 'queued' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, count(*), 0, 0, NULL, 0, 0
        FROM pgsched.runs AS r
        WHERE r.lease_expires_at IS NOT NULL AND r.status = 'running' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, 0, count(*), 0, NULL, 0, 0
        FROM pgsched.runs_all AS r
        WHERE r.status = 'failed' AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
        UNION ALL
        SELECT r.queue, 0, 0, 0, 0, count(*) FILTER (WHERE r.status = 'succeeded'), NULL,
               count(*) FILTER (WHERE r.status = 'succeeded' AND r.finished_at > now() - interval '1 minute'),
               count(*) FILTER (WHERE r.status = 'failed' AND r.finished_at > now() - interval '1 minute')
        FROM pgsched.runs_all AS r
        WHERE r.finished_at > now() - CASE WHEN with_last_hour THEN interval '1 hour' ELSE interval '1 minute' END
          AND (of_tenant IS NULL OR r.tenant = of_tenant)
        GROUP BY r.queue
    ) AS part
    GROUP BY part.queue
$$;

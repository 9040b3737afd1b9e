-- Rows every reader can read, whoever writes them: the rules the Python API, the REST API and the
-- CLI already apply, now also in the database, for plain INSERT/UPDATE by other services and for
-- pgsched.enqueue(). Found by an outside probe (issue 11): a run due at 'infinity' made GET /runs
-- and `runs list` fail for everyone, a job at 'infinity' stopped the beat, a run inserted
-- 'running' with no lease was never rescued.
--
-- Expand only, and safe under a running system:
-- * rows already here that break the new rules are repaired first (and recorded, with their
--   original values, in pgsched.repaired_rows; `pgsched doctor` lists them). A CHECK added
--   NOT VALID still applies to every UPDATE of an old row, so an unrepaired one would fail the
--   claim batch that picks it, and the beat's own UPDATE of a bad job, forever;
-- * the constraints are added NOT VALID: no scan under the ACCESS EXCLUSIVE lock ALTER TABLE
--   takes (held only from here to this transaction's commit). `pgsched doctor --fix` validates
--   them later under a lock that blocks no reader or writer;
-- * rows inserted between the first repair pass and that lock are repaired by a second pass,
--   which reads only runs above the first pass's ids (the primary key: no scan).
-- The previous release's code writes nothing these rules refuse.

SET LOCAL lock_timeout = '10s';  -- behind a long transaction, fail the upgrade rather than stall every worker

-- Rows a repair changed, as they were: nothing is lost, and `pgsched doctor` reports them.
CREATE TABLE pgsched.repaired_rows (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name  text NOT NULL,
    row_id      bigint NOT NULL,
    problems    text NOT NULL,
    original    jsonb NOT NULL,
    repaired_by text NOT NULL,
    repaired_at timestamptz NOT NULL DEFAULT now()
);

-- The rules as functions, for what reads rows off the hot path (run_problems, repairs, the
-- beat's job_disable_unreadable); the checks below write the same rules out.
-- Readable: what a Python datetime holds at any UTC offset (pgsched/instants.py, EARLIEST and
-- LATEST). NULL is readable.
CREATE FUNCTION pgsched.readable_instant(at timestamptz) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT at IS NULL OR at BETWEEN '0001-01-02 00:00:00+00' AND '9999-12-30 00:00:00+00'
$$;

-- The nearest readable instant (for repairs).
CREATE FUNCTION pgsched.readable_instant_near(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pgsched.readable_instant(at) THEN at
                WHEN at < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
                ELSE '9999-12-30 00:00:00+00'::timestamptz END
$$;

-- The API keys' tenant rule (0003), for every table with a tenant column.
CREATE FUNCTION pgsched.valid_tenant(tenant text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT tenant IS NULL OR (tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(tenant) <= 63)
$$;

-- What each status implies: queued holds no lease and has not finished; running has started
-- and holds a lease (or the sweep would never rescue it); finished has finished_at.
CREATE FUNCTION pgsched.run_status_agrees(
    status pgsched.run_status, started_at timestamptz, finished_at timestamptz, lease_expires_at timestamptz
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE status
        WHEN 'queued' THEN finished_at IS NULL AND lease_expires_at IS NULL
        WHEN 'running' THEN started_at IS NOT NULL AND lease_expires_at IS NOT NULL AND finished_at IS NULL
        ELSE finished_at IS NOT NULL AND lease_expires_at IS NULL
    END
$$;

-- What is wrong with a run, in words (NULL: nothing). The same predicates as the constraints.
CREATE FUNCTION pgsched.run_problems(r pgsched.runs) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(concat_ws('; ',
        CASE WHEN NOT (pgsched.readable_instant(r.run_at) AND pgsched.readable_instant(r.created_at)
                       AND pgsched.readable_instant(r.scheduled_for) AND pgsched.readable_instant(r.started_at)
                       AND pgsched.readable_instant(r.finished_at) AND pgsched.readable_instant(r.lease_expires_at)
                       AND pgsched.readable_instant(r.cancel_requested_at))
             THEN 'an instant outside the years 1 to 9999' END,
        CASE WHEN r.attempt < 0 THEN 'attempt ' || r.attempt || ' is negative' END,
        CASE WHEN jsonb_typeof(r.errors) <> 'array' THEN 'errors is not a JSON array' END,
        CASE WHEN NOT pgsched.valid_tenant(r.tenant) THEN 'tenant ' || quote_literal(r.tenant) || ' is not a tenant name' END,
        CASE WHEN NOT pgsched.run_status_agrees(r.status, r.started_at, r.finished_at, r.lease_expires_at)
             THEN 'status ' || r.status || ' disagrees with its times or lease' END), '')
$$;

-- Repair the runs run_problems finds (ids above after_id), recording each one's original row;
-- returns how many. Instants move to the nearest readable one, a bad tenant becomes none (no
-- tenant key could see it anyway), a running run without a lease (or with an unreadable one)
-- gets one that expires now (the sweep then retries or fails it), a finished one without
-- finished_at gets its last instant.
CREATE FUNCTION pgsched.repair_runs(after_id bigint DEFAULT 0, repaired_by text DEFAULT 'pgsched doctor --fix')
RETURNS bigint LANGUAGE sql AS $$
    WITH bad AS (
        SELECT r.id, pgsched.run_problems(r) AS problems, to_jsonb(r) AS original
        FROM pgsched.runs AS r
        WHERE r.id > after_id AND pgsched.run_problems(r) IS NOT NULL
        FOR UPDATE
    ), recorded AS (
        INSERT INTO pgsched.repaired_rows (table_name, row_id, problems, original, repaired_by)
        SELECT 'runs', id, problems, original, repaired_by FROM bad
    ), repaired AS (
        UPDATE pgsched.runs AS r
        SET run_at = pgsched.readable_instant_near(r.run_at),
            created_at = pgsched.readable_instant_near(r.created_at),
            scheduled_for = pgsched.readable_instant_near(r.scheduled_for),
            started_at = CASE WHEN r.status = 'running' THEN coalesce(pgsched.readable_instant_near(r.started_at), now())
                              ELSE pgsched.readable_instant_near(r.started_at) END,
            finished_at = CASE WHEN r.status IN ('queued', 'running') THEN NULL
                               ELSE coalesce(pgsched.readable_instant_near(r.finished_at),
                                             pgsched.readable_instant_near(r.started_at),
                                             pgsched.readable_instant_near(r.created_at)) END,
            lease_expires_at = CASE WHEN r.status <> 'running' THEN NULL
                                    WHEN pgsched.readable_instant(r.lease_expires_at) THEN coalesce(r.lease_expires_at, now())
                                    ELSE now() END,
            cancel_requested_at = pgsched.readable_instant_near(r.cancel_requested_at),
            attempt = greatest(r.attempt, 0),
            errors = CASE WHEN jsonb_typeof(r.errors) = 'array' THEN r.errors ELSE jsonb_build_array(r.errors) END,
            tenant = CASE WHEN pgsched.valid_tenant(r.tenant) THEN r.tenant END
        FROM bad
        WHERE r.id = bad.id
        RETURNING r.id
    )
    SELECT count(*) FROM repaired
$$;

-- What is wrong with a job, in words (NULL: nothing). The beat refuses these values too
-- (pgsched/schedule.py): intervals of 1 s to 366 days, timezone names up to 64 characters,
-- at most 100,000 catch-up runs in one firing (pgsched/jobs.py MAX_CATCHUP).
CREATE FUNCTION pgsched.job_problems(j pgsched.jobs) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(concat_ws('; ',
        CASE WHEN NOT (pgsched.readable_instant(j.at) AND pgsched.readable_instant(j.next_run_at)
                       AND pgsched.readable_instant(j.last_scheduled_for) AND pgsched.readable_instant(j.created_at)
                       AND pgsched.readable_instant(j.updated_at))
             THEN 'an instant outside the years 1 to 9999' END,
        CASE WHEN j.every_s NOT BETWEEN 1 AND 366 * 86400 THEN 'every_s ' || j.every_s || ' is not 1 s to 366 days' END,
        CASE WHEN length(j.tz) > 64 THEN 'tz is longer than 64 characters' END,
        CASE WHEN j.max_catchup > 100000 THEN 'max_catchup ' || j.max_catchup || ' is above 100000' END,
        CASE WHEN NOT pgsched.valid_tenant(j.tenant) THEN 'tenant ' || quote_literal(j.tenant) || ' is not a tenant name' END),
        '')
$$;

-- Repair the jobs job_problems finds: disabled, with last_error saying why, and values moved
-- to the nearest allowed (the original row is in pgsched.repaired_rows).
CREATE FUNCTION pgsched.repair_jobs(repaired_by text DEFAULT 'pgsched doctor --fix')
RETURNS bigint LANGUAGE sql AS $$
    WITH bad AS (
        SELECT j.id, pgsched.job_problems(j) AS problems, to_jsonb(j) AS original
        FROM pgsched.jobs AS j
        WHERE pgsched.job_problems(j) IS NOT NULL
        FOR UPDATE
    ), recorded AS (
        INSERT INTO pgsched.repaired_rows (table_name, row_id, problems, original, repaired_by)
        SELECT 'jobs', id, problems, original, repaired_by FROM bad
    ), repaired AS (
        UPDATE pgsched.jobs AS j
        SET enabled = false,
            last_error = 'disabled by ' || repaired_by || ': ' || bad.problems,
            at = pgsched.readable_instant_near(j.at),
            next_run_at = pgsched.readable_instant_near(j.next_run_at),
            last_scheduled_for = pgsched.readable_instant_near(j.last_scheduled_for),
            created_at = pgsched.readable_instant_near(j.created_at),
            updated_at = now(),
            every_s = CASE WHEN j.every_s IS NOT NULL THEN least(greatest(j.every_s, 1), 366 * 86400) END,
            tz = CASE WHEN length(j.tz) > 64 THEN 'UTC' ELSE j.tz END,
            max_catchup = least(j.max_catchup, 100000),
            tenant = CASE WHEN pgsched.valid_tenant(j.tenant) THEN j.tenant END
        FROM bad
        WHERE j.id = bad.id
        RETURNING j.id
    )
    SELECT count(*) FROM repaired
$$;

-- First pass: the whole table, under no lock but the repaired rows' own.
CREATE TEMPORARY TABLE first_repair ON COMMIT DROP AS
SELECT coalesce(max(id), 0) AS runs_seen_up_to FROM pgsched.runs;
SELECT pgsched.repair_runs(0, 'migration 0009'), pgsched.repair_jobs('migration 0009');

-- A run inserted by SQL starts its life as one a worker will take: queued, attempt 0. Checked
-- per statement on the inserted rows (the transition table the wake-up already builds), so a
-- COPY of 10,000 runs pays one scan, not 10,000 trigger calls. Replaces 0001's trigger: one
-- call per INSERT statement instead of two.
CREATE FUNCTION pgsched.runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT id, status, attempt INTO bad FROM new_runs WHERE status <> 'queued' OR attempt <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run %: a run is inserted queued with attempt 0, got status % and attempt %',
            bad.id, bad.status, bad.attempt
            USING ERRCODE = 'check_violation', CONSTRAINT = 'run_must_be_inserted_queued',
                  HINT = 'enqueue it, then let a worker run it; to restore a dump, load it with triggers disabled';
    END IF;
    PERFORM pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM new_runs) AS queues;
    RETURN NULL;
END;
$$;

-- Constraints NOT VALID: the rows above are repaired; `pgsched doctor --fix` validates them later.
-- Written out, not as calls of the functions above: PostgreSQL prepares a table's checks for
-- every statement, and inlining nine SQL function calls cost ~100 us per single-row INSERT
-- (EXPLAIN ANALYZE: execution 70-100 us without the checks, 160-240 us with them as calls).
-- A range holds the bounds once; "@> ALL" of NULLs is NULL, which a check passes.
ALTER TABLE pgsched.runs
    ADD CONSTRAINT run_instants_must_be_within_years_1_to_9999 CHECK (
        '[0001-01-02 00:00:00+00,9999-12-30 00:00:00+00]'::tstzrange @> ALL (ARRAY[
            run_at, created_at, scheduled_for, started_at, finished_at, lease_expires_at, cancel_requested_at])
    ) NOT VALID,
    ADD CONSTRAINT run_attempt_must_not_be_negative CHECK (attempt >= 0) NOT VALID,
    ADD CONSTRAINT run_errors_must_be_a_json_array CHECK (jsonb_typeof(errors) = 'array') NOT VALID,
    ADD CONSTRAINT run_tenant_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(tenant) <= 63) NOT VALID,
    ADD CONSTRAINT run_status_must_agree_with_its_times_and_lease CHECK (
        CASE status
            WHEN 'queued' THEN finished_at IS NULL AND lease_expires_at IS NULL
            WHEN 'running' THEN started_at IS NOT NULL AND lease_expires_at IS NOT NULL AND finished_at IS NULL
            ELSE finished_at IS NOT NULL AND lease_expires_at IS NULL
        END) NOT VALID;

DROP TRIGGER runs_notify_queued ON pgsched.runs;
CREATE TRIGGER runs_inserted
    AFTER INSERT ON pgsched.runs
    REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_inserted();
DROP FUNCTION pgsched.notify_queued();

ALTER TABLE pgsched.jobs
    ADD CONSTRAINT job_instants_must_be_within_years_1_to_9999 CHECK (
        '[0001-01-02 00:00:00+00,9999-12-30 00:00:00+00]'::tstzrange @> ALL (ARRAY[
            at, next_run_at, last_scheduled_for, created_at, updated_at])
    ) NOT VALID,
    ADD CONSTRAINT job_every_s_must_be_1_s_to_366_days CHECK (every_s BETWEEN 1 AND 366 * 86400) NOT VALID,
    ADD CONSTRAINT job_tz_must_be_at_most_64_characters CHECK (length(tz) <= 64) NOT VALID,
    ADD CONSTRAINT job_max_catchup_must_be_at_most_100000 CHECK (max_catchup <= 100000) NOT VALID,
    ADD CONSTRAINT job_tenant_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (tenant ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(tenant) <= 63) NOT VALID;

-- Second pass, now that the locks are held: the runs inserted since the first, and every job
-- again (jobs are few: one row per schedule).
SELECT pgsched.repair_runs(runs_seen_up_to, 'migration 0009'), pgsched.repair_jobs('migration 0009') FROM first_repair;

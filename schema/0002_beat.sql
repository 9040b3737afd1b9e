-- The beat: scheduled jobs (cron / interval / one-off), the leader's record, and the
-- wake-up when job definitions change.

ALTER TABLE pgsched.jobs
    ADD COLUMN cron               text,
    ADD COLUMN every_s            double precision,
    ADD COLUMN at                 timestamptz,
    ADD COLUMN tz                 text NOT NULL DEFAULT 'UTC',
    ADD COLUMN misfire            text NOT NULL DEFAULT 'coalesce',
    ADD COLUMN max_catchup        integer NOT NULL DEFAULT 100,
    ADD COLUMN max_attempts       integer NOT NULL DEFAULT 3,
    ADD COLUMN next_run_at        timestamptz,
    ADD COLUMN last_scheduled_for timestamptz,
    ADD COLUMN last_error         text,
    ADD CONSTRAINT job_needs_exactly_one_of_cron_every_s_at CHECK (num_nonnulls(cron, every_s, at) = 1),
    ADD CONSTRAINT job_every_s_must_be_positive CHECK (every_s IS NULL OR every_s > 0),
    ADD CONSTRAINT job_misfire_must_be_coalesce_skip_or_all CHECK (misfire IN ('coalesce', 'skip', 'all')),
    ADD CONSTRAINT job_max_catchup_must_be_at_least_1 CHECK (max_catchup >= 1),
    ADD CONSTRAINT job_max_attempts_must_be_at_least_1 CHECK (max_attempts >= 1),
    ADD CONSTRAINT job_priority_must_be_between_minus_100_and_100 CHECK (priority BETWEEN -100 AND 100),
    ADD CONSTRAINT job_queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (queue ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$');

-- The leader's question "what is due?" and "when is the next one?" read only enabled jobs.
CREATE INDEX jobs_next_run_idx ON pgsched.jobs (next_run_at) WHERE enabled;

-- Who leads the beat, since when (the advisory lock decides; this row reports it).
CREATE TABLE pgsched.beat_leader (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    host         text NOT NULL,
    pid          integer NOT NULL,
    since        timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL
);

CREATE VIEW pgsched.beat_status AS
SELECT host, pid, since, now() - since AS leading_for, last_seen_at
FROM pgsched.beat_leader;

-- Wake the leader when a definition changes (its own next_run_at updates do not fire this).
CREATE FUNCTION pgsched.notify_jobs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsched_jobs', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF cron, every_s, at, tz, enabled, misfire ON pgsched.jobs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.notify_jobs_changed();

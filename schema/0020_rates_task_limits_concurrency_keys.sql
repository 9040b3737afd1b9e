-- Flow control, second part (issue #14): a rate per queue and per task (a token bucket held
-- in the settings row, so it is global over every worker), settings per task (paused,
-- max_running, rate), and concurrency keys (a run's concurrency_key; a queue's
-- key_max_running: at most that many runs of one key running at once, over all workers).
--
-- Expand only: nullable columns without a default (a catalog change, no rewrite), a check on
-- runs added NOT VALID (every existing row has NULL there: nothing to scan under the lock), a
-- new table, and the queues trigger narrowed to the settings' columns (the claim writes the
-- bucket's tokens on every claim of a rate-limited queue: that must wake no worker). The
-- previous release's workers keep claiming while this is applied; they ignore the new settings
-- (as they did max_running before 0016) until they run this release.
SET LOCAL lock_timeout = '10s';  -- behind a long transaction, fail the upgrade rather than stall every worker

-- A rate is written as people say it: '100/m' is 100 run starts a minute (s, m or h), at most
-- 7 digits. burst: how many may start at once after a quiet spell (the bucket's size; NULL: 1).
-- tokens/tokens_at: the bucket, as the last claim left it (NULL: full), refilled by the claim.
ALTER TABLE pgsched.queues
    ADD COLUMN rate            text,
    ADD COLUMN burst           integer,
    ADD COLUMN key_max_running integer,
    ADD COLUMN tokens          float8,
    ADD COLUMN tokens_at       timestamptz,
    ADD CONSTRAINT queue_rate_must_be_1_to_7_digits_per_s_m_or_h
        CHECK (rate ~ '^[1-9][0-9]*/[smh]$' AND length(rate) <= 9),
    ADD CONSTRAINT queue_burst_must_be_1_to_1000000 CHECK (burst BETWEEN 1 AND 1000000),
    ADD CONSTRAINT queue_burst_needs_a_rate CHECK (burst IS NULL OR rate IS NOT NULL),
    ADD CONSTRAINT queue_key_max_running_must_be_at_least_1 CHECK (key_max_running >= 1);

DROP TRIGGER queues_notify_changed ON pgsched.queues;
CREATE TRIGGER queues_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF name, paused, max_running, rate, burst, key_max_running ON pgsched.queues
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.notify_queue_changed();

-- Settings per task, over every queue its runs are in: the same meanings as a queue's.
CREATE TABLE pgsched.task_settings (
    task        text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    max_running integer,
    rate        text,
    burst       integer,
    tokens      float8,
    tokens_at   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT task_must_not_be_empty CHECK (task ~ '\S' AND length(task) <= 200),
    CONSTRAINT task_max_running_must_be_at_least_1 CHECK (max_running >= 1),
    CONSTRAINT task_rate_must_be_1_to_7_digits_per_s_m_or_h
        CHECK (rate ~ '^[1-9][0-9]*/[smh]$' AND length(rate) <= 9),
    CONSTRAINT task_burst_must_be_1_to_1000000 CHECK (burst BETWEEN 1 AND 1000000),
    CONSTRAINT task_burst_needs_a_rate CHECK (burst IS NULL OR rate IS NOT NULL)
);

-- A change wakes every worker on the queues' channel, payload 'task:' and the task's name
-- (no queue is listened for under that name by a previous release's worker that matters:
-- it would only reload its settings).
CREATE FUNCTION pgsched.notify_task_settings_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsched_queues', 'task:' || left(coalesce(NEW.task, OLD.task), 200));
    RETURN NULL;
END;
$$;

CREATE TRIGGER task_settings_notify_changed
    AFTER INSERT OR DELETE OR UPDATE OF task, paused, max_running, rate, burst ON pgsched.task_settings
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.notify_task_settings_changed();

-- Run starts a second a rate allows ('100/m' -> 1.667). The check above guarantees the shape.
CREATE FUNCTION pgsched.rate_per_s(rate text) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT split_part(rate, '/', 1)::float8
           / CASE split_part(rate, '/', 2) WHEN 's' THEN 1 WHEN 'm' THEN 60 ELSE 3600 END
$$;

-- The bucket's tokens at instant `at`: what the last claim left, refilled at the rate since,
-- never more than the burst. A clock read earlier than tokens_at (a claim whose transaction
-- began before the previous holder's) refills nothing rather than going back in time.
CREATE FUNCTION pgsched.tokens_at(rate text, burst integer, tokens float8, tokens_at timestamptz, at timestamptz)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN rate IS NOT NULL THEN
        least(coalesce(burst, 1)::float8,
              coalesce(tokens + greatest(0, extract(epoch FROM at - tokens_at)::float8) * pgsched.rate_per_s(rate),
                       coalesce(burst, 1)::float8))
    END
$$;

-- A run's concurrency key (any text of 1-200 characters, not only blanks): with the queue's
-- key_max_running set, at most that many runs of one key run at once. Written out, not as a
-- function call, as 0009 says why.
ALTER TABLE pgsched.runs ADD COLUMN concurrency_key text;
ALTER TABLE pgsched.runs
    ADD CONSTRAINT run_concurrency_key_must_be_1_to_200_characters
        CHECK (concurrency_key ~ '\S' AND length(concurrency_key) <= 200) NOT VALID;

-- Flow control (issue #14): settings per queue, read by every worker's claim. A queue can be
-- paused (workers claim none of its runs; enqueueing still works) and given max_running (at
-- most that many of its runs running at once, over all workers and hosts).
--
-- Expand only: a new table, its trigger and function; nothing existing changes, so the
-- previous release's workers keep claiming while this is applied (they ignore the settings
-- until they run the new release). No index on runs: the claim of a limited queue counts its
-- running runs through runs_lease_idx, so a queue without a limit pays nothing.

CREATE TABLE pgsched.queues (
    name        text PRIMARY KEY,
    paused      boolean NOT NULL DEFAULT false,
    max_running integer,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    -- Written out as runs' queue check is (0006, 0009): no function calls in a check.
    CONSTRAINT queue_name_must_match_a_z_0_9_dot_dash_underscore_colon_max_63
        CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.:-]*$' AND length(name) <= 63),
    CONSTRAINT queue_max_running_must_be_at_least_1 CHECK (max_running >= 1)
);

-- A change wakes every worker within milliseconds (channel pgsched_queues, payload the queue's
-- name): it reloads the settings of its queues and claims again. Workers also reload them at
-- every poll, so a change made while a worker was not listening is seen within a poll interval.
CREATE FUNCTION pgsched.notify_queue_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsched_queues', coalesce(NEW.name, OLD.name));
    RETURN NULL;
END;
$$;

CREATE TRIGGER queues_notify_changed
    AFTER INSERT OR UPDATE OR DELETE ON pgsched.queues
    FOR EACH ROW
    EXECUTE FUNCTION pgsched.notify_queue_changed();

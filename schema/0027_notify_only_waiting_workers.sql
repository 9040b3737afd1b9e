-- Wake-ups under many writers (issue 13, item 4). Every transaction that sends a NOTIFY takes a
-- database-wide lock at commit and holds it through its WAL flush, so concurrent enqueuers that
-- each NOTIFY commit one after another (no group commit): measured here, 64 writers of single
-- runs lose about half their throughput to it (benchmarks/results/notify.md). The insert
-- trigger now sends a queue's NOTIFY only when a worker waits on that queue.
--
-- How a worker says it waits: two advisory locks per queue, keys (class, hashtext(queue)).
--   'pgsw' (1885827959): a worker that goes to sleep with free slots holds it SHARED, as a
--     session lock on its LISTEN connection (so it goes when LISTEN goes); it lets go once a
--     claim fills its free slots again.
--   'pgse' (1885827941): an inserting transaction holds it SHARED until it ends, taken before it
--     looks for a waiter. A worker about to sleep takes it EXCLUSIVE for a moment after it holds
--     'pgsw' (a barrier: it waits for the inserts in flight that looked before it advertised),
--     then claims once more, then sleeps. So each queued run is either seen by that last claim
--     or notified: an insert that found no waiter committed before the worker's last claim.
-- The trigger's probes (a shared try-lock, an exclusive try-lock released at once) take no
-- lock any other enqueuer waits for; a hash collision between two queues only wakes more.
--
-- Expand only. The previous release's workers LISTEN and never say they wait: while any worker
-- row is not marked as this release's (advertises_waits, false for rows written by older code),
-- the trigger notifies every queue as before, so a rolling upgrade loses no wake-up. The mark
-- goes with the last old worker's row (its own exit, or worker_remove_stale once it is gone).
-- ADD COLUMN with a constant default rewrites nothing; the lock on workers is brief.

SET LOCAL lock_timeout = '10s';

ALTER TABLE pgsched.workers ADD COLUMN advertises_waits boolean NOT NULL DEFAULT false;

-- The trigger's "is an older worker registered?": an empty index once every worker is new.
CREATE INDEX workers_not_advertising_idx ON pgsched.workers (id) WHERE NOT advertises_waits;

CREATE OR REPLACE FUNCTION pgsched.runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
    any_bad boolean;
    queues text[];
    all_wake boolean;
    q text;
    h integer;
BEGIN
    -- One scan of the statement's rows for the check and the queues (a single-run insert pays
    -- one SPI query here, not three).
    SELECT bool_or(status NOT IN ('queued', 'waiting') OR attempt <> 0),
           array_agg(DISTINCT queue) FILTER (WHERE status = 'queued'),
           EXISTS (SELECT FROM pgsched.workers WHERE NOT advertises_waits)
    INTO any_bad, queues, all_wake
    FROM new_runs;
    IF any_bad THEN
        SELECT id, status, attempt INTO bad FROM new_runs WHERE status NOT IN ('queued', 'waiting') OR attempt <> 0 LIMIT 1;
        RAISE EXCEPTION 'run %: a run is inserted queued (or waiting, in a workflow) with attempt 0, got status % and attempt %',
            bad.id, bad.status, bad.attempt
            USING ERRCODE = 'check_violation', CONSTRAINT = 'run_must_be_inserted_queued',
                  HINT = 'enqueue it, then let a worker run it; to restore a dump, load it with triggers disabled';
    END IF;
    IF queues IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH q IN ARRAY queues LOOP
        IF NOT all_wake THEN
            h := hashtext(q);
            -- Held to commit: a worker about to sleep waits for this insert (see 0027).
            IF pg_try_advisory_xact_lock_shared(1885827941, h) THEN
                IF pg_try_advisory_lock(1885827959, h) THEN
                    PERFORM pg_advisory_unlock(1885827959, h);
                    CONTINUE;  -- nobody waits on q: its workers' next claim finds the run
                END IF;
            END IF;
        END IF;
        -- One per queue and transaction: PostgreSQL drops a repeated (channel, payload).
        PERFORM pg_notify('pgsched', q);
    END LOOP;
    RETURN NULL;
END;
$$;

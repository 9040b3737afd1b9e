-- Expand (issue 13, part 1): one run per unique_key over runs AND runs_history, so that runs
-- with a key can move to the history too (0049, post-deploy) and a key repeated after its run
-- finished, within retention, still returns that run.
--
-- runs' unique index (0001) cannot span the history's partitions (a unique index over
-- partitions must hold the partition key, finished_at). The authority is this plain table:
-- one row per key held by a run, wherever the run is, kept while the run is kept (the prunes
-- and the history's partition drop delete a run's key with it; queries.sql, and _v2 below).
-- runs' unique index stays: the previous release's inserts name it (ON CONFLICT (unique_key)),
-- and while a run is in runs it still refuses a second run of its key first.
--
-- Every insert into runs with a key claims it here, in an AFTER ROW trigger (runs_unique_key):
-- whatever the path (Python, REST, pgsched.enqueue*(), a plain INSERT or COPY by another
-- service, the previous release), and ordered like runs' index, so no two inserters wait on
-- each other in opposite orders. The key already held by another run that exists (in the
-- history: in runs, runs' index has refused the row before) fails the insert with
-- unique_violation, as runs' index does for a plain INSERT; pgsched's own enqueues look for the
-- key's holder first (run_unique_key_holder) and insert only when there is none. An AFTER
-- trigger, not a BEFORE one that skips the row: any BEFORE ROW INSERT trigger makes COPY
-- (enqueue_many) insert row by row, 1.25x its time measured here; an AFTER ROW trigger's WHEN
-- costs a run without a key one test.
--
-- Runs inserted before this file hold their keys in runs' index alone until they move; the
-- move (0049) registers them. Nothing is backfilled, so nothing here scans runs.

CREATE TABLE pgsched.run_unique_keys (
    unique_key text PRIMARY KEY,
    run_id     bigint NOT NULL
);

-- The run that holds `key`, wherever it is (NULL: none). In READ COMMITTED each statement reads
-- a new snapshot, so a holder that committed after the caller's statement began is found.
-- A key row whose run is gone (deleted without its key: the previous release's prune, a DELETE
-- by hand) holds nothing.
CREATE FUNCTION pgsched.run_unique_key_holder(key text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    holder bigint;
BEGIN
    SELECT k.run_id INTO holder FROM pgsched.run_unique_keys AS k WHERE k.unique_key = key;
    IF FOUND AND EXISTS (SELECT FROM pgsched.run_by_id(holder)) THEN
        RETURN holder;
    END IF;
    SELECT r.id INTO holder FROM pgsched.runs AS r WHERE r.unique_key = key;  -- inserted before 0037
    RETURN holder;
END;
$$;

-- The new run claims its key. The INSERT ... ON CONFLICT waits for a concurrent claimer of the
-- same key to end, so two inserts cannot both hold it. Taken by:
-- * this very run: it came back from the history (a retry), its key row stayed;
-- * a run that exists: refused (unique_violation);
-- * a run that is gone: the key is free, the new run takes the row over (locked first: two
--   takers queue on it, and the second finds the first's run).
CREATE FUNCTION pgsched.runs_unique_key_claim() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    holder bigint;
BEGIN
    LOOP
        INSERT INTO pgsched.run_unique_keys (unique_key, run_id) VALUES (NEW.unique_key, NEW.id)
        ON CONFLICT (unique_key) DO NOTHING;
        IF FOUND THEN
            RETURN NULL;
        END IF;
        SELECT k.run_id INTO holder FROM pgsched.run_unique_keys AS k WHERE k.unique_key = NEW.unique_key FOR UPDATE;
        IF FOUND THEN
            IF holder = NEW.id THEN
                RETURN NULL;
            END IF;
            IF EXISTS (SELECT FROM pgsched.run_by_id(holder)) THEN
                RAISE EXCEPTION 'duplicate key value violates unique constraint "run_unique_keys_pkey"'
                    USING ERRCODE = 'unique_violation', CONSTRAINT = 'run_unique_keys_pkey', TABLE = 'run_unique_keys',
                          SCHEMA = 'pgsched',
                          DETAIL = format('unique_key %s belongs to run %s, which has finished (pgsched.runs_history).',
                                          quote_literal(NEW.unique_key), holder);
            END IF;
            UPDATE pgsched.run_unique_keys AS k SET run_id = NEW.id WHERE k.unique_key = NEW.unique_key;
            RETURN NULL;
        END IF;
        -- The row went (its run was pruned) between the two statements: claim it again.
    END LOOP;
END;
$$;

CREATE TRIGGER runs_unique_key
    AFTER INSERT ON pgsched.runs
    FOR EACH ROW
    WHEN (NEW.unique_key IS NOT NULL)
    EXECUTE FUNCTION pgsched.runs_unique_key_claim();

-- history_partition_drop with the keys of the day's runs forgotten first, in the same
-- transaction. 0029's function stays as it was: the previous release calls it (and moves no
-- run with a key to the history: none is in a partition it drops).
CREATE FUNCTION pgsched.history_partition_drop_v2(part text, before timestamptz) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM pgsched.history_partitions() AS p WHERE p.name = part AND p.ends_at <= before) THEN
        RETURN false;
    END IF;
    EXECUTE format('DELETE FROM pgsched.run_unique_keys AS k USING pgsched.%I AS h
                    WHERE h.unique_key IS NOT NULL AND k.unique_key = h.unique_key AND k.run_id = h.id', part);
    EXECUTE format('DROP TABLE pgsched.%I', part);
    RETURN true;
END;
$$;

-- The SQL entry points look for the key's holder in runs and the history before inserting
-- (and after, when runs' index refused the row to a concurrent enqueue of the key). The same
-- signatures and results as before: services in other languages call them by name, and the
-- previous release's Python calls none of them.
CREATE OR REPLACE FUNCTION pgsched.enqueue(
    task         text,
    args         jsonb DEFAULT '{}',
    queue        text DEFAULT 'default',
    priority     integer DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts integer DEFAULT 3,
    unique_key   text DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    IF task IS NULL OR task !~ '\S' THEN
        RAISE EXCEPTION 'pgsched.enqueue: task must be a non-empty name' USING ERRCODE = '22023';
    END IF;
    IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'pgsched.enqueue: args must be a JSON object, got %', coalesce(jsonb_typeof(args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'pgsched.enqueue: priority must be between -100 and 100, got %', priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'pgsched.enqueue: max_attempts must be at least 1, got %', max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF enqueue.unique_key IS NOT NULL THEN
        new_id := pgsched.run_unique_key_holder(enqueue.unique_key);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END IF;
    INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key)
    VALUES (enqueue.task, enqueue.args, coalesce(enqueue.queue, 'default'), enqueue.priority,
            coalesce(enqueue.run_at, now()), enqueue.max_attempts, enqueue.unique_key)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING r.id INTO new_id;
    IF new_id IS NULL THEN
        new_id := pgsched.run_unique_key_holder(enqueue.unique_key);
    END IF;
    RETURN new_id;
END;
$$;

CREATE OR REPLACE FUNCTION pgsched.enqueue_v2(
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
    IF enqueue_v2.unique_key IS NOT NULL THEN
        new_id := pgsched.run_unique_key_holder(enqueue_v2.unique_key);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END IF;
    INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key, expires_at, trace_context)
    VALUES (enqueue_v2.task, enqueue_v2.args, coalesce(enqueue_v2.queue, 'default'), enqueue_v2.priority,
            coalesce(enqueue_v2.run_at, now()), enqueue_v2.max_attempts, enqueue_v2.unique_key, enqueue_v2.expires_at,
            enqueue_v2.trace_context)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING r.id INTO new_id;
    IF new_id IS NULL THEN
        new_id := pgsched.run_unique_key_holder(enqueue_v2.unique_key);
    END IF;
    RETURN new_id;
END;
$$;

CREATE OR REPLACE FUNCTION pgsched.enqueue_v3(
    task          text,
    args          jsonb DEFAULT '{}',
    queue         text DEFAULT 'default',
    priority      integer DEFAULT 0,
    run_at        timestamptz DEFAULT now(),
    max_attempts  integer DEFAULT 3,
    unique_key    text DEFAULT NULL,
    expires_at    timestamptz DEFAULT NULL,
    trace_context text DEFAULT NULL,
    tenant        text DEFAULT NULL,
    depends_on    bigint[] DEFAULT NULL,
    condition     text DEFAULT 'succeeded'
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
    parents bigint[];
    missing bigint;
    wfs bigint[];
    wf bigint;
    attached integer := 0;
BEGIN
    IF task IS NULL OR task !~ '\S' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: task must be a non-empty name' USING ERRCODE = '22023';
    END IF;
    IF args IS NULL OR jsonb_typeof(args) <> 'object' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: args must be a JSON object, got %', coalesce(jsonb_typeof(args), 'NULL')
            USING ERRCODE = '22023';
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -100 AND 100 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: priority must be between -100 and 100, got %', priority USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: max_attempts must be at least 1, got %', max_attempts USING ERRCODE = '22023';
    END IF;
    IF expires_at IS NOT NULL AND expires_at <= coalesce(run_at, now()) THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: expires_at (%) must be after run_at (%): the run would never start',
            expires_at, coalesce(run_at, now()) USING ERRCODE = '22023';
    END IF;
    IF trace_context !~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: trace_context must be a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>), got %',
            quote_literal(left(trace_context, 80)) USING ERRCODE = '22023';
    END IF;
    IF NOT pgsched.valid_tenant(tenant) THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: tenant % is not a tenant name (1-63 of A-Z a-z 0-9 _ . : -)', quote_literal(tenant)
            USING ERRCODE = '22023';
    END IF;
    IF depends_on IS NULL OR cardinality(depends_on) = 0 THEN
        IF enqueue_v3.unique_key IS NOT NULL THEN
            new_id := pgsched.run_unique_key_holder(enqueue_v3.unique_key);
            IF new_id IS NOT NULL THEN
                RETURN new_id;
            END IF;
        END IF;
        INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key, expires_at,
                                       trace_context, tenant)
        VALUES (enqueue_v3.task, enqueue_v3.args, coalesce(enqueue_v3.queue, 'default'), enqueue_v3.priority,
                coalesce(enqueue_v3.run_at, now()), enqueue_v3.max_attempts, enqueue_v3.unique_key,
                enqueue_v3.expires_at, enqueue_v3.trace_context, enqueue_v3.tenant)
        ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING r.id INTO new_id;
        IF new_id IS NULL THEN
            new_id := pgsched.run_unique_key_holder(enqueue_v3.unique_key);
        END IF;
        RETURN new_id;
    END IF;
    IF condition IS NULL OR condition NOT IN ('succeeded', 'failed', 'finished') THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: condition must be succeeded, failed or finished, got %', quote_nullable(condition)
            USING ERRCODE = '22023';
    END IF;
    IF array_position(depends_on, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: depends_on holds a NULL run id' USING ERRCODE = '22023';
    END IF;
    IF cardinality(depends_on) > 100000 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: depends_on names % runs; at most 100000', cardinality(depends_on)
            USING ERRCODE = '22023';
    END IF;
    IF unique_key IS NOT NULL THEN
        new_id := pgsched.run_unique_key_holder(enqueue_v3.unique_key);
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
    END IF;
    SELECT array_agg(DISTINCT d ORDER BY d) INTO parents FROM unnest(depends_on) AS d;
    -- Parents first (before the run and its edges), in id order: see runs_recount_waiting.
    PERFORM 1 FROM pgsched.runs AS p WHERE p.id = ANY (parents) ORDER BY p.id FOR SHARE;
    SELECT d INTO missing FROM unnest(parents) AS d
    WHERE NOT EXISTS (SELECT FROM pgsched.runs AS p WHERE p.id = d AND p.tenant IS NOT DISTINCT FROM enqueue_v3.tenant)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: depends_on names run %, which does not exist%', missing,
            CASE WHEN enqueue_v3.tenant IS NULL THEN ' (without a tenant)' ELSE format(' for tenant %s', enqueue_v3.tenant) END
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT array_agg(DISTINCT p.workflow_id) INTO wfs FROM pgsched.runs AS p
    WHERE p.id = ANY (parents) AND p.workflow_id IS NOT NULL;
    IF cardinality(wfs) > 1 THEN
        RAISE EXCEPTION 'pgsched.enqueue_v3: depends_on names runs of workflows %; a run waits only within one workflow', wfs
            USING ERRCODE = '22023';
    END IF;
    wf := wfs[1];
    IF wf IS NULL THEN
        INSERT INTO pgsched.workflows (name, tenant) VALUES (left(task, 200), enqueue_v3.tenant) RETURNING id INTO wf;
    END IF;
    WITH joined AS (
        UPDATE pgsched.runs AS p SET workflow_id = wf WHERE p.id = ANY (parents) AND p.workflow_id IS NULL
        RETURNING p.status
    )
    SELECT count(*) INTO attached FROM joined;
    UPDATE pgsched.workflows AS w
    SET steps = w.steps + attached + 1, status = 'running', finished_at = NULL
    WHERE w.id = wf;
    -- The run, waiting; its edges' trigger counts its parents.
    INSERT INTO pgsched.runs AS r (task, args, queue, priority, run_at, max_attempts, unique_key, expires_at,
                                   trace_context, tenant, status, workflow_id, parents_pending)
    VALUES (enqueue_v3.task, enqueue_v3.args, coalesce(enqueue_v3.queue, 'default'), enqueue_v3.priority,
            coalesce(enqueue_v3.run_at, now()), enqueue_v3.max_attempts, enqueue_v3.unique_key, enqueue_v3.expires_at,
            enqueue_v3.trace_context, enqueue_v3.tenant, 'waiting', wf, cardinality(parents))
    RETURNING r.id INTO new_id;
    INSERT INTO pgsched.run_edges (child, parent, condition, position)
    SELECT new_id, d.id, enqueue_v3.condition, (d.n - 1)::integer
    FROM unnest(depends_on) WITH ORDINALITY AS d(id, n)
    WHERE d.n = (SELECT min(d2.n) FROM unnest(depends_on) WITH ORDINALITY AS d2(id, n) WHERE d2.id = d.id);
    RETURN new_id;
END;
$$;


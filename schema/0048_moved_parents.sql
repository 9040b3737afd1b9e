-- Parents that ended and moved to the history (0030) before a run was made to wait for them.
--
-- Since the move, a run outside any workflow that ends for good leaves pgsched.runs for
-- pgsched.runs_history in the statement that ended it (0030; keyed runs too since 0049), and the
-- steps of a succeeded workflow follow (0047). enqueue_v3
-- (depends_on) and the edge trigger looked for parents in runs only, so a child of such a run
-- was refused ("depends_on names run N, which does not exist"; a plain INSERT of the edge:
-- "no run N (the parent)"), where the workflows guide promises that a parent that has already
-- ended counts at once. And the recount of a waiting run's parents joined runs only: a moved
-- parent was not counted at all, so a child of a moved failed parent would have been released
-- instead of cancelled.
--
-- Here a parent is looked for in runs and, if not there, in the history (runs_found below),
-- and one found there counts at once by the edge's condition, as an ended parent still in runs
-- does: met, or the child (and what waits on it) is cancelled. A moved parent is never updated
-- (history rows never are), so it does not join the child's workflow: the child starts one, or
-- joins its other parents', without it. Its edge stays, so the child's parent_results (read
-- through runs_all) and the workflow views still name it.
--
-- Upgrade: enqueue_v3 is the documented public SQL API that other services call by that name,
-- so its body is fixed in place (same signature, the documented behaviour it failed to give);
-- callers of the previous release get the fix too. The edge trigger's function and the recount
-- it calls are new versions beside 0031's and 0019's (which stay: 0019's run_step_moved and
-- workflow_repair still call runs_recount_waiting, and need not look in the history: a parent
-- can move only once it has ended, an ended parent that fails an edge's condition cancels the
-- child when the edge is written, and a parent open then joins the workflow, whose steps move
-- only once it has succeeded), and the trigger is pointed at the new one.

SET LOCAL lock_timeout = '10s';

-- Runs by id wherever they are: runs' primary key for all of them, then, only if some are not
-- there, the history's (a probe per day partition, by its primary key's leading id) for those.
-- moved: found in the history. STABLE, so both reads see the caller's snapshot: a run moving
-- meanwhile is found in exactly one. In PL/pgSQL, as run_by_id (0029), so that its plans are
-- made once per session, not at each call over every partition. Not for hot paths: the edge
-- trigger's checks and enqueue_v3's depends_on.
CREATE FUNCTION pgsched.runs_found(ids bigint[])
RETURNS TABLE (id bigint, status pgsched.run_status, tenant text, workflow_id bigint, moved boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    hot bigint;
BEGIN
    -- Joins, not "= ANY (ids)": a partition not yet analyzed was read by a sequential scan
    -- comparing each row with every id (1,000 moved parents took 3x as long as 1,000 in runs).
    RETURN QUERY
    SELECT r.id, r.status, r.tenant, r.workflow_id, false
    FROM (SELECT DISTINCT u.v FROM unnest(ids) AS u(v)) AS k JOIN pgsched.runs AS r ON r.id = k.v;
    GET DIAGNOSTICS hot = ROW_COUNT;
    IF hot < (SELECT count(DISTINCT u.v) FROM unnest(ids) AS u(v)) THEN
        RETURN QUERY
        SELECT DISTINCT ON (h.id) h.id, h.status, h.tenant, h.workflow_id, true
        FROM (SELECT DISTINCT u.v FROM unnest(ids) AS u(v)) AS k JOIN pgsched.runs_history AS h ON h.id = k.v
        WHERE NOT EXISTS (SELECT FROM pgsched.runs AS r WHERE r.id = k.v)
        ORDER BY h.id, h.finished_at DESC;
    END IF;
END;
$$;

-- 0019's runs_recount_waiting with the parents found by runs_found: a moved parent counts as
-- the ended run it is (not pending; its status against the edge's condition).
CREATE FUNCTION pgsched.runs_recount_waiting_v2(children bigint[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    dead record;
    woken bigint;
    mine bigint := txid_current() % 4294967296;
BEGIN
    PERFORM 1 FROM pgsched.runs AS p
    WHERE p.id IN (SELECT e.parent FROM unnest(children) AS k(child) JOIN pgsched.run_edges AS e ON e.child = k.child)
      AND p.status IN ('waiting', 'queued', 'running') AND p.xmin::text::bigint <> mine
    ORDER BY p.id
    FOR SHARE OF p;
    WITH edges AS MATERIALIZED (
        SELECT e.child, e.parent, e.condition
        FROM unnest(children) AS k(child) JOIN pgsched.run_edges AS e ON e.child = k.child
    ), agg AS (
        SELECT e.child,
               count(*) FILTER (WHERE p.status IN ('waiting', 'queued', 'running'))::integer AS pending,
               min(p.id) FILTER (WHERE p.status IN ('succeeded', 'failed', 'cancelled')
                                   AND NOT pgsched.edge_holds(e.condition, p.status)) AS culprit
        FROM edges AS e JOIN pgsched.runs_found(ARRAY(SELECT DISTINCT parent FROM edges)) AS p ON p.id = e.parent
        GROUP BY e.child
    ), released AS (
        UPDATE pgsched.runs AS c
        SET parents_pending = agg.pending,
            status = CASE WHEN agg.pending = 0 THEN 'queued' ELSE 'waiting' END::pgsched.run_status,
            run_at = CASE WHEN agg.pending = 0 THEN greatest(c.run_at, now()) ELSE c.run_at END
        FROM agg
        WHERE c.id = agg.child AND c.status = 'waiting' AND agg.culprit IS NULL
          AND (agg.pending = 0 OR c.parents_pending IS DISTINCT FROM agg.pending)
        RETURNING c.queue, c.status
    )
    SELECT count(pg_notify('pgsched', queue)) INTO woken
    FROM (SELECT DISTINCT queue FROM released WHERE status = 'queued') AS q;
    -- Those a parent has failed (usually none: the inner query filters before it groups).
    FOR dead IN
        WITH edges AS MATERIALIZED (
            SELECT e.child, e.parent, e.condition
            FROM unnest(children) AS k(child) JOIN pgsched.run_edges AS e ON e.child = k.child
        ), parents AS MATERIALIZED (
            SELECT f.id, f.status FROM pgsched.runs_found(ARRAY(SELECT DISTINCT parent FROM edges)) AS f
        )
        SELECT x.culprit, p.status, array_agg(x.child ORDER BY x.child) AS kids
        FROM (SELECT e.child, min(p.id) AS culprit
              FROM edges AS e JOIN parents AS p ON p.id = e.parent
              WHERE p.status IN ('succeeded', 'failed', 'cancelled') AND NOT pgsched.edge_holds(e.condition, p.status)
              GROUP BY e.child) AS x
             JOIN parents AS p ON p.id = x.culprit
             JOIN pgsched.runs AS c ON c.id = x.child
        WHERE c.status = 'waiting'
        GROUP BY x.culprit, p.status
        ORDER BY x.culprit
    LOOP
        PERFORM pgsched.runs_cancel_downstream(dead.culprit, dead.status, dead.kids);
    END LOOP;
END;
$$;

-- 0031's run_edges_inserted_v2 with the checks of its general path finding parents in the
-- history too, and the recount above. Its one-pass path is unchanged: a moved parent is not in
-- runs' range read there, so an insert naming one takes the general path.
CREATE FUNCTION pgsched.run_edges_inserted_v3() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    seen record;
    span record;
    settled boolean;
    bad record;
    kid record;
    wfs bigint[];
    wf bigint;
    attached integer;
    -- The id of the (sub)transaction running this statement, as the xmin of a row it wrote,
    -- and of its top transaction: rows either wrote are this transaction's, which no one else
    -- can see, let alone end. Compared as xid (a text cast per row cost 3 ms in 10,000).
    mine xid;
    top xid := (txid_current() % 4294967296)::text::xid;
BEGIN
    -- The runs the edges name, read once as a range of the primary key (the ids of one
    -- workflow are one block from the sequence), not probed twice per edge: 13 ms instead of
    -- 26 for a 10,000-step chord. Ids spread wider (edges to old runs) take 0019's path.
    SELECT min(least(child, parent)) AS lo, max(greatest(child, parent)) AS hi, count(*) AS edges
    INTO span FROM new_edges;
    -- An edge this statement inserted carries it: txid_current() would give the top
    -- transaction's, not the savepoint's a workflow enqueued with conn= is written in.
    SELECT r.xmin INTO mine
    FROM pgsched.run_edges AS r JOIN (SELECT child, parent FROM new_edges LIMIT 1) AS n USING (child, parent);
    IF span.hi - span.lo < 4 * span.edges + 64 THEN
        -- One join of the new edges with both runs: is any edge bad, does any run lack a
        -- workflow (a plain SQL insert), are all parents open rows this transaction wrote
        -- (which no one else can end before it commits), and what the children's
        -- parents_pending say. Not grouped by child: grouping 9,999 children cost 9 ms.
        WITH r AS MATERIALIZED (
            SELECT id, status, tenant, workflow_id, parents_pending, xmin FROM pgsched.runs
            WHERE id BETWEEN span.lo AND span.hi
        )
        SELECT bool_or(coalesce(c.id IS NULL OR p.id IS NULL OR c.status <> 'waiting'
                                OR c.tenant IS DISTINCT FROM p.tenant OR c.workflow_id <> p.workflow_id, true)) AS bad,
               bool_or(c.workflow_id IS NULL OR p.workflow_id IS NULL) AS plain,
               coalesce(bool_and(p.status IN ('waiting', 'queued', 'running') AND (p.xmin = mine OR p.xmin = top)), false) AS open_mine,
               count(DISTINCT e.child) AS children, count(c.parents_pending) AS counted,
               min(c.parents_pending) AS least_pending, max(c.parents_pending) AS most_pending,
               count(*) AS edges, min(e.child) AS lo, max(e.child) AS hi
        INTO seen
        FROM new_edges AS e LEFT JOIN r AS c ON c.id = e.child LEFT JOIN r AS p ON p.id = e.parent;
        IF NOT seen.bad AND NOT seen.plain AND seen.open_mine AND seen.counted = seen.edges THEN
            -- Is each child's parents_pending its number of new edges? Plain to see for a
            -- chain or group (one edge a child, each 1) and a chord (one child, all of them);
            -- other shapes count per child.
            settled := (seen.children = seen.edges AND seen.most_pending = 1 AND seen.least_pending = 1)
                    OR (seen.children = 1 AND seen.least_pending = seen.edges AND seen.most_pending = seen.edges);
            IF NOT settled THEN
                SELECT coalesce(bool_and(k.pending = k.edges), false) INTO settled
                FROM (SELECT e.child, count(*) AS edges, min(c.parents_pending) AS pending
                      FROM new_edges AS e JOIN pgsched.runs AS c ON c.id = e.child
                      GROUP BY e.child) AS k;
            END IF;
            -- Settled, and no child has an edge but these (the children's id range holds only
            -- the new edges: an index-only range count, 1-2 ms for 10,000): nothing more to do.
            IF settled AND (SELECT count(*) FROM pgsched.run_edges WHERE child BETWEEN seen.lo AND seen.hi) = seen.edges THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    -- Anything else: 0019's checks (with their messages), workflow joining and recount, with
    -- parents looked for in the history too (0048). A moved parent has ended for good and is
    -- never updated: it joins no workflow, so its workflow_id is not compared.
    SELECT e.child, e.parent, c.id IS NULL AS no_child, p.id IS NULL AS no_parent, c.status,
           c.tenant AS child_tenant, p.tenant AS parent_tenant, c.workflow_id AS child_wf, p.workflow_id AS parent_wf
    INTO bad
    FROM new_edges AS e LEFT JOIN pgsched.runs AS c ON c.id = e.child
         LEFT JOIN pgsched.runs_found(ARRAY(SELECT DISTINCT parent FROM new_edges)) AS p ON p.id = e.parent
    WHERE c.id IS NULL OR p.id IS NULL OR c.status <> 'waiting' OR c.tenant IS DISTINCT FROM p.tenant
       OR (NOT p.moved AND c.workflow_id <> p.workflow_id)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'edge % -> %: %', bad.parent, bad.child, CASE
            WHEN bad.no_child THEN format('no run %s (the child)', bad.child)
            WHEN bad.no_parent THEN format('no run %s (the parent)', bad.parent)
            WHEN bad.status <> 'waiting' THEN format('the child run %s is %s; only a waiting run gets parents', bad.child, bad.status)
            WHEN bad.child_tenant IS DISTINCT FROM bad.parent_tenant THEN
                format('run %s belongs to another tenant than run %s', bad.parent, bad.child)
            ELSE format('run %s is in workflow %s, run %s in workflow %s', bad.parent, bad.parent_wf, bad.child, bad.child_wf) END
            USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'edge_must_join_runs_of_one_tenant_and_workflow';
    END IF;
    -- Plain SQL inserts: runs without a workflow join one (rare; the Python API and enqueue_v3
    -- insert runs with theirs). A child whose parents all moved starts one of its own.
    FOR kid IN
        SELECT DISTINCT e.child FROM new_edges AS e JOIN pgsched.runs AS c ON c.id = e.child
                                                    LEFT JOIN pgsched.runs AS p ON p.id = e.parent
        WHERE c.workflow_id IS NULL OR (p.id IS NOT NULL AND p.workflow_id IS NULL)
        ORDER BY e.child
    LOOP
        SELECT array_agg(DISTINCT r.workflow_id) INTO wfs
        FROM pgsched.runs AS r
        WHERE r.workflow_id IS NOT NULL
          AND (r.id = kid.child OR r.id IN (SELECT e.parent FROM pgsched.run_edges AS e WHERE e.child = kid.child));
        IF cardinality(wfs) > 1 THEN
            RAISE EXCEPTION 'run %: its parents belong to workflows %; a run waits only within one workflow', kid.child, wfs
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = 'edge_must_join_runs_of_one_tenant_and_workflow';
        END IF;
        wf := wfs[1];
        IF wf IS NULL THEN
            INSERT INTO pgsched.workflows (name, tenant)
            SELECT left(task, 200), tenant FROM pgsched.runs WHERE id = kid.child
            RETURNING id INTO wf;
        END IF;
        WITH joined AS (
            UPDATE pgsched.runs SET workflow_id = wf
            WHERE workflow_id IS NULL
              AND (id = kid.child OR id IN (SELECT e.parent FROM pgsched.run_edges AS e WHERE e.child = kid.child))
            RETURNING status
        )
        SELECT count(*) INTO attached FROM joined;
        -- The child is open: so is its workflow.
        UPDATE pgsched.workflows SET steps = steps + attached, status = 'running', finished_at = NULL WHERE id = wf;
    END LOOP;
    PERFORM pgsched.runs_recount_waiting_v2(ARRAY(SELECT DISTINCT child FROM new_edges));
    RETURN NULL;
END;
$$;

-- Dropped and created in this migration's transaction: no insert sees the table without it
-- (an ACCESS EXCLUSIVE lock on run_edges until the commit, as 0031's took).
DROP TRIGGER run_edges_inserted ON pgsched.run_edges;
CREATE TRIGGER run_edges_inserted
    AFTER INSERT ON pgsched.run_edges
    REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.run_edges_inserted_v3();

-- enqueue_v3 as 0037 left it (keys in run_unique_keys), fixed in place (see the head of this
-- file): depends_on may name runs that ended and moved to the history; they are found there and
-- count at once.
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
    -- In runs or, ended and moved, in the history (one snapshot: a parent that moved since the
    -- lock above, which then skipped it, is found there).
    SELECT d INTO missing
    FROM unnest(parents) AS d
         LEFT JOIN pgsched.runs_found(parents) AS p ON p.id = d AND p.tenant IS NOT DISTINCT FROM enqueue_v3.tenant
    WHERE p.id IS NULL
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
    -- The parents in runs join it; moved ones (never updated) do not, and count at once below.
    WITH joined AS (
        UPDATE pgsched.runs AS p SET workflow_id = wf WHERE p.id = ANY (parents) AND p.workflow_id IS NULL
        RETURNING p.status
    )
    SELECT count(*) INTO attached FROM joined;
    UPDATE pgsched.workflows AS w
    SET steps = w.steps + attached + 1, status = 'running', finished_at = NULL
    WHERE w.id = wf;
    -- The run, waiting; its edges' trigger counts its parents (moved ones at once, by their status).
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

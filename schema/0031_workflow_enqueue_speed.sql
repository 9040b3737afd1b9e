-- Workflow enqueue speed (issue #15): the run_edges insert trigger in one pass for the usual case.
--
-- 0019's run_edges_inserted read the inserted edges four times (the check, runs without a
-- workflow, the children's list, the recount's join and its update's probe of each child):
-- 66 ms of server time for the 9,999 edges of a 10,000-step chain, against 20-30 ms for the
-- COPY of the edges itself. The Python API's workflows (and most SQL ones) insert, in one
-- transaction, steps whose parents are rows of that transaction, still open, with each
-- child's parents_pending set to its edge count: nothing is left to count. This version
-- checks the edges and recognises that case in one join (the runs read once, as a range of
-- the primary key) and one range count of run_edges that proves the children have no other
-- edges: 13-19 ms. "That transaction" is the (sub)transaction inserting the edges, so a
-- workflow enqueued with conn= inside the caller's transaction (a savepoint) takes this path
-- too; 0019's recount compared xmin with the top transaction's id and, in a savepoint, also
-- locked every parent. Any other insert (a parent another transaction wrote, an ended parent,
-- a wrong parents_pending, more edges for a child, ids spread wide) goes through 0019's checks
-- and recount, copied here unchanged.
--
-- Expand only: a new function beside 0019's (which stays), and the trigger pointed at it. The
-- previous release calls neither function itself; its COPY gets the same checks and counts.

CREATE FUNCTION pgsched.run_edges_inserted_v2() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- Anything else: 0019's checks (with their messages), workflow joining and recount, as they were.
    SELECT e.child, e.parent, c.id IS NULL AS no_child, p.id IS NULL AS no_parent, c.status,
           c.tenant AS child_tenant, p.tenant AS parent_tenant, c.workflow_id AS child_wf, p.workflow_id AS parent_wf
    INTO bad
    FROM new_edges AS e LEFT JOIN pgsched.runs AS c ON c.id = e.child LEFT JOIN pgsched.runs AS p ON p.id = e.parent
    WHERE c.id IS NULL OR p.id IS NULL OR c.status <> 'waiting' OR c.tenant IS DISTINCT FROM p.tenant
       OR c.workflow_id <> p.workflow_id
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
    -- insert runs with theirs).
    FOR kid IN
        SELECT DISTINCT e.child FROM new_edges AS e JOIN pgsched.runs AS c ON c.id = e.child
                                                    JOIN pgsched.runs AS p ON p.id = e.parent
        WHERE c.workflow_id IS NULL OR p.workflow_id IS NULL
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
    PERFORM pgsched.runs_recount_waiting(ARRAY(SELECT DISTINCT child FROM new_edges));
    RETURN NULL;
END;
$$;

-- Dropped and created in this migration's transaction: no insert sees the table without it.
-- The ACCESS EXCLUSIVE lock this takes on run_edges lasts until the migration commits; the
-- completions of workflow steps (which read run_edges) wait for it meanwhile, milliseconds.
DROP TRIGGER run_edges_inserted ON pgsched.run_edges;
CREATE TRIGGER run_edges_inserted
    AFTER INSERT ON pgsched.run_edges
    REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.run_edges_inserted_v2();

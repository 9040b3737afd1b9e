-- The leader's workflow repair counts parents that ended and moved to the history (0048).
--
-- 0019's workflow_repair read a waiting run's parents in runs only and recounted with
-- runs_recount_waiting, which joins runs only too. A parent that has moved to runs_history was
-- not counted at all: a run whose parents had all ended and moved was picked every round (no
-- open parent) and left waiting by the recount (no parent to count), so it never started and
-- the repair logged it as repaired each round; and a moved parent that failed an edge's
-- condition did not cancel its child. The edge trigger counts a moved parent when the edge is
-- written (0048), so this happens only where the trigger did not run: edges and waiting runs
-- written with triggers off (a restore, as the repair's own test does), which is what the repair
-- is for.
--
-- workflow_repair_v2 finds parents with runs_found (runs, then the history for the ids runs
-- lacks) and recounts with runs_recount_waiting_v2 (0048), which does the same: a moved parent
-- counts as the ended run it is, met or against its edge's condition.
--
-- Upgrade: expand. The leader of this release calls workflow_repair_v2 (queries.sql
-- workflow_repair); 0019's workflow_repair stays, unchanged, for the previous release's leader.

SET LOCAL lock_timeout = '10s';

CREATE FUNCTION pgsched.workflow_repair_v2(min_age interval DEFAULT '1 minute', max_runs integer DEFAULT 1000)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stuck bigint[];
    orphans bigint[];
    wf record;
    n bigint := 0;
BEGIN
    -- Parents are read in runs, as 0019 reads them, and only those not there are looked for
    -- with runs_found: a healthy system's waiting runs wait for open parents, all in runs.
    -- runs_found over every parent made a round with nothing to do 1.6-1.9x as dear as 0019's;
    -- this way, 0.93-1.02x with 1 parent a run, 1.20-1.30x with 10 (medians of 3 runs, 1,000
    -- waiting runs, benchmarks/workflow_repair.py).
    WITH waiting AS MATERIALIZED (
        SELECT id, parents_pending FROM pgsched.runs
        WHERE status = 'waiting' AND created_at < now() - min_age
        ORDER BY created_at LIMIT max_runs
    ), edges AS MATERIALIZED (
        SELECT e.child, e.parent, e.condition, p.status
        FROM waiting AS r JOIN pgsched.run_edges AS e ON e.child = r.id
             LEFT JOIN pgsched.runs AS p ON p.id = e.parent
    ), moved AS MATERIALIZED (
        SELECT f.id, f.status
        FROM pgsched.runs_found(ARRAY(SELECT DISTINCT parent FROM edges WHERE status IS NULL)) AS f
    )
    SELECT array_agg(w.id ORDER BY w.id) FILTER (WHERE w.edges > 0),
           array_agg(w.id ORDER BY w.id) FILTER (WHERE w.edges = 0)
    INTO stuck, orphans
    FROM (
        SELECT r.id, r.parents_pending, count(e.parent) AS edges,
               count(*) FILTER (WHERE p.status IN ('waiting', 'queued', 'running')) AS open_parents,
               bool_or(p.status IN ('succeeded', 'failed', 'cancelled') AND NOT pgsched.edge_holds(e.condition, p.status)) AS dead
        FROM waiting AS r
             LEFT JOIN edges AS e ON e.child = r.id
             LEFT JOIN moved AS m ON m.id = e.parent
             CROSS JOIN LATERAL (SELECT coalesce(e.status, m.status) AS status) AS p
        GROUP BY r.id, r.parents_pending
    ) AS w
    WHERE w.edges = 0 OR w.open_parents = 0 OR w.dead OR w.parents_pending IS DISTINCT FROM w.open_parents;
    IF stuck IS NOT NULL THEN
        PERFORM pgsched.runs_recount_waiting_v2(stuck);
        n := n + cardinality(stuck);
    END IF;
    IF orphans IS NOT NULL THEN
        UPDATE pgsched.runs AS r
        SET status = 'cancelled', finished_at = now(),
            errors = r.errors || jsonb_build_array(jsonb_build_object(
                'attempt', r.attempt, 'at', now(), 'type', 'NoParents',
                'message', 'waiting with no parents in pgsched.run_edges: nothing would release it'))
        WHERE r.id = ANY (orphans) AND r.status = 'waiting';
        n := n + cardinality(orphans);
    END IF;
    FOR wf IN
        SELECT w.id FROM pgsched.workflows AS w
        WHERE w.status = 'running' AND w.created_at < now() - min_age
          AND NOT EXISTS (SELECT FROM pgsched.runs AS r
                          WHERE r.workflow_id = w.id AND r.status IN ('waiting', 'queued', 'running'))
        ORDER BY w.id
        LIMIT max_runs
    LOOP
        PERFORM pgsched.workflow_settle(wf.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END;
$$;

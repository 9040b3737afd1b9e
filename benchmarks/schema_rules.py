"""What schema 0009's rules (issue 11: checks on every run and job row, and a run inserted only
as queued) cost the server on the write path, against the same schema without them, same run.

    python -m benchmarks.schema_rules [--samples 300] [--dsn SERVER_DSN]

Two databases on one server, the same pgsched schema, except that "before" has 0009's rules
taken out again (its checks dropped, and the insert trigger back to 0001's wake-up alone).
Each statement of the write path runs alternately on both under EXPLAIN ANALYZE, and the
server's own execution time is compared (medians): a figure a busy machine disturbs far less
than a wall-clock rate (on the shared 2-core box the wall-clock A/B spread 0.3x-1.5x). The
statements: a single-row INSERT (one enqueue), a 1,000-row INSERT (a bulk enqueue's share),
and the claim and the completion UPDATE of 50 runs (the drain's two writes per batch).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from contextlib import ExitStack

import psycopg

from benchmarks._server import fresh_database, server_dsn

# 0009's checks (and 0011's), and 0001's wake-up trigger in place of 0009's check-and-wake-up.
WITHOUT_THE_RULES = """
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
             WHERE connamespace = 'pgsched'::regnamespace AND contype = 'c' AND NOT convalidated LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;
END $$;
CREATE FUNCTION pgsched.notify_queued() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM new_runs) AS queues;
    RETURN NULL;
END;
$f$;
DROP TRIGGER runs_inserted ON pgsched.runs;
CREATE TRIGGER runs_notify_queued AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.notify_queued();
"""

# Each in a transaction that is rolled back: every sample meets the same table.
STATEMENTS = {
    "enqueue 1 run": "INSERT INTO pgsched.runs (task, args) VALUES ('noop', '{}')",
    "enqueue 1,000 runs": "INSERT INTO pgsched.runs (task, args) SELECT 'noop', '{}' FROM generate_series(1, 1000)",
    "claim 50": """
        UPDATE pgsched.runs SET status = 'running', attempt = attempt + 1, worker_id = 1, started_at = now(),
               lease_expires_at = now() + interval '30 seconds'
        WHERE id IN (SELECT id FROM pgsched.runs WHERE status = 'queued' ORDER BY id LIMIT 50)""",
    "complete 50": """
        UPDATE pgsched.runs SET status = 'succeeded', result = 'null', finished_at = now(), lease_expires_at = NULL
        WHERE id IN (SELECT id FROM pgsched.runs WHERE status = 'running' ORDER BY id LIMIT 50)""",
}
# What the table holds while the statements run: runs to claim, and 50 running to complete.
SETUP = """
INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, 10000);
UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1, started_at = now(),
       lease_expires_at = now() + interval '1 hour'
WHERE id IN (SELECT id FROM pgsched.runs ORDER BY id LIMIT 50);
"""
_EXECUTION = re.compile(r"Execution Time: ([\d.]+) ms")


def execution_us(conn: psycopg.Connection, statement: str) -> float:
    """The server's execution time of one statement, rolled back, in microseconds."""
    with conn.transaction(force_rollback=True):
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF) {statement}".encode()))
    match = _EXECUTION.search(plan)
    assert match, plan
    return float(match[1]) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name in STATEMENTS}
    with server_dsn(options.dsn) as server, ExitStack() as stack:
        conns = {}
        for side in ("before", "after"):
            dsn = stack.enter_context(fresh_database(server))
            conns[side] = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            if side == "before":
                conns[side].execute(WITHOUT_THE_RULES)
            conns[side].execute(SETUP)
            conns[side].execute("VACUUM ANALYZE pgsched.runs")
        for sample in range(options.samples):
            for name, statement in STATEMENTS.items():
                for side in ("before", "after") if sample % 2 == 0 else ("after", "before"):
                    figures[name][side].append(execution_us(conns[side], statement))
    print(f"{'server time, median us':<24}{'before (no rules)':>20}{'after (0009)':>16}{'after/before':>14}")
    for name, sides in figures.items():
        before, after = statistics.median(sides["before"]), statistics.median(sides["after"])
        print(f"{name:<24}{before:>20,.0f}{after:>16,.0f}{after / before:>13.2f}x")
    medians = {name: {side: statistics.median(v) for side, v in sides.items()} for name, sides in figures.items()}
    print(json.dumps({"samples": options.samples, "median_us": medians}))


if __name__ == "__main__":
    main()

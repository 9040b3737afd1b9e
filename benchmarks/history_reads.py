"""What reading runs through pgsched.runs_all (schema 0029: runs UNION ALL runs_history) costs
the readers, against reading pgsched.runs alone as before, same run, same database.

    python -m benchmarks.history_reads [--samples 300] [--runs 100000] [--days 14] [--dsn SERVER_DSN]

One database: --runs runs in pgsched.runs (a tenth of them finished) and runs_history with --days
day partitions (a week's retention, 3 days ahead and margin) holding as many finished runs again.
Each reader's statement runs alternately against pgsched.runs ("before": the query as it was)
and pgsched.runs_all ("after") under EXPLAIN ANALYZE; the server's planning and execution times
are compared (medians), figures a loaded machine disturbs far less than a wall-clock rate. A
lookup by id probes each partition's primary key: the cost grows with the partitions, not with
the rows. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics

import psycopg

from benchmarks._server import fresh_database, server_dsn
from pgsched.sql import queries

_TIMES = re.compile(r"(Planning|Execution) Time: ([\d.]+) ms")

SETUP = """
INSERT INTO pgsched.runs (task, args) SELECT 'noop', jsonb_build_object('n', n) FROM generate_series(1, %(runs)s) AS n;
UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()
WHERE id %% 10 = 0;
SELECT pgsched.history_partition_create(current_date - %(days)s + 4 + d) FROM generate_series(0, %(days)s - 1) AS d;
INSERT INTO pgsched.runs_history
SELECT (r).* FROM (
    SELECT ROW(n + %(runs)s, 'noop', '{}'::jsonb, 'default', 0, 'succeeded', 1, 3, now(), NULL, NULL, NULL, now(),
               now() - make_interval(days => (n %% (%(days)s - 4))), NULL, 'null'::jsonb, '[]'::jsonb, NULL, NULL,
               now(), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::pgsched.runs AS r
    FROM generate_series(1, %(runs)s) AS n) AS x;
"""


# The by-id reads as they were before schema 0029 (pgsched.runs alone).
RUN_GET_BEFORE = """
SELECT id, task, args, queue, priority, status::text AS status, attempt, max_attempts, run_at,
       job_id, scheduled_for, worker_id, started_at, finished_at, lease_expires_at, result,
       errors, unique_key, tenant, created_at, expires_at, trace_context, request_id, concurrency_key
FROM pgsched.runs WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"""
RUN_STATUS_BEFORE = (
    "SELECT status::text FROM pgsched.runs WHERE id = %(id)s AND (%(tenant)s::text IS NULL OR tenant = %(tenant)s)"
)
RUN_GET_UNION = RUN_GET_BEFORE.replace("pgsched.runs ", "pgsched.runs_all ")

Work = tuple[str, dict[str, object], str, dict[str, object]]


def statements(runs: int) -> dict[str, Work]:
    """Each reader: (before statement, its parameters, after statement, its parameters). A
    "finished" read is of a run in runs_history after, of a finished run in runs before."""
    hot = {"id": runs // 2 + 1, "tenant": None}
    finished_before = {"id": runs // 2 // 10 * 10, "tenant": None}
    finished_after = {"id": runs + runs // 2, "tenant": None}
    listing: dict[str, object] = {
        name: None
        for name in (
            "status queue task job created_after created_before finished_after finished_before id args error_type "
            "before_id scan_floor tenant"
        ).split()
    } | {"limit": 50}
    failed = listing | {"status": "failed"}
    run_list_before = queries["run_list"].replace("pgsched.runs_all", "pgsched.runs")
    return {
        "run_get": (RUN_GET_BEFORE, hot, queries["run_get"], hot),
        "run_get finished": (RUN_GET_BEFORE, finished_before, queries["run_get"], finished_after),
        "run_get via runs_all": (RUN_GET_BEFORE, finished_before, RUN_GET_UNION, finished_after),
        "run_status": (RUN_STATUS_BEFORE, hot, queries["run_status"], hot),
        "run_list page 1": (run_list_before, listing, queries["run_list"], listing),
        "run_list failed": (run_list_before, failed, queries["run_list"], failed),
    }


def server_us(conn: psycopg.Connection, statement: str, params: dict[str, object]) -> tuple[float, float]:
    """Planning and execution time of one statement, in microseconds."""
    plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF) {statement}".encode(), params))
    times = {kind: float(ms) * 1000 for kind, ms in _TIMES.findall(plan)}
    return times["Planning"], times["Execution"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--dsn", help="A server to create the database on (default: an embedded one)")
    options = parser.parse_args()
    work = statements(options.runs)
    figures: dict[str, dict[str, list[tuple[float, float]]]] = {name: {"before": [], "after": []} for name in work}
    with (
        server_dsn(options.dsn) as server,
        fresh_database(server) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        for statement in SETUP.split(";\n"):
            if statement.strip():
                conn.execute(statement.encode(), {"runs": options.runs, "days": options.days})
        conn.execute("VACUUM ANALYZE")
        for sample in range(options.samples):
            for name, (before, before_params, after, after_params) in work.items():
                sides = ("before", "after") if sample % 2 == 0 else ("after", "before")
                for side in sides:
                    text, params = (before, before_params) if side == "before" else (after, after_params)
                    figures[name][side].append(server_us(conn, text, params))
    medians = {
        name: {side: [statistics.median(t[i] for t in v) for i in (0, 1)] for side, v in sides.items()}
        for name, sides in figures.items()
    }
    print(f"{'server time, median us':<22}{'plan before':>12}{'plan after':>12}{'exec before':>13}{'exec after':>12}")
    for name, m in medians.items():
        print(
            f"{name:<22}{m['before'][0]:>12,.0f}{m['after'][0]:>12,.0f}{m['before'][1]:>13,.0f}{m['after'][1]:>12,.0f}"
        )
    print(json.dumps({"samples": options.samples, "runs": options.runs, "days": options.days, "median_us": medians}))


if __name__ == "__main__":
    main()

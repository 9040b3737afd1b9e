"""What schema 0058 costs the leader's workflow repair on a healthy system: 0058's
``pgsched.workflow_repair_v2`` (parents found by runs_found, in runs and then the history for the
ids runs lacks) against 0019's ``pgsched.workflow_repair`` (a join to runs), over the same
waiting runs, which it finds nothing to do with.

    python -m benchmarks.workflow_repair [--waiting 1000] [--parents 1,10] [--calls 50] [--rounds 3] [--dsn SERVER_DSN]

The leader calls the repair once a maintenance round, over the 1,000 oldest runs waiting longer
than a minute (REPAIR_BATCH, REPAIR_MIN_AGE_S). Here ``--waiting`` runs wait, each for
``--parents`` queued parents (enqueue_v3 with depends_on, so each is a step of a workflow), on a
backlog of 20,000 queued runs; both functions exist in one database, and each round calls them
in turn (order alternating), ``--calls`` times each with min_age 0. Timed inside the server
(EXPLAIN ANALYZE's execution time): no client, network or commit in the figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import psycopg

BACKLOG = 20_000
FUNCTIONS = ["workflow_repair", "workflow_repair_v2"]


def waiting_runs(conn: psycopg.Connection[Any], waiting: int, parents: int) -> None:
    """``waiting`` runs, each waiting for ``parents`` queued runs of its own, on the backlog."""
    conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history, pgsched.run_edges, pgsched.workflows")
    conn.execute("INSERT INTO pgsched.runs (task) SELECT 'backlog' FROM generate_series(1, %s)", (BACKLOG,))
    for _ in range(waiting):
        conn.execute(
            "SELECT pgsched.enqueue_v3('child', depends_on => ARRAY(SELECT pgsched.enqueue_v3('parent')"
            " FROM generate_series(1, %s)))",
            (parents,),
        )
    conn.execute("ANALYZE pgsched.runs, pgsched.run_edges, pgsched.workflows")


def measure(conn: psycopg.Connection[Any], function: str, calls: int) -> list[float]:
    """Server execution time in us of each call; each must find nothing (a healthy system)."""
    times = []
    for _ in range(calls):
        sql = f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT pgsched.{function}(interval '0 s', 1000)"
        [plan] = conn.execute(sql.encode()).fetchone()[0]  # type: ignore[index]
        times.append(plan["Execution Time"] * 1000)
    found = conn.execute(f"SELECT pgsched.{function}(interval '0 s', 1000)".encode()).fetchone()
    assert found == (0,), f"{function} found {found}: not a healthy system"
    return times


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waiting", type=int, default=1000, help="waiting runs (the repair reads up to 1,000)")
    parser.add_argument("--parents", default="1,10", help="parents per waiting run, comma-separated")
    parser.add_argument("--calls", type=int, default=50, help="calls per function, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.parents.split(",")]
    samples: dict[tuple[str, int], list[float]] = {}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for n in sizes:
                waiting_runs(conn, args.waiting, n)
                for function in FUNCTIONS:  # warm both: plans and caches
                    measure(conn, function, 3)
                for round_no in range(args.rounds):
                    for function in FUNCTIONS if round_no % 2 == 0 else FUNCTIONS[::-1]:
                        median = statistics.median(measure(conn, function, args.calls))
                        samples.setdefault((function, n), []).append(median)
    figures: dict[str, Any] = {}
    for n in sizes:
        old, new = samples[(FUNCTIONS[0], n)], samples[(FUNCTIONS[1], n)]
        ratios = [v / b for v, b in zip(new, old)]
        figures[str(n)] = {
            "median_us_per_round": {f: [round(v, 1) for v in samples[(f, n)]] for f in FUNCTIONS},
            "ratio_per_round": [round(r, 2) for r in ratios],
        }
        print(
            f"{args.waiting} waiting, {n:3d} parents each: workflow_repair {min(old):9.1f}-{max(old):9.1f} us,"
            f" v2 {min(new):9.1f}-{max(new):9.1f} us, v2 / v1 {min(ratios):.2f}-{max(ratios):.2f}"
            f" (median {statistics.median(ratios):.2f})"
        )
    summary = {"benchmark": "workflow_repair", "waiting": args.waiting, "calls": args.calls, "rounds": args.rounds}
    print(json.dumps({**summary, "figures": figures}))


if __name__ == "__main__":
    main()

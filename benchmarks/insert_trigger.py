"""The server's time in the insert triggers of a one-run INSERT, schema 0036 against 0026 + 0027.

    python -m benchmarks.insert_trigger [--inserts 300] [--rounds 3] [--dsn SERVER_DSN]

0036 points the insert triggers at new functions and keeps the old ones, so one database holds
both: the old pair (0027's ``runs_inserted()``, 0026's ``runs_tenant_inserted()``) is attached
again under other names, and each round measures the current triggers and then the old pair
(the other disabled), under ``EXPLAIN ANALYZE``, which reports each trigger's time inside the
server: no client, network or commit in the figure, so it holds on a loaded machine where a
wall clock does not. Per variant: the median over every insert of the triggers' summed time
(the foreign key's check on ``job_id`` included in both), and of the statement's execution.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import psycopg

CURRENT = ("runs_inserted", "runs_inserted_checked")
OLD = ("bench_old_runs_inserted", "bench_old_runs_tenant_inserted")
ATTACH_OLD = """
CREATE TRIGGER bench_old_runs_inserted AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_inserted();
CREATE TRIGGER bench_old_runs_tenant_inserted AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_tenant_inserted()
"""
INSERT = "EXPLAIN (ANALYZE, FORMAT JSON) INSERT INTO pgsched.runs (task, args) VALUES ('noop', '{}')"


def switch(conn: psycopg.Connection[Any], on: tuple[str, ...], off: tuple[str, ...]) -> None:
    for name in off:
        conn.execute(f"ALTER TABLE pgsched.runs DISABLE TRIGGER {name}".encode())
    for name in on:
        conn.execute(f"ALTER TABLE pgsched.runs ENABLE TRIGGER {name}".encode())


def measure(conn: psycopg.Connection[Any], inserts: int) -> list[tuple[float, float]]:
    """(triggers' time, execution time) in us, per insert."""
    times = []
    for _ in range(inserts):
        [plan] = conn.execute(INSERT).fetchone()[0]  # type: ignore[index]
        triggers = sum(trigger["Time"] for trigger in plan.get("Triggers", []))
        times.append((triggers * 1000, plan["Execution Time"] * 1000))
    return times


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inserts", type=int, default=300, help="one-run inserts per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    samples: dict[str, list[tuple[float, float]]] = {"0036": [], "0026 + 0027": []}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(ATTACH_OLD)
            for _ in range(args.rounds):
                switch(conn, CURRENT, OLD)
                samples["0036"] += measure(conn, args.inserts)
                switch(conn, OLD, CURRENT)
                samples["0026 + 0027"] += measure(conn, args.inserts)
                conn.execute("TRUNCATE pgsched.runs")
    figures = {
        name: {
            "triggers_us": round(statistics.median(t for t, _ in times), 1),
            "execution_us": round(statistics.median(e for _, e in times), 1),
        }
        for name, times in samples.items()
    }
    for name, f in figures.items():
        print(f"{name:12s} triggers {f['triggers_us']:6.1f} us   statement execution {f['execution_us']:6.1f} us")
    print(
        json.dumps({"benchmark": "insert_trigger", "inserts": args.inserts, "rounds": args.rounds, "figures": figures})
    )


if __name__ == "__main__":
    main()

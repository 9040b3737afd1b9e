"""What schema 0048 costs ``pgsched.enqueue_v3(depends_on => ...)``: parents looked for in the
history too (runs_found), edges checked and counted by run_edges_inserted_v3 and
runs_recount_waiting_v2, against 0037's enqueue_v3 with 0031's trigger.

    python -m benchmarks.moved_parents [--calls 100] [--rounds 3] [--parents 1,1000] [--dsn SERVER_DSN]

0048 replaces enqueue_v3's body in place and keeps 0031's trigger function, so one database
holds both: 0037's body is loaded again as ``pgsched.bench_old_enqueue_v3`` (from the migration
file) and 0031's function is attached as a second edge trigger; each variant runs with its own
trigger enabled, the other disabled, in alternating order each round. Every call gets fresh
parents that an earlier transaction wrote (the general path: a workflow enqueued from Python
takes the one-pass path, which 0048 does not change). Two comparisons: open parents (each call
starts a workflow and joins them to it), 0048 against 0037 + 0031, which is what the fix costs
the enqueues that worked before; and parents that ended and moved to the history (0048 only:
0037 refused them) against parents that ended and stayed in runs (steps of a workflow stay
there; 0037 + 0031), which is what finding a parent in the history costs. Both ended kinds
release the child at once. Timed inside the server (EXPLAIN ANALYZE's execution time): no
client, network or commit in the figure.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

import psycopg

SCHEMA = Path(__file__).resolve().parent.parent / "schema"
ATTACH_OLD_TRIGGER = """
CREATE TRIGGER bench_old_run_edges_inserted AFTER INSERT ON pgsched.run_edges REFERENCING NEW TABLE AS new_edges
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.run_edges_inserted_v2()
"""
# Variant: (label, 0048's functions, the parents' state). Ended parents are made steps of a
# workflow so that they stay in runs (0030, 0047), where 0037's enqueue_v3 found them: against
# that, what finding a parent in the history instead costs.
OLD_OPEN = ("0037 + 0031, open parents", False, "open")
NEW_OPEN = ("0048, open parents", True, "open")
OLD_ENDED = ("0037 + 0031, ended parents in runs", False, "ended")
NEW_MOVED = ("0048, moved parents", True, "moved")
VARIANTS = [OLD_OPEN, NEW_OPEN, OLD_ENDED, NEW_MOVED]
BACKLOG = 20_000
BASELINE = {NEW_OPEN: OLD_OPEN, NEW_MOVED: OLD_ENDED, OLD_OPEN: OLD_OPEN, OLD_ENDED: OLD_ENDED}


def old_enqueue_v3() -> str:
    """0037's enqueue_v3, as it was before 0048, under another name."""
    text = (SCHEMA / "0037_run_unique_keys.sql").read_text()
    start = text.index("CREATE OR REPLACE FUNCTION pgsched.enqueue_v3(")
    body = text[start : text.index("$$;", text.index("$$", start) + 2) + 3]
    return re.sub(r"\benqueue_v3\b", "bench_old_enqueue_v3", body)


def use_trigger(conn: psycopg.Connection[Any], old: bool) -> None:
    on, off = ("bench_old_run_edges_inserted", "run_edges_inserted")[:: 1 if old else -1]
    conn.execute(f"ALTER TABLE pgsched.run_edges DISABLE TRIGGER {off}".encode())
    conn.execute(f"ALTER TABLE pgsched.run_edges ENABLE TRIGGER {on}".encode())


def parents(conn: psycopg.Connection[Any], n: int, state: str) -> list[int]:
    """n plain runs, committed: open, ended in runs (steps of a workflow stay there), or ended
    and moved to the history."""
    ids = [
        row[0]
        for row in conn.execute(
            "INSERT INTO pgsched.runs (task) SELECT 'p' FROM generate_series(1, %s) RETURNING id", (n,)
        )
    ]
    if state != "open":
        workflow = conn.execute("INSERT INTO pgsched.workflows (name) VALUES ('bench') RETURNING id").fetchone()
        conn.execute(
            "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now(),"
            " workflow_id = CASE WHEN %s THEN %s::bigint END WHERE id = ANY (%s)",
            (state == "ended", workflow[0] if workflow else None, ids),
        )
    return ids


def measure(conn: psycopg.Connection[Any], variant: tuple[str, bool, str], n: int, calls: int) -> list[float]:
    """Server execution time in us of each enqueue_v3 call naming n fresh parents, each variant
    from the same start: BACKLOG queued runs, analyzed. (A table grown from empty, or analyzed
    empty, gets plans cached from estimates of nothing: 0019's recount then took seconds for
    1,000 parents.)"""
    _, new, state = variant
    function = "enqueue_v3" if new else "bench_old_enqueue_v3"
    use_trigger(conn, not new)
    conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history, pgsched.run_edges, pgsched.workflows")
    parents(conn, BACKLOG, "open")
    conn.execute("ANALYZE pgsched.runs")
    times = []
    for _ in range(calls):
        ids = parents(conn, n, state)
        sql = f"EXPLAIN (ANALYZE, FORMAT JSON) SELECT pgsched.{function}('child', depends_on => %s::bigint[])"
        [plan] = conn.execute(sql.encode(), (ids,)).fetchone()[0]  # type: ignore[index]
        times.append(plan["Execution Time"] * 1000)
    return times


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=100, help="enqueue_v3 calls per variant, size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parents", default="1,1000", help="depends_on sizes, comma-separated")
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.parents.split(",")]
    samples: dict[tuple[str, int], list[list[float]]] = {}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(old_enqueue_v3().encode())
            conn.execute(ATTACH_OLD_TRIGGER)
            for round_no in range(args.rounds):
                for n in sizes:
                    for variant in VARIANTS if round_no % 2 == 0 else VARIANTS[::-1]:
                        samples.setdefault((variant[0], n), []).append(measure(conn, variant, n, args.calls))
    figures: dict[str, Any] = {}
    for n in sizes:
        for variant in VARIANTS:
            label, base_label = variant[0], BASELINE[variant][0]
            per_round = [statistics.median(r) for r in samples[(label, n)]]
            base = [statistics.median(r) for r in samples[(base_label, n)]]
            ratios = [v / b for v, b in zip(per_round, base)]
            figures[f"{label} / {n}"] = {
                "median_us_per_round": [round(v, 1) for v in per_round],
                "ratio_per_round": [round(r, 2) for r in ratios],
                "against": base_label,
            }
            print(
                f"depends_on {n:5d}  {label:36s} median {min(per_round):9.1f}-{max(per_round):9.1f} us"
                f"   x {base_label}: {min(ratios):.2f}-{max(ratios):.2f}"
            )
    print(json.dumps({"benchmark": "moved_parents", "calls": args.calls, "rounds": args.rounds, "figures": figures}))


if __name__ == "__main__":
    main()

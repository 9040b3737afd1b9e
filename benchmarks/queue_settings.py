"""What queue settings (schema 0016, issue #14) cost a drain that no setting limits, against
the code before them, in the same run.

    python -m benchmarks.queue_settings [--runs 20000] [--reps 3] [--before main] [--dsn SERVER_DSN]

"before" is the tree of git ref --before (its pgsched, CLI and schema, exported to a
temporary directory) draining a database it migrated itself; "after" is this checkout on a
database with every migration, where the drained queue has no settings row and another queue
is paused and limited (so the claim's settings probe finds rows to read). Each repetition
drains N bulk-enqueued no-op runs with one `pgsched worker` process of each, alternately.

On a shared machine the drains vary by ±40% from one to the next, so the claim statement is
also timed alone: the before and after texts of `run_claim`, on one database with a backlog of
100,000 runs, in alternating blocks of 50 claims of 50 (each rolled back, so every claim sees
the same rows). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import ExitStack
from io import BytesIO
from pathlib import Path

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import ROOT, drain
from pgsched.claim_cursor import FROM_THE_START
from pgsched.sql import parse_queries, queries

OTHER_QUEUES_SETTINGS = "INSERT INTO pgsched.queues (name, paused, max_running) VALUES ('other', true, 5)"


def export_tree(ref: str, into: Path) -> Path:
    """The pgsched package of ``ref`` laid out as installed (cli/ and schema/ inside pgsched/),
    with the benchmarks' app: a directory to put first on PYTHONPATH."""
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    source = into / "source"
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(source, filter="data")
    tree = into / "tree"
    shutil.copytree(source / "pgsched", tree / "pgsched")
    shutil.copytree(source / "cli", tree / "pgsched" / "cli")
    shutil.copytree(source / "schema", tree / "pgsched" / "schema")
    shutil.copytree(source / "benchmarks", tree / "benchmarks")
    return tree


def migrate_with(tree: Path, dsn: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", "migrate", "--dsn", dsn],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )


def claim_ms(conn: psycopg.Connection, statement: str, claims: int = 50) -> float:
    """Milliseconds per claim of 50 runs (BEGIN, claim, ROLLBACK), as the fetcher's connection runs it."""
    params = {"queues": ["default"], "limit": 50, "worker_id": 1, "lease_s": 30.0, "now": None}
    start = time.perf_counter()
    for _ in range(claims):
        conn.execute("BEGIN")
        conn.execute(
            statement.encode(),
            {**params, "only_tasks": None, "skip_tasks": None, **FROM_THE_START},
        ).fetchall()
        conn.execute("ROLLBACK")
    return (time.perf_counter() - start) / claims * 1000


def claim_statements(server: str, before: Path, blocks: int = 40) -> dict[str, list[float]]:
    """``run_claim`` of ``before``'s tree and of this checkout, timed alternately on one database."""
    statements = {
        "before": parse_queries((before / "pgsched" / "schema" / "queries.sql").read_text())["run_claim"],
        "after": queries["run_claim"],
    }
    times: dict[str, list[float]] = {"before": [], "after": []}
    with fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, 100000)")
            conn.execute(OTHER_QUEUES_SETTINGS)
            conn.execute("VACUUM ANALYZE pgsched.runs")
        with psycopg.connect(dsn, autocommit=True, options="-c plan_cache_mode=force_generic_plan") as conn:
            for block in range(blocks):
                for side in ("before", "after") if block % 2 == 0 else ("after", "before"):
                    times[side].append(claim_ms(conn, statements[side]))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", default="main", help="The git ref to compare with (default: main)")
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    figures: dict[str, list[float]] = {"before": [], "after": []}
    with server_dsn(options.dsn) as server, ExitStack() as stack:
        trees = {
            "before": export_tree(options.before, Path(stack.enter_context(tempfile.TemporaryDirectory()))),
            "after": ROOT,
        }
        databases = {
            "before": stack.enter_context(fresh_database(server, with_schema=False)),
            "after": stack.enter_context(fresh_database(server)),
        }
        migrate_with(trees["before"], databases["before"])
        with psycopg.connect(databases["after"], autocommit=True) as conn:
            conn.execute(OTHER_QUEUES_SETTINGS)
        for rep in range(options.reps):
            for side in ("before", "after") if rep % 2 == 0 else ("after", "before"):
                figures[side].append(drain(databases[side], options.runs, root=trees[side]))
            print(f"rep {rep + 1}: after/before {figures['after'][-1] / figures['before'][-1]:.2f}x", flush=True)
        claims = claim_statements(server, trees["before"])
    before, after = (statistics.median(figures[side]) for side in ("before", "after"))
    ratios = [a / b for a, b in zip(figures["after"], figures["before"])]
    print(
        f"drain runs/s, median: before {before:,.0f}, after {after:,.0f}, after/before {after / before:.2f}x"
        f" (median of the repetitions' ratios {statistics.median(ratios):.2f}x)"
    )
    before_ms, after_ms = (statistics.median(claims[side][2:]) for side in ("before", "after"))
    print(
        f"run_claim of 50, median ms: before {before_ms:.3f}, after {after_ms:.3f},"
        f" after/before {after_ms / before_ms:.2f}x"
    )
    summary = {"runs": options.runs, "reps": options.reps, "before": options.before, "figures": figures}
    print(json.dumps({**summary, "claim_ms": claims}))


if __name__ == "__main__":
    main()

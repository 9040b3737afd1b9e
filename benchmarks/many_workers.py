"""Many small workers against one big one: 8 worker processes x concurrency 10 against
1 x 80 on the same backlog (issue 18, item 4). This is what many hosts look like to the database.

    python -m benchmarks.many_workers [--runs 20000] [--rounds 3] [--shapes 1x80,8x10] [--baseline-tree DIR]
                                      [--dsn SERVER_DSN]

Per shape and round: the workers start and go idle on an empty, vacuumed table, then one COPY
queues ``--runs`` no-op runs and they drain them; the rate is by the database's clock (first
start to last finish). CPU per run, of the worker processes and of the database's backends,
is read from /proc around the drain (as benchmarks.worker_cpu does), so start-up is left out.

Claims are counted from the rows: every run a claim takes gets that claim's worker id and its
transaction's now() as started_at, so one (worker_id, started_at) group is one claim ("short":
fewer runs than the worker's concurrency before the last claim). SKIP LOCKED fills its LIMIT
past rows another claim holds, so a collision shows not as a short claim but as index entries
read and passed over: ``entries/run`` is the claim index's ``idx_tup_read``
(pg_stat_user_indexes, read after the workers' backends have exited) per run claimed. 1.0 would
be a claim that reads only what it takes; the excess is rows locked by another worker's claim at
that moment and dead entries of runs already claimed.

Collisions, counted from the rows too. A claim's span is its first to its last run in claim
order (priority, run_at, id). A run in that span taken by another claim whose transaction
started at or after this one's was held by that claim while this one walked past it: SKIP
LOCKED skipped it (or the claim found it taken when it came to lock it), so it is certainly
a collision: ``skipped`` counts those runs per 100 claims, ``collided`` the share of claims
with at least one. A run in the span taken by a claim that started before may have been
committed already (a dead entry, not a collision) or still locked: ``passed`` counts every
run of another claim in the span per claim, the upper bound.

``--baseline-tree`` (a checkout of another commit, e.g. ``git archive main | tar -x -C
/tmp/base``): the same shapes drained by that tree's worker too, on a database that tree's
own ``pgsched migrate`` made (its schema, its triggers), interleaved with this tree's. Shapes
and sides alternate within each round; figures are medians over rounds. The last line is one
JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import ROOT, start_worker, stop_worker, wait_until
from benchmarks.worker_cpu import cpu_s, thread_cpu_s

CLAIMS_SQL = """
WITH claims AS (
    SELECT worker_id, started_at, count(*) AS runs FROM pgsched.runs_all GROUP BY worker_id, started_at
)
SELECT count(*), count(*) FILTER (WHERE runs < %(concurrency)s AND started_at < (SELECT max(started_at) FROM claims))
FROM claims
"""
INDEX_READS_SQL = """
SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes WHERE schemaname = 'pgsched' AND indexrelname = 'runs_claim_idx'
"""
# Each run's claim (worker, started_at) and its place in claim order; then per claim, the runs
# of other claims inside its span, and those of claims that started at or after it (skipped).
COLLISIONS_SQL = """
CREATE TEMP TABLE claimed ON COMMIT DROP AS
SELECT row_number() OVER (ORDER BY priority, run_at, id) AS pos, worker_id, started_at FROM pgsched.runs_all;
CREATE INDEX ON claimed (pos);
WITH claims AS (
    SELECT worker_id, started_at, min(pos) AS lo, max(pos) AS hi FROM claimed GROUP BY worker_id, started_at
), inside AS (
    SELECT c.worker_id, c.started_at,
           count(o.pos) FILTER (WHERE (o.worker_id, o.started_at) <> (c.worker_id, c.started_at)) AS passed,
           count(o.pos) FILTER (WHERE (o.worker_id, o.started_at) <> (c.worker_id, c.started_at)
                                  AND o.started_at >= c.started_at) AS skipped
    FROM claims AS c JOIN claimed AS o ON o.pos BETWEEN c.lo AND c.hi
    GROUP BY c.worker_id, c.started_at
)
SELECT count(*), count(*) FILTER (WHERE skipped > 0), coalesce(sum(skipped), 0), coalesce(sum(passed), 0) FROM inside
"""
# One completion's runs share its transaction's now() as finished_at: runs per statement.
RATE_SQL = (
    "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)), count(DISTINCT (worker_id, finished_at))"
    " FROM pgsched.runs_all"
)
OTHER_BACKENDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


def drain(dsn: str, runs: int, processes: int, concurrency: int, root: Path = ROOT) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        conn.execute("DELETE FROM pgsched.workers")
        conn.execute("VACUUM ANALYZE pgsched.runs")
        procs = [start_worker(dsn, "--concurrency", str(concurrency), root=root) for _ in range(processes)]
        try:
            # registered, then idle a moment: start-up is not the drain's CPU
            wait_until(conn, f"SELECT count(*) >= {processes} FROM pgsched.workers", 60)
            time.sleep(1.0)
            scans_before, reads_before = index_reads(conn)
            backends = [pid for (pid,) in conn.execute(OTHER_BACKENDS_SQL).fetchall()]
            store_before = {pid: thread_cpu_s(pid) for pid in backends}
            workers_before = sum(cpu_s(p.pid) for p in procs)
            with conn.transaction(), conn.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
                for _ in range(runs):
                    copy.write_row(("noop", "{}"))
            wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs WHERE status IN ('queued', 'running')", 900)
            workers_s = sum(cpu_s(p.pid) for p in procs) - workers_before
            backends = [pid for (pid,) in conn.execute(OTHER_BACKENDS_SQL).fetchall()]
            store_s = sum(thread_cpu_s(pid) - store_before.get(pid, 0.0) for pid in backends)
        finally:
            for proc in procs:
                stop_worker(proc)
        time.sleep(1.5)  # the workers' backends flush their statistics as they exit
        scans, reads = (after - before for after, before in zip(index_reads(conn), (scans_before, reads_before)))
        done, seconds, completions = conn.execute(RATE_SQL).fetchone()  # type: ignore[misc]
        claims, short = conn.execute(CLAIMS_SQL, {"concurrency": concurrency}).fetchone()  # type: ignore[misc]
        collisions = collision_counts(conn)
    assert done == runs, f"{done} of {runs} runs finished"
    return {
        "per_s": runs / float(seconds),
        "worker_us_per_run": workers_s / runs * 1e6,
        "store_us_per_run": store_s / runs * 1e6,
        "claims": claims,
        "short_claims": short,
        "runs_per_claim": runs / claims,
        "runs_per_completion": runs / completions,
        "claim_index_scans": scans,
        "entries_read_per_run": reads / runs,
        **collisions,
    }


def collision_counts(conn: psycopg.Connection) -> dict[str, float]:
    """Claims that skipped runs another claim held, from the rows (see the module's docstring)."""
    with conn.transaction():
        cursor = conn.execute(COLLISIONS_SQL)
        while cursor.nextset():
            pass
        claims, collided, skipped, passed = (float(x) for x in cursor.fetchone())  # type: ignore[union-attr]
    return {
        "collided_claims_pct": 100 * collided / claims,
        "skipped_per_100_claims": 100 * skipped / claims,
        "passed_per_claim": passed / claims,
    }


def index_reads(conn: psycopg.Connection) -> tuple[int, int]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    scans, reads = conn.execute(INDEX_READS_SQL).fetchone()  # type: ignore[misc]
    return int(scans), int(reads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", default="1x80,8x10", help="PROCESSESxCONCURRENCY, comma-separated")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout: its worker is measured as 'before'")
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    trees = {"after": ROOT} | ({"before": args.baseline_tree.resolve()} if args.baseline_tree else {})
    legs = [(side, shape) for shape in shapes for side in trees]
    samples: dict[str, list[dict[str, float]]] = {}
    with server_dsn(args.dsn) as server, contextlib.ExitStack() as stack:
        dsns = {
            side: stack.enter_context(fresh_database(server) if side == "after" else tree_database(server, root))
            for side, root in trees.items()
        }
        for round_number in range(args.rounds):
            for side, (processes, concurrency) in legs if round_number % 2 == 0 else legs[::-1]:
                figures = drain(dsns[side], args.runs, processes, concurrency, trees[side])
                name = f"{side} {processes}x{concurrency}"
                samples.setdefault(name, []).append(figures)
                print(f"round {round_number + 1}: {name} {figures}", flush=True)
    report(samples, args.runs, args.rounds)


@contextlib.contextmanager
def tree_database(server: str, root: Path) -> Iterator[str]:
    """A database migrated by the pgsched under ``root`` (a fresh one gets its post-deploy files too)."""
    with fresh_database(server, with_schema=False) as dsn:
        env = {**os.environ, "PYTHONPATH": str(root)}
        migrate = [sys.executable, "-m", "pgsched.cli.main", "migrate", "--dsn", dsn]
        subprocess.run(migrate, cwd=root, env=env, check=True, capture_output=True)
        yield dsn


def report(samples: dict[str, list[dict[str, float]]], runs: int, rounds: int) -> None:
    """Medians per side and shape; each shape's rate against the side's first shape, the
    median of the rounds' ratios (and their range)."""
    medians = {
        name: {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
        for name, rows in samples.items()
    }
    print(
        f"\n{'side shape':14s} {'runs/s':>9s} {'vs first':>8s} {'(range)':>13s} {'claims':>7s} {'runs/claim':>10s}"
        f" {'runs/compl':>10s} {'worker_us':>9s} {'store_us':>8s}"
        f" {'entries/run':>11s} {'collided%':>9s} {'skip/100cl':>10s} {'passed/cl':>9s}"
    )
    for name, m in medians.items():
        side = name.split()[0]
        first = next(rows for key, rows in samples.items() if key.split()[0] == side)
        ratios = [r["per_s"] / f["per_s"] for r, f in zip(samples[name], first)]
        m["vs_first"] = round(statistics.median(ratios), 3)
        m["vs_first_min"], m["vs_first_max"] = round(min(ratios), 3), round(max(ratios), 3)
        print(
            f"{name:14s} {m['per_s']:9,.0f} {m['vs_first']:8.2f} {m['vs_first_min']:6.2f}-{m['vs_first_max']:<6.2f}"
            f" {m['claims']:7,.0f} {m['runs_per_claim']:10.1f} {m['runs_per_completion']:10.1f}"
            f" {m['worker_us_per_run']:9.1f} {m['store_us_per_run']:8.1f} {m['entries_read_per_run']:11.2f}"
            f" {m['collided_claims_pct']:9.1f} {m['skipped_per_100_claims']:10.1f} {m['passed_per_claim']:9.1f}"
        )
    print(json.dumps({"benchmark": "many_workers", "runs": runs, "rounds": rounds, "shapes": medians}))


if __name__ == "__main__":
    main()

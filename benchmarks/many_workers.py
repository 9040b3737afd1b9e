"""Many small workers against one big one: 8 worker processes x concurrency 10 against
1 x 80 on the same backlog (issue 18, item 4). This is what many hosts look like to the database.

    python -m benchmarks.many_workers [--runs 20000] [--rounds 3] [--shapes 1x80,8x10] [--dsn SERVER_DSN]

Per shape and round: a fresh backlog of ``--runs`` no-op runs (one COPY), vacuumed and
analyzed, drained by the worker processes; the rate is by the database's clock (first start
to last finish). Claims are counted from the rows: every run a claim takes gets that claim's
worker id and its transaction's now() as started_at, so one (worker_id, started_at) group is
one claim ("short": fewer runs than the worker's concurrency before the last claim). SKIP
LOCKED fills its LIMIT past rows another claim holds, so a collision shows not as a short
claim but as index entries read and passed over: ``entries/run`` is the claim index's
``idx_tup_read`` (pg_stat_user_indexes, read after the workers' backends have exited) per run
claimed. 1.0 would be a claim that reads only what it takes; the excess is rows locked by
another worker's claim at that moment and dead entries of runs already claimed. Shapes
alternate within each round; figures are medians over rounds. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import start_worker, stop_worker, wait_until
from pgsched import App

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
RATE_SQL = "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)) FROM pgsched.runs_all"


def drain(dsn: str, runs: int, processes: int, concurrency: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs")
        app = App(dsn)
        app.enqueue_many("noop", [{}] * runs)
        app.close()
        conn.execute("VACUUM ANALYZE pgsched.runs")
        scans_before, reads_before = index_reads(conn)
        procs = [start_worker(dsn, "--concurrency", str(concurrency)) for _ in range(processes)]
        try:
            wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs WHERE status IN ('queued', 'running')", 900)
        finally:
            for proc in procs:
                stop_worker(proc)
        time.sleep(1.5)  # the workers' backends flush their statistics as they exit
        scans, reads = (after - before for after, before in zip(index_reads(conn), (scans_before, reads_before)))
        done, seconds = conn.execute(RATE_SQL).fetchone()  # type: ignore[misc]
        claims, short = conn.execute(CLAIMS_SQL, {"concurrency": concurrency}).fetchone()  # type: ignore[misc]
    assert done == runs, f"{done} of {runs} runs finished"
    return {
        "per_s": runs / float(seconds),
        "claims": claims,
        "short_claims": short,
        "runs_per_claim": runs / claims,
        "claim_index_scans": scans,
        "entries_read_per_run": reads / runs,
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
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in shape.split("x")) for shape in args.shapes.split(",")]
    samples: dict[str, list[dict[str, float]]] = {}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        for round_number in range(args.rounds):
            order = shapes if round_number % 2 == 0 else shapes[::-1]
            for processes, concurrency in order:
                figures = drain(dsn, args.runs, processes, concurrency)
                samples.setdefault(f"{processes}x{concurrency}", []).append(figures)
                print(f"round {round_number + 1}: {processes}x{concurrency} {figures}", flush=True)
    medians = {
        shape: {key: round(statistics.median(r[key] for r in rows), 2) for key in rows[0]}
        for shape, rows in samples.items()
    }
    first = next(iter(medians))
    print(
        f"\n{'shape':8s} {'runs/s':>9s} {'vs ' + first:>9s} {'claims':>7s} {'short':>6s} {'runs/claim':>10s}"
        f" {'entries/run':>11s}"
    )
    for shape, m in medians.items():
        m["vs_first"] = round(m["per_s"] / medians[first]["per_s"], 3)
        print(
            f"{shape:8s} {m['per_s']:9,.0f} {m['vs_first']:9.2f} {m['claims']:7,.0f} {m['short_claims']:6,.0f}"
            f" {m['runs_per_claim']:10.1f} {m['entries_read_per_run']:11.2f}"
        )
    print(json.dumps({"benchmark": "many_workers", "runs": args.runs, "rounds": args.rounds, "shapes": medians}))


if __name__ == "__main__":
    main()

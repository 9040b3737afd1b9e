"""Does the claim stay cheap as finished runs pile up, and how does drain grow with workers?

    python -m benchmarks.scale [--finished 0,100000,1000000] [--workers 1,2,4] [--runs 20000] [--rounds 1]
                               [--dsn SERVER_DSN]

(a) With 0, 10^5 and 10^6 finished runs in the table: the median and p99 time of one claim of
    50 (pgsched's run_claim statement, then the completion), and the drain rate of one worker
    process. The claim index is partial (queued runs only), so its cost should stay flat.
    With --rounds N, N drains per size, alternating between the sizes; the ratio of the
    largest size to the smallest is the median of the rounds' ratios.
(b) Drain rate of N queued runs with 1, 2 and 4 worker processes.
A throwaway embedded PostgreSQL (fsync and synchronous_commit on) unless --dsn names a server.
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from datetime import date

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import start_worker, stop_worker, wait_until
from pgsched import App
from pgsched.claim_cursor import FROM_THE_START
from pgsched.sql import queries

CLAIMS = 200
LOAD_CHUNK = 1_000_000


def add_finished_runs(
    conn: psycopg.Connection, n: int, *, on_day: date | None = None, into_history: bool | None = None
) -> None:
    """n succeeded runs that finished now, or spread over the UTC day ``on_day``, written
    server-side, then vacuumed: a database with a history. Loaded as a restore loads them, with
    triggers off (schema 0009 lets SQL insert only queued runs), and moved where this schema keeps
    finished runs (``pgsched.runs_history`` where it exists; into_history=False keeps them in
    ``pgsched.runs``, as a release before it did)."""
    if into_history is None:
        into_history = has_history(conn)
    for start in range(0, n, LOAD_CHUNK):  # a transaction per 10^6: no 10^7-row transaction, no table of dead rows
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, result)"
                " SELECT 'noop', 'succeeded', 1, t, t, 'null'"
                " FROM (SELECT coalesce(%(day)s::timestamp AT TIME ZONE 'UTC'"
                "                       + make_interval(secs => i * 86400.0 / %(n)s), now()) AS t"
                "       FROM generate_series(%(start)s, %(stop)s - 1) AS i) AS s",
                {"n": n, "day": on_day, "start": start, "stop": min(n, start + LOAD_CHUNK)},
            )
            if into_history:
                conn.execute(
                    "WITH moved AS (DELETE FROM pgsched.runs WHERE status = 'succeeded' RETURNING *)"
                    " INSERT INTO pgsched.runs_history SELECT * FROM moved"
                )
        if into_history:
            conn.execute("VACUUM pgsched.runs")
    conn.execute("VACUUM ANALYZE")


def history_bytes(conn: psycopg.Connection) -> str:
    """The size of the finished runs' table with its indexes (every partition)."""
    table = "pgsched.runs_history" if has_history(conn) else "pgsched.runs"
    return conn.execute(  # type: ignore[index,no-any-return]
        "SELECT pg_size_pretty(sum(pg_total_relation_size(relid))) FROM pg_partition_tree(%s::regclass)", (table,)
    ).fetchone()[0]


def has_history(conn: psycopg.Connection) -> bool:
    """Whether this schema keeps finished runs apart (``pgsched.runs_history``, schema 0029)."""
    return conn.execute("SELECT to_regclass('pgsched.runs_history') IS NOT NULL").fetchone()[0]  # type: ignore[index,no-any-return]


def all_runs(conn: psycopg.Connection) -> str:
    """The relation that holds every run, finished or not, in this schema."""
    return "pgsched.runs_all" if has_history(conn) else "pgsched.runs"


def claim_times_ms(dsn: str, conn: psycopg.Connection) -> list[float]:
    """Milliseconds per claim of 50 (with its completion), over CLAIMS claims."""
    app = App(dsn)
    app.enqueue_many("noop", [{}] * (CLAIMS * 50))
    app.close()
    samples = []
    with psycopg.connect(dsn, autocommit=True, options="-c plan_cache_mode=force_generic_plan") as claimer:
        for _ in range(CLAIMS):
            start = time.perf_counter()
            rows = claimer.execute(
                queries["run_claim"],
                {
                    "queues": ["default"],
                    "limit": 50,
                    "worker_id": 1,
                    "lease_s": 30.0,
                    "now": None,
                    "only_tasks": None,
                    "skip_tasks": None,
                    **FROM_THE_START,
                },
            ).fetchall()
            samples.append((time.perf_counter() - start) * 1000)
            claimer.execute(
                "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL"
                " WHERE id = ANY(%s)",
                ([r[0] for r in rows],),
            )
    return samples


def drain_rate(dsn: str, conn: psycopg.Connection, runs: int, workers: int) -> float:
    """Runs/s for `workers` worker processes to drain `runs` new runs (by the database's clock)."""
    first_id = conn.execute(f"SELECT coalesce(max(id), 0) FROM {all_runs(conn)}").fetchone()[0]  # type: ignore[index]
    app = App(dsn)
    app.enqueue_many("noop", [{}] * runs)
    app.close()
    procs = [start_worker(dsn) for _ in range(workers)]
    try:
        wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs WHERE status IN ('queued', 'running')", 600)
    finally:
        for proc in procs:
            stop_worker(proc)
    first, last, done = conn.execute(
        "SELECT min(started_at), max(finished_at), count(*) FILTER (WHERE status = 'succeeded')"
        f" FROM {all_runs(conn)} WHERE id > %s",
        (first_id,),
    ).fetchone()  # type: ignore[misc]
    assert done == runs, f"only {done} of {runs} runs succeeded"
    return runs / (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", default="0,100000,1000000", help="finished runs in the table, comma-separated")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts, comma-separated")
    parser.add_argument("--runs", type=int, default=20_000, help="runs per drain")
    parser.add_argument("--rounds", type=int, default=1, help="drains per size, alternating between the sizes")
    parser.add_argument("--dsn", help="a server to create the databases on (default: a throwaway embedded one)")
    args = parser.parse_args()
    sizes = [int(x) for x in args.finished.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]

    figures: dict[str, dict[str, float]] = {
        "claim_p50_ms": {},
        "claim_p99_ms": {},
        "drain_per_s_by_finished": {},
        "drain_per_s_by_workers": {},
    }
    drains: dict[str, list[float]] = {str(size): [] for size in sizes}
    with server_dsn(args.dsn) as server, contextlib.ExitStack() as stack:
        print(
            f"{os.cpu_count()} cores; {args.runs:,} runs per drain, {args.rounds} round(s) per size;"
            f" claims of 50, {CLAIMS} per size",
            flush=True,
        )
        databases: dict[int, tuple[str, psycopg.Connection]] = {}
        for size in sizes:
            dsn = stack.enter_context(fresh_database(server))
            conn = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            started = time.perf_counter()
            add_finished_runs(conn, size)
            claims = claim_times_ms(dsn, conn)
            p50, p99 = statistics.median(claims), statistics.quantiles(claims, n=100)[98]
            figures["claim_p50_ms"][str(size)] = round(p50, 3)
            figures["claim_p99_ms"][str(size)] = round(p99, 3)
            print(
                f"{size:>11,} finished runs (loaded in {time.perf_counter() - started:,.0f} s, {history_bytes(conn)}):"
                f" claim-50 p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                flush=True,
            )
            databases[size] = (dsn, conn)
        # Drains alternate between the sizes, in an order rotated per round, so that a slower
        # minute of a shared machine falls on every size alike.
        for rnd in range(args.rounds):
            for size in sizes[rnd % len(sizes) :] + sizes[: rnd % len(sizes)]:
                rate = drain_rate(*databases[size], args.runs, 1)
                drains[str(size)].append(rate)
                print(f"  round {rnd + 1}: {size:>11,} finished runs: drain {rate:,.0f} runs/s (1 worker)", flush=True)
        for size, rates in drains.items():
            figures["drain_per_s_by_finished"][size] = round(statistics.median(rates))
        for count in worker_counts:
            with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
                rate = drain_rate(dsn, conn, args.runs, count)
                figures["drain_per_s_by_workers"][str(count)] = round(rate)
                print(f"{count} worker process(es): drain {rate:,.0f} runs/s", flush=True)

    base, top = str(sizes[0]), str(sizes[-1])
    ratios = {f"claim_p50_{top}_vs_{base}": round(figures["claim_p50_ms"][top] / figures["claim_p50_ms"][base], 3)}
    per_round = [t / b for t, b in zip(drains[top], drains[base])]
    ratios[f"drain_{top}_vs_{base}"] = round(statistics.median(per_round), 3)
    ratios[f"drain_{top}_vs_{base}_range"] = [round(min(per_round), 3), round(max(per_round), 3)]
    print(
        f"drain with {int(top):,} finished vs {int(base):,}: {ratios[f'drain_{top}_vs_{base}']}x (median of"
        f" {len(per_round)} rounds, {min(per_round):.2f}-{max(per_round):.2f})",
        flush=True,
    )
    lo, hi = str(worker_counts[0]), str(worker_counts[-1])
    ratios[f"drain_{hi}_workers_vs_{lo}"] = round(
        figures["drain_per_s_by_workers"][hi] / figures["drain_per_s_by_workers"][lo], 3
    )
    print(json.dumps({**figures, "ratios": ratios, "runs": args.runs, "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()

"""How fast does pgsched move no-op runs, against a raw-SQL baseline measured in the same run?

    python -m benchmarks.throughput [--runs 20000] [--dsn SERVER_DSN]

(a) bulk enqueue of N runs (enqueue_many, COPY), (b) single enqueues (one call each),
(c) drain of N queued runs by one `pgsched worker` process (default settings, async no-op
tasks), (d) enqueue→task-start latency over 200 single enqueues to an idle worker. The
baseline is psycopg with no framework on an identical table without pgsched's trigger:
COPY, one-row INSERT + commit, and a loop that claims 50 with pgsched's claim query and marks
them done. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from benchmarks._server import fresh_database, server_dsn
from pgsched.claim_cursor import FROM_THE_START
from pgsched.sql import queries

ROOT = Path(__file__).resolve().parent.parent
BENCH_APP = "benchmarks.bench_app:app"


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


# ---- pgsched


def enqueue_bulk(dsn: str, n: int) -> float:
    from benchmarks.bench_app import app

    app.use_dsn(dsn)
    try:
        start = time.perf_counter()
        app.enqueue_many("noop", [{}] * n)
        return _rate(n, time.perf_counter() - start)
    finally:
        app.close()


def enqueue_single(dsn: str, n: int) -> float:
    from benchmarks.bench_app import App

    app = App(dsn)  # a fresh app: bench_app's pool belongs to enqueue_bulk
    app.task(name="noop")(lambda: None)
    try:
        app.enqueue("noop", {})  # open the pool outside the timing
        start = time.perf_counter()
        for _ in range(n):
            app.enqueue("noop", {})
        return _rate(n, time.perf_counter() - start)
    finally:
        app.close()


def start_worker(dsn: str, *extra: str, app: str = BENCH_APP, root: Path = ROOT) -> subprocess.Popen[bytes]:
    """A `pgsched worker` of ``app``, of the code under ``root`` (another tree: an A/B of two versions)."""
    env = {**os.environ, "PGSCHED_DSN": dsn, "PYTHONPATH": str(root)}
    return subprocess.Popen(
        [sys.executable, "-m", "pgsched.cli.main", "worker", "--app", app, "--dsn", dsn, *extra],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def wait_until(conn: psycopg.Connection, query: str, timeout_s: float, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not conn.execute(query).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for: {query}")
        time.sleep(interval_s)


def drain(dsn: str, n: int, *extra: str, worker_app: str = BENCH_APP, root: Path = ROOT) -> float:
    """Runs/s from the first claim to the last completion, by the database's clock, of one
    worker of ``worker_app`` started with ``extra`` options, of the code under ``root``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        from benchmarks.bench_app import app

        app.use_dsn(dsn)
        app.enqueue_many("noop", [{}] * n)
        app.close()
        worker = start_worker(dsn, *extra, app=worker_app, root=root)
        try:
            wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs WHERE status IN ('queued', 'running')", 300)
        finally:
            stop_worker(worker)
        first, last, done = conn.execute(
            "SELECT min(started_at), max(finished_at), count(*) FILTER (WHERE status = 'succeeded')"
            " FROM pgsched.runs_all"
        ).fetchone()  # type: ignore[misc]
    assert done == n, f"only {done} of {n} runs succeeded"
    return _rate(n, (last - first).total_seconds())


def latency(dsn: str, n: int) -> list[float]:
    """Milliseconds from the enqueue call to the task starting, one run at a time, idle worker."""
    from pgsched import App

    app = App(dsn)
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = start_worker(dsn)
        try:
            wait_until(conn, "SELECT count(*) > 0 FROM pgsched.workers", 30)
            app.enqueue("started_at", {})  # warm the pool and the worker
            wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs_all WHERE status <> 'succeeded'", 30, 0.01)
            for _ in range(n):  # the previous run has succeeded: the worker is idle
                sent = time.time()
                run_id = app.enqueue("started_at", {})
                wait_until(
                    conn, f"SELECT status = 'succeeded' FROM pgsched.runs_all WHERE id = {int(run_id)}", 30, 0.002
                )
                began = conn.execute("SELECT result::float8 FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()[
                    0
                ]  # type: ignore[index]
                samples.append((began - sent) * 1000)
        finally:
            stop_worker(worker)
            app.close()
    return samples


# ---- the raw-SQL baseline: same table, no trigger, no framework


def baseline(server: str, n: int) -> dict[str, float]:
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        # A hand-rolled queue keeps its finished rows where they are: no move to the history (0030).
        conn.execute("DROP TRIGGER IF EXISTS runs_to_history ON pgsched.runs")
        copy_rate = _baseline_copy(conn, n)
        conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        single_rate = _baseline_single_insert(conn, min(n, 2000))
        conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        _baseline_copy(conn, n)
        claim_rate = _baseline_claim50(conn, n)
    return {
        "baseline_copy_per_s": copy_rate,
        "baseline_single_insert_per_s": single_rate,
        "baseline_claim50_per_s": claim_rate,
    }


def _baseline_copy(conn: psycopg.Connection, n: int) -> float:
    start = time.perf_counter()
    with conn.transaction(), conn.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
        for _ in range(n):
            copy.write_row(("noop", Jsonb({})))
    return _rate(n, time.perf_counter() - start)


def _baseline_single_insert(conn: psycopg.Connection, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("INSERT INTO pgsched.runs (task, args) VALUES (%s, %s) RETURNING id", ("noop", Jsonb({})))
    return _rate(n, time.perf_counter() - start)


def _baseline_claim50(conn: psycopg.Connection, n: int) -> float:
    done = 0
    start = time.perf_counter()
    while True:
        rows = conn.execute(
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
        if not rows:
            break
        conn.execute(
            "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL "
            "WHERE id = ANY(%s)",
            ([r[0] for r in rows],),
        )
        done += len(rows)
    assert done == n
    return _rate(done, time.perf_counter() - start)


def percentile(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="runs for bulk enqueue and drain")
    parser.add_argument("--single", type=int, default=2_000, help="single enqueues")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument(
        "--dsn", help="a server to create the benchmark databases on (default: a throwaway embedded one)"
    )
    args = parser.parse_args()

    with server_dsn(args.dsn) as server:
        with psycopg.connect(server) as c:
            settings = dict(
                c.execute(
                    "SELECT name, setting FROM pg_settings"
                    " WHERE name IN ('server_version', 'fsync', 'synchronous_commit')"
                ).fetchall()
            )
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"PostgreSQL {settings['server_version']} fsync={settings['fsync']} "
            f"synchronous_commit={settings['synchronous_commit']}",
            flush=True,
        )
        base = baseline(server, args.runs)
        print(
            f"baseline: COPY {base['baseline_copy_per_s']:,.0f}/s, one-row insert+commit "
            f"{base['baseline_single_insert_per_s']:,.0f}/s, "
            f"claim-50 + complete {base['baseline_claim50_per_s']:,.0f}/s",
            flush=True,
        )
        with fresh_database(server) as dsn:
            bulk = enqueue_bulk(dsn, args.runs)
            single = enqueue_single(dsn, args.single)
            print(
                f"enqueue: bulk {bulk:,.0f}/s ({bulk / base['baseline_copy_per_s']:.2f}x COPY), single "
                f"{single:,.0f}/s ({single / base['baseline_single_insert_per_s']:.2f}x one-row insert)",
                flush=True,
            )
            drained = drain(dsn, args.runs)
            print(
                f"drain: {drained:,.0f} runs/s with one worker process "
                f"({drained / base['baseline_claim50_per_s']:.2f}x claim-50 baseline)",
                flush=True,
            )
            lat = latency(dsn, args.latency_samples)
            p50, p95, p99 = (percentile(lat, q) for q in (50, 95, 99))
            insert_ms = 1000 / base["baseline_single_insert_per_s"]
            print(
                f"latency enqueue→start: p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms "
                f"({p50 / insert_ms:.1f}x / {p99 / insert_ms:.1f}x a one-row insert+commit)",
                flush=True,
            )

    figures = {
        "enqueue_bulk_per_s": round(bulk),
        "enqueue_single_per_s": round(single),
        "drain_per_s": round(drained),
        "latency_p50_ms": round(p50, 3),
        "latency_p95_ms": round(p95, 3),
        "latency_p99_ms": round(p99, 3),
        **{k: round(v) for k, v in base.items()},
        "ratios": {
            # latency in one-row insert+commit round trips: comparable across machines
            "latency_p50_vs_insert": round(p50 / (1000 / base["baseline_single_insert_per_s"]), 2),
            "latency_p99_vs_insert": round(p99 / (1000 / base["baseline_single_insert_per_s"]), 2),
            "enqueue_bulk_vs_copy": round(bulk / base["baseline_copy_per_s"], 3),
            "enqueue_single_vs_insert": round(single / base["baseline_single_insert_per_s"], 3),
            "drain_vs_claim50": round(drained / base["baseline_claim50_per_s"], 3),
        },
        "runs": args.runs,
        "postgres": settings["server_version"],
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

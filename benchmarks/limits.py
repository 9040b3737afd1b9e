"""Flow control (issue #14) measured: what limits cost when they do not bind, and how exactly
they hold when they do, over several worker processes.

    python -m benchmarks.limits [--runs 20000] [--reps 3] [--rate-seconds 60] [--dsn SERVER_DSN]

(a) no binding limit: a drain of N no-op runs by one `pgsched worker` from a queue without
    settings, against the same drain from a queue with max_running 100000, rate 1000000/s
    (burst 1000000) and key_max_running 100000 set (none binds), alternately, same database
    server; the ratio of the two (issue: >= 0.9x);
(b) max_running 10: 4 workers x concurrency 20 drain 2,000 runs of 20 ms that record their
    start and end in a side table: the most executions ever in progress at once (<= 10) and
    the time-weighted mean while the drain lasts (>= 9);
(c) rate 200/s (burst 10): 4 workers drain a backlog for --rate-seconds: starts per second
    achieved after the first burst (200 +- 3%), and the most starts in any 1-second window
    (<= 200 + burst).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.limits_app import CREATE_SPANS
from benchmarks.throughput import drain, start_worker, stop_worker, wait_until
from pgsched import App

LIMITS_APP = "benchmarks.limits_app:app"
UNBINDING = (
    "INSERT INTO pgsched.queues (name, max_running, rate, burst, key_max_running)"
    " VALUES ('default', 100000, '1000000/s', 1000000, 100000)"
)
# The most executions in progress at once, and the time-weighted mean from the first start to
# the last end: +1 at each start, -1 at each end, in time order (at one instant an end first).
OVERLAP = """
WITH steps AS (
    SELECT at, sum(CASE event WHEN 'start' THEN 1 ELSE -1 END) OVER (ORDER BY at, event) AS in_progress
    FROM spans
), spans_of AS (
    SELECT in_progress, extract(epoch FROM lead(at) OVER (ORDER BY at) - at) AS lasted FROM steps
)
SELECT max(in_progress), sum(in_progress * lasted) / sum(lasted) FROM spans_of WHERE lasted IS NOT NULL
"""
MOST_STARTS_IN_A_SECOND = """
SELECT max(n) FROM (
    SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND '999.999 ms' FOLLOWING) AS n
    FROM pgsched.runs WHERE started_at IS NOT NULL
) AS windows
"""


def unbinding_drains(server: str, runs: int, reps: int) -> dict[str, list[float]]:
    """(a): drains without settings and with limits that never bind, alternately."""
    figures: dict[str, list[float]] = {"plain": [], "limited": []}
    with fresh_database(server) as plain, fresh_database(server) as limited:
        with psycopg.connect(limited, autocommit=True) as conn:
            conn.execute(UNBINDING)
        databases = {"plain": plain, "limited": limited}
        for rep in range(reps):
            for side in ("plain", "limited") if rep % 2 == 0 else ("limited", "plain"):
                figures[side].append(drain(databases[side], runs))
            print(f"rep {rep + 1}: limited/plain {figures['limited'][-1] / figures['plain'][-1]:.2f}x", flush=True)
    return figures


def workers_draining(dsn: str, count: int, concurrency: int, until: str, timeout_s: float) -> None:
    procs = [start_worker(dsn, "--concurrency", str(concurrency), app=LIMITS_APP) for _ in range(count)]
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(conn, until, timeout_s, 0.1)
    finally:
        for proc in procs:
            stop_worker(proc)


def max_running_overlap(server: str, runs: int = 2000) -> dict[str, Any]:
    """(b): max_running 10, 4 workers x 20 slots, runs of 20 ms."""
    with fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CREATE_SPANS)
            conn.execute("INSERT INTO pgsched.queues (name, max_running) VALUES ('default', 10)")
        enqueue(dsn, "span", [{"n": i, "ms": 20} for i in range(runs)])
        started = time.perf_counter()
        done = f"SELECT count(*) = {runs} FROM pgsched.runs WHERE status = 'succeeded'"
        workers_draining(dsn, 4, 20, done, 600)
        seconds = time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            most, mean = conn.execute(OVERLAP).fetchone()  # type: ignore[misc]
            attempts = conn.execute("SELECT max(attempt) FROM pgsched.runs").fetchone()[0]  # type: ignore[index]
    return {
        "runs": runs,
        "max_overlap": int(most),
        "mean_overlap": float(mean),
        "seconds": seconds,
        "max_attempt": attempts,
    }


def rate_accuracy(server: str, seconds: float, rate: int = 200, burst: int = 10) -> dict[str, Any]:
    """(c): a backlog drained at ``rate``/s by 4 workers for ``seconds``."""
    backlog = int(rate * seconds * 1.3)
    with fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO pgsched.queues (name, rate, burst) VALUES ('default', %s, %s)", (f"{rate}/s", burst)
            )
        enqueue(dsn, "noop", [{}] * backlog)
        procs = [start_worker(dsn, "--concurrency", "20", app=LIMITS_APP) for _ in range(4)]
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                wait_until(conn, "SELECT count(*) > 0 FROM pgsched.runs WHERE started_at IS NOT NULL", 60, 0.05)
                time.sleep(seconds + 2)
        finally:
            for proc in procs:
                stop_worker(proc)
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = conn.execute("SELECT min(started_at) FROM pgsched.runs").fetchone()[0]  # type: ignore[index]
            started = conn.execute(
                "SELECT count(*) FROM pgsched.runs WHERE started_at < %s + make_interval(secs => %s)",
                (first, seconds),
            ).fetchone()[0]  # type: ignore[index]
            most = conn.execute(MOST_STARTS_IN_A_SECOND).fetchone()[0]  # type: ignore[index]
    achieved = (started - burst) / seconds
    return {
        "rate": rate,
        "burst": burst,
        "seconds": seconds,
        "achieved_per_s": achieved,
        "error": achieved / rate - 1,
        "most_in_1s": int(most),
    }


def enqueue(dsn: str, task: str, all_args: list[dict[str, Any]]) -> None:
    app = App(dsn)
    try:
        for start in range(0, len(all_args), 10_000):
            app.enqueue_many(task, all_args[start : start + 10_000])
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="Runs per drain in (a)")
    parser.add_argument("--reps", type=int, default=3, help="Drains of each side in (a)")
    parser.add_argument("--rate-seconds", type=float, default=60.0, help="How long (c) drains at the rate")
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    with server_dsn(options.dsn) as server:
        drains = unbinding_drains(server, options.runs, options.reps)
        plain, limited = (statistics.median(drains[side]) for side in ("plain", "limited"))
        ratios = [b / a for a, b in zip(drains["plain"], drains["limited"])]
        print(
            f"(a) drain runs/s, median: plain {plain:,.0f}, limits that do not bind {limited:,.0f},"
            f" {limited / plain:.2f}x (median of the repetitions' ratios {statistics.median(ratios):.2f}x)",
            flush=True,
        )
        overlap = max_running_overlap(server)
        print(
            f"(b) max_running 10, 4 workers x 20: max overlap {overlap['max_overlap']},"
            f" mean {overlap['mean_overlap']:.2f}, {overlap['runs']} runs in {overlap['seconds']:.1f} s",
            flush=True,
        )
        rate = rate_accuracy(server, options.rate_seconds)
        print(
            f"(c) rate 200/s burst 10, 4 workers, {rate['seconds']:.0f} s: {rate['achieved_per_s']:.1f}/s"
            f" ({rate['error']:+.1%}), most starts in a 1 s window {rate['most_in_1s']}",
            flush=True,
        )
    print(json.dumps({"unbinding_drains": drains, "max_running": overlap, "rate": rate}))


if __name__ == "__main__":
    main()

"""Flow control (issue #14) measured: what limits cost when they do not bind, and how exactly
they hold when they do, over several worker processes.

    python -m benchmarks.limits [--runs 20000] [--reps 3] [--rate-seconds 60] [--dsn SERVER_DSN]

(a) no binding limit: a drain of N no-op runs by one `pgsched worker` from a queue without
    settings, against the same drain from a queue with max_running 100000, rate 1000000/s
    (burst 1000000) and key_max_running 100000 set (none binds), alternately, same database
    server; the ratio of the two (issue: >= 0.9x);
(b) max_running 10: 4 workers x concurrency 20 drain 2,000 runs of 20 ms that record their
    start and end in a side table: the most executions ever in progress at once (<= 10) and
    the time-weighted mean while the drain lasts (>= 9). Twice, one per instrument (see
    benchmarks/limits_app.py): records inserted on the task's path (``span``, the figure
    measured since the issue was built), and instants taken in the task and written off its
    path (``span_clock``);
(c) rate 200/s (burst 10): 4 workers drain a backlog for --rate-seconds: starts per second
    achieved after the first burst (200 +- 3%), and the most starts in any 1-second window
    (<= 200 + burst);
(d) fairness: tenant A's 10,000 no-op runs queued, 2 workers x concurrency 20 drain them; while
    A's backlog lasts, tenant B enqueues 10 runs every 0.25 s (at most 8 times): B's wait from
    enqueue to start, p50/p99/max (issue: p99 <= 1 s), in a fair queue and, in the same run, in
    the same queue without `fair` (what B waited before), with both drains' runs/s;
(e) with --baseline-tree PATH (a checkout of the previous code): the plain drain of (a) by this
    tree's worker against that tree's, alternately, on the same database: what this code costs
    a queue without settings. With --baseline-tree, (b) too is drained --reps times by each
    tree's workers, alternately (the baseline tree needs this tree's benchmarks/limits_app.py
    for span_clock: copy it there).

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.limits_app import CREATE_SPANS
from benchmarks.throughput import ROOT, drain, start_worker, stop_worker, wait_until
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
    FROM pgsched.runs_all WHERE started_at IS NOT NULL
) AS windows
"""


def _cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and of its children it has reaped (a local server's postmaster:
    every backend that has exited), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(tick) for tick in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _postmaster(dsn: str) -> int | None:
    """The server's postmaster pid if it runs on this machine (else no CPU figures)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    try:
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def cpu_drain(dsn: str, runs: int, postmaster: int | None) -> tuple[float, float]:
    """A drain's runs/s and CPU µs per run, the worker's and the server's (its backends, once
    exited, and autovacuum): what the drain cost, whatever else the machine was doing."""
    server_before = _cpu_s(postmaster) if postmaster else 0.0
    workers_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = drain(dsn, runs)
    time.sleep(0.5)  # the drain's backends exit and are reaped
    workers_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_s = (_cpu_s(postmaster) - server_before) if postmaster else 0.0
    worker_s = (workers_after.ru_utime + workers_after.ru_stime) - (workers_before.ru_utime + workers_before.ru_stime)
    return rate, (server_s + worker_s) / runs * 1e6


def unbinding_drains(server: str, runs: int, reps: int) -> dict[str, list[float]]:
    """(a): drains without settings and with limits that never bind, alternately; runs/s and
    CPU µs per run (worker + server) of each."""
    figures: dict[str, list[float]] = {"plain": [], "limited": [], "plain_cpu_us": [], "limited_cpu_us": []}
    with fresh_database(server) as plain, fresh_database(server) as limited:
        with psycopg.connect(limited, autocommit=True) as conn:
            conn.execute(UNBINDING)
        databases = {"plain": plain, "limited": limited}
        postmaster = _postmaster(plain)
        for rep in range(reps):
            for side in ("plain", "limited") if rep % 2 == 0 else ("limited", "plain"):
                rate, cpu_us = cpu_drain(databases[side], runs, postmaster)
                figures[side].append(rate)
                figures[f"{side}_cpu_us"].append(cpu_us)
            print(
                f"rep {rep + 1}: limited/plain {figures['limited'][-1] / figures['plain'][-1]:.2f}x,"
                f" CPU per run {figures['limited_cpu_us'][-1]:.0f} / {figures['plain_cpu_us'][-1]:.0f} µs",
                flush=True,
            )
    return figures


def workers_draining(dsn: str, count: int, concurrency: int, until: str, timeout_s: float, root: Path = ROOT) -> None:
    procs = [start_worker(dsn, "--concurrency", str(concurrency), app=LIMITS_APP, root=root) for _ in range(count)]
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            wait_until(conn, until, timeout_s, 0.1)
    finally:
        for proc in procs:
            stop_worker(proc)


def max_running_overlap(server: str, task: str, runs: int = 2000, root: Path = ROOT) -> dict[str, Any]:
    """(b): max_running 10, 4 workers x 20 slots (of the code under ``root``), runs of 20 ms of
    ``task`` (an instrument)."""
    with fresh_database(server) as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(CREATE_SPANS)
            conn.execute("INSERT INTO pgsched.queues (name, max_running) VALUES ('default', 10)")
        enqueue(dsn, task, [{"n": i, "ms": 20} for i in range(runs)])
        started = time.perf_counter()
        done = (
            f"SELECT count(*) = {runs} FROM pgsched.runs_all WHERE status = 'succeeded'"
            f" AND (SELECT count(*) FROM spans) = {2 * runs}"  # span_clock's are written after
        )
        workers_draining(dsn, 4, 20, done, 600, root)
        seconds = time.perf_counter() - started
        with psycopg.connect(dsn, autocommit=True) as conn:
            most, mean = conn.execute(OVERLAP).fetchone()  # type: ignore[misc]
            attempts = conn.execute("SELECT max(attempt) FROM pgsched.runs_all").fetchone()[0]  # type: ignore[index]
    return {
        "instrument": task,
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
                wait_until(conn, "SELECT count(*) > 0 FROM pgsched.runs_all WHERE started_at IS NOT NULL", 60, 0.05)
                time.sleep(seconds + 2)
        finally:
            for proc in procs:
                stop_worker(proc)
        with psycopg.connect(dsn, autocommit=True) as conn:
            first = conn.execute("SELECT min(started_at) FROM pgsched.runs_all").fetchone()[0]  # type: ignore[index]
            started = conn.execute(
                "SELECT count(*) FROM pgsched.runs_all WHERE started_at < %s + make_interval(secs => %s)",
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


FAIR_BACKLOG = 10_000
FAIR_BATCH = 10  # B's runs per enqueue
FAIR_BATCHES = 8
FAIR_EVERY_S = 0.25
B_WAITS = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY s), max(s), count(*) FROM (
    SELECT extract(epoch FROM started_at - created_at) AS s FROM pgsched.runs_all WHERE tenant = 'B'
) AS waits
"""
A_RATE = """
SELECT count(*) / extract(epoch FROM max(finished_at) - min(started_at)) FROM pgsched.runs_all WHERE tenant = 'A'
"""


def fairness(server: str, fair: bool) -> dict[str, Any]:
    """(d): B's start waits behind A's backlog, with the queue fair or not."""
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO pgsched.queues (name, fair) VALUES ('default', %s)", (fair,))
        conn.execute(
            "INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', 'A' FROM generate_series(1, %s)", (FAIR_BACKLOG,)
        )
        procs = [start_worker(dsn, "--concurrency", "20", app=LIMITS_APP) for _ in range(2)]
        try:
            wait_until(conn, "SELECT count(*) >= 500 FROM pgsched.runs_all WHERE started_at IS NOT NULL", 120, 0.01)
            for _ in range(FAIR_BATCHES):
                queued = "SELECT count(*) FROM pgsched.runs_all WHERE tenant = 'A' AND status = 'queued'"
                if conn.execute(queued).fetchone()[0] < 1000:  # type: ignore[index]
                    break  # A's backlog is (nearly) gone: B would no longer wait behind it
                conn.execute(
                    "INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', 'B' FROM generate_series(1, %s)",
                    (FAIR_BATCH,),
                )
                time.sleep(FAIR_EVERY_S)
            wait_until(conn, "SELECT count(*) = 0 FROM pgsched.runs WHERE status IN ('queued', 'running')", 300)
        finally:
            for proc in procs:
                stop_worker(proc)
        (p50, p99), most, count = conn.execute(B_WAITS).fetchone()  # type: ignore[misc]
        a_rate = conn.execute(A_RATE).fetchone()[0]  # type: ignore[index]
    return {
        "fair": fair,
        "b_runs": count,
        "b_wait_p50_s": p50,
        "b_wait_p99_s": p99,
        "b_wait_max_s": float(most),
        "a_runs_per_s": float(a_rate),
    }


def tree_drains(server: str, runs: int, reps: int, baseline: Path) -> dict[str, list[float]]:
    """(e): the plain drain by this tree's worker and by ``baseline``'s, alternately, one database."""
    figures: dict[str, list[float]] = {"baseline": [], "this": []}
    roots = {"baseline": baseline, "this": ROOT}
    with fresh_database(server) as dsn:
        for rep in range(reps):
            for side in ("baseline", "this") if rep % 2 == 0 else ("this", "baseline"):
                figures[side].append(drain(dsn, runs, root=roots[side]))
            print(f"rep {rep + 1}: this/baseline {figures['this'][-1] / figures['baseline'][-1]:.2f}x", flush=True)
    return figures


def overlaps(server: str, reps: int, baseline: Path | None) -> list[dict[str, Any]]:
    """(b) with each instrument, by this tree's workers and, alternately, ``baseline``'s."""
    figures: list[dict[str, Any]] = []
    trees = {"this": ROOT} if baseline is None else {"baseline": baseline, "this": ROOT}
    for rep in range(reps):
        for task in ("span", "span_clock"):
            for tree in list(trees) if rep % 2 == 0 else list(reversed(trees)):
                overlap = {
                    "tree": tree,
                    "load": os.getloadavg()[0],
                    **max_running_overlap(server, task, root=trees[tree]),
                }
                figures.append(overlap)
                print(
                    f"(b) max_running 10, 4 workers x 20, {tree} tree, {task}: max overlap {overlap['max_overlap']},"
                    f" mean {overlap['mean_overlap']:.2f}, {overlap['runs']} runs in {overlap['seconds']:.1f} s,"
                    f" load {overlap['load']:.1f}",
                    flush=True,
                )
    return figures


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
    parser.add_argument("--baseline-tree", type=Path, help="(e): a checkout of the previous code to drain against")
    parser.add_argument("--only", help="Run only these parts, e.g. 'ade' (default: all)", default="abcde")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    with server_dsn(options.dsn) as server:
        if "d" in options.only:
            results["fairness"] = [fairness(server, fair) for fair in (True, False)]
            for figures in results["fairness"]:
                print(
                    f"(d) fair={figures['fair']}: B's {figures['b_runs']} runs waited"
                    f" p50 {figures['b_wait_p50_s']:.3f} s,"
                    f" p99 {figures['b_wait_p99_s']:.3f} s, max {figures['b_wait_max_s']:.3f} s;"
                    f" A drained at {figures['a_runs_per_s']:,.0f} runs/s",
                    flush=True,
                )
        if "e" in options.only and options.baseline_tree:
            trees = tree_drains(server, options.runs, options.reps, options.baseline_tree)
            results["tree_drains"] = trees
            ratios = [b / a for a, b in zip(trees["baseline"], trees["this"])]
            print(
                f"(e) plain drain runs/s, median: baseline tree {statistics.median(trees['baseline']):,.0f},"
                f" this tree {statistics.median(trees['this']):,.0f}; ratios {', '.join(f'{r:.2f}' for r in ratios)}"
                f" (median {statistics.median(ratios):.2f}x)",
                flush=True,
            )
        if "a" in options.only:
            drains = unbinding_drains(server, options.runs, options.reps)
            results["unbinding_drains"] = drains
            plain, limited = (statistics.median(drains[side]) for side in ("plain", "limited"))
            ratios = [b / a for a, b in zip(drains["plain"], drains["limited"])]
            cpu = {side: statistics.median(drains[f"{side}_cpu_us"]) for side in ("plain", "limited")}
            print(
                f"(a) drain runs/s, median: plain {plain:,.0f}, limits that do not bind {limited:,.0f},"
                f" {limited / plain:.2f}x (median of the repetitions' ratios {statistics.median(ratios):.2f}x);"
                f" CPU per run (worker + server), median: plain {cpu['plain']:.0f} µs, limited {cpu['limited']:.0f} µs,"
                f" plain/limited {cpu['plain'] / cpu['limited']:.2f}x",
                flush=True,
            )
        if "b" in options.only:
            results["max_running"] = overlaps(
                server, options.reps if options.baseline_tree else 1, options.baseline_tree
            )
        if "c" in options.only:
            rate = results["rate"] = rate_accuracy(server, options.rate_seconds)
            print(
                f"(c) rate 200/s burst 10, 4 workers, {rate['seconds']:.0f} s: {rate['achieved_per_s']:.1f}/s"
                f" ({rate['error']:+.1%}), most starts in a 1 s window {rate['most_in_1s']}",
                flush=True,
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

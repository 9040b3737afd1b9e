"""The worker's CPU per run in a no-op drain, this tree against another tree and the raw loop,
in one run (issue 18, item 3).

    python -m benchmarks.worker_cpu [--runs 20000] [--rounds 5] [--paths async,sync] [--processes 1,2]
                                    [--baseline-python PATH] [--no-raw] [--dsn SERVER_DSN]

``--baseline-python``: the Python of another checkout's venv (its own editable install, e.g.
``git worktree add /tmp/base main && /tmp/base/.venv/bin/pip install -e /tmp/base``); its
``pgsched worker`` drains a database that its own ``pgsched migrate`` made. The raw loop is
``benchmarks.peers_drivers.raw``'s (claim 50 with pgsched's claim query, one plain UPDATE to
finish; the insert trigger dropped, as there).

Per drain: the workers are started and left to register and go idle, then the CPU time of
their processes (all threads, /proc) and of every server backend of the database but ours
is read; one COPY queues ``--runs`` no-op runs (the insert trigger wakes the workers), and
when every run is done both are read again. So a figure is the drain's own CPU, without the
worker's start-up (imports, pools) and without the enqueue. The rate is by the database's
clock, first start to last finish. Sides alternate within each (path, processes) and the
order rotates per round; figures are medians over rounds, and ``this/baseline`` is the median
of the rounds' paired ratios. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks._server import server_dsn

ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.bench_app:app"
TASKS = {"async": "noop", "sync": "noop_sync"}
PENDING_SQL = "SELECT count(*) FROM pgsched.runs WHERE status IN ('queued', 'running')"
RATE_SQL = (
    "SELECT count(*) FILTER (WHERE status = 'succeeded'), extract(epoch FROM max(finished_at) - min(started_at)),"
    " count(DISTINCT (worker_id, started_at)), count(DISTINCT (worker_id, finished_at)) FROM pgsched.runs_all"
)
OTHER_BACKENDS_SQL = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
METRICS = ("per_s", "worker_us_per_run", "store_us_per_run", "runs_per_claim", "runs_per_completion")


@dataclass(frozen=True)
class Side:
    name: str
    python: str
    root: Path  # where its benchmarks.bench_app is imported from
    raw: bool = False


def cpu_s(pid: int) -> float:
    """CPU time of every live thread of ``pid`` (0 once it has gone), from each one's schedstat."""
    total = 0.0
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += thread_cpu_s(pid, task.name)
    return total


def thread_cpu_s(pid: int, thread: str | None = None) -> float:
    """CPU time of one thread (default: a single-threaded process's, a server backend's) to the
    nanosecond (schedstat; /proc/PID/stat counts clock ticks of 10 ms)."""
    path = f"/proc/{pid}/schedstat" if thread is None else f"/proc/{pid}/task/{thread}/schedstat"
    try:
        return int(Path(path).read_text().split()[0]) / 1e9
    except OSError:
        return 0.0


@contextlib.contextmanager
def database(server: str, side: Side) -> Iterator[str]:
    """A database migrated by ``side``'s own pgsched (the raw loop's: by this tree's, without the insert trigger)."""
    name = f"worker_cpu_{side.name}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        subprocess.run(
            [side.python, "-m", "pgsched.cli.main", "migrate", "--dsn", dsn],
            cwd=side.root,
            check=True,
            capture_output=True,
        )
        if side.raw:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def start(side: Side, dsn: str, probe_dir: str) -> subprocess.Popen[bytes]:
    if side.raw:
        argv = [side.python, "-m", "benchmarks.peers_drivers.raw", "worker"]
    else:
        argv = [side.python, "-m", "pgsched.cli.main", "worker", "--app", APP, "--dsn", dsn]
    env = {**os.environ, "PGSCHED_DSN": dsn, "PEERS_DSN": dsn, "PEERS_PROBE_DIR": probe_dir}
    env.pop("PYTHONPATH", None)
    return subprocess.Popen(argv, cwd=side.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for(conn: psycopg.Connection, query: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not conn.execute(query).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting for: {query}")
        time.sleep(0.02)


def drain(side: Side, dsn: str, task: str, runs: int, processes: int) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn, tempfile.TemporaryDirectory() as probe_dir:
        conn.execute("TRUNCATE pgsched.runs, pgsched.runs_history")  # RATE_SQL reads runs_all
        conn.execute("DELETE FROM pgsched.workers")
        conn.execute("VACUUM ANALYZE pgsched.runs")
        procs = [start(side, dsn, probe_dir) for _ in range(processes)]
        try:
            # registered (raw: its two connections open), then idle a moment: start-up is not the drain's
            ready = (
                f"SELECT count(*) >= {2 * processes} FROM pg_stat_activity WHERE datname = current_database()"
                if side.raw
                else f"SELECT count(*) >= {processes} FROM pgsched.workers"
            )
            wait_for(conn, ready, 60)
            time.sleep(1.0)
            backends = [pid for (pid,) in conn.execute(OTHER_BACKENDS_SQL).fetchall()]
            before = {pid: thread_cpu_s(pid) for pid in backends}
            workers_before = sum(cpu_s(p.pid) for p in procs)
            with conn.transaction(), conn.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
                for _ in range(runs):
                    copy.write_row((task, "{}"))
            wait_for(conn, f"SELECT ({PENDING_SQL}) = 0", 600)
            workers_s = sum(cpu_s(p.pid) for p in procs) - workers_before
            backends = [pid for (pid,) in conn.execute(OTHER_BACKENDS_SQL).fetchall()]
            store_s = sum(thread_cpu_s(pid) - before.get(pid, 0.0) for pid in backends)
        finally:
            stop(procs)
        # one claim's runs share its transaction's now(), and one completion's: runs per statement
        done, seconds, claims, completions = conn.execute(RATE_SQL).fetchone()  # type: ignore[misc]
    assert done == runs, f"{side.name}: {done} of {runs} runs succeeded"
    return {
        "per_s": runs / float(seconds),
        "worker_us_per_run": workers_s / runs * 1e6,
        "store_us_per_run": store_s / runs * 1e6,
        "runs_per_claim": runs / claims,
        "runs_per_completion": runs / completions,
    }


def summary(figures: dict[str, list[dict[str, float]]], key: str) -> dict[str, float]:
    return {side: statistics.median(f[key] for f in rows) for side, rows in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paths", default="async,sync", help="async (event loop) and/or sync (thread pool) no-ops")
    parser.add_argument("--processes", default="1,2", help="worker processes per drain, e.g. 1,2")
    parser.add_argument("--baseline-python", help="the Python of another checkout's venv: its worker is 'baseline'")
    parser.add_argument("--no-raw", action="store_true", help="leave out the raw claim loop")
    parser.add_argument("--dsn", help="a server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    sides = [Side("this", sys.executable, ROOT)]
    if options.baseline_python:
        python = Path(options.baseline_python)
        base_root = Path(
            subprocess.run(
                [str(python), "-c", "import pgsched, pathlib; print(pathlib.Path(pgsched.__file__).parent.parent)"],
                check=True,
                capture_output=True,
                text=True,
                cwd="/",  # not this directory's pgsched
            ).stdout.strip()
        )
        sides.append(Side("baseline", str(python), base_root))
    if not options.no_raw:
        sides.append(Side("raw", sys.executable, ROOT, raw=True))
    configs = [(path, int(n)) for n in options.processes.split(",") for path in options.paths.split(",")]
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with server_dsn(options.dsn) as server, contextlib.ExitStack() as stack:
        dsns = {side.name: stack.enter_context(database(server, side)) for side in sides}
        for rnd in range(options.rounds):
            for path, processes in configs:
                key = f"{path} x{processes}"
                here = [s for s in sides if not (s.raw and path == "sync")]
                shift = rnd % len(here)
                for side in here[shift:] + here[:shift]:
                    figures = drain(side, dsns[side.name], TASKS[path], options.runs, processes)
                    results.setdefault(key, {}).setdefault(side.name, []).append(figures)
                    print(
                        f"[{rnd + 1}] {key:<9} {side.name:<8} {figures['per_s']:>8,.0f} runs/s  worker"
                        f" {figures['worker_us_per_run']:6.1f} µs/run  store {figures['store_us_per_run']:6.1f} µs/run"
                        f"  runs/claim {figures['runs_per_claim']:5.1f}"
                        f"  runs/completion {figures['runs_per_completion']:5.1f}",
                        flush=True,
                    )
    report: dict[str, Any] = {"runs": options.runs, "rounds": options.rounds, "configs": {}}
    for key, figures in results.items():
        entry: dict[str, Any] = {m: summary(figures, m) for m in METRICS}
        for other in ("baseline", "raw"):
            if "this" in figures and other in figures:
                pairs = list(zip(figures["this"], figures[other]))
                entry[f"this_vs_{other}"] = {
                    m: statistics.median(a[m] / b[m] for a, b in pairs)
                    for m in ("per_s", "worker_us_per_run", "store_us_per_run")
                }
        report["configs"][key] = entry
        print(f"{key}: " + json.dumps(entry), flush=True)
    for path in options.paths.split(","):
        one, two = results.get(f"{path} x1"), results.get(f"{path} x2")
        if one and two:
            gains = {
                side: statistics.median(b["per_s"] / a["per_s"] for a, b in zip(one[side], two[side]))
                for side in one
                if side in two
            }
            report.setdefault("two_process_gain", {})[path] = gains
            print(f"{path}: 2 processes over 1 (median of rounds): " + json.dumps(gains), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

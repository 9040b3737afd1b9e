"""What do the Celery-style calls cost (issue #16), against pgsched's own measured in the same run?

    python -m benchmarks.celery [--single 2000] [--reps 5] [--runs 20000] [--latency-samples 200]
                                [--before-tree DIR --before-python PY] [--dsn SERVER_DSN]

(a) ``task.delay(1)`` against ``task.enqueue(x=1)``: single enqueues, alternating call by call on
the same database; rates from the median call, and their ratio (target: >= 0.9).
(b) ``handle.get()`` on an idle worker: milliseconds from the task's end (the time it returns)
to get() returning, one run at a time (target: p50 <= 3 ms).
(c) The drain of runs nobody waits on: ``benchmarks.throughput``'s drain from this tree and,
with --before-tree/--before-python, from a checkout of the release before (its own venv),
interleaved on the same server (target: after / before >= 0.97).
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import percentile, start_worker, stop_worker, wait_until

ROOT = Path(__file__).resolve().parent.parent


def single_latencies(dsn: str, n: int) -> tuple[list[float], list[float]]:
    """Milliseconds per call of ``task.enqueue(x=1)`` and ``task.delay(1)``, ``n`` each, the two
    alternating call by call (which goes first alternates too): on a shared machine, blocks of
    one then blocks of the other measured the machine's drift more than the calls."""
    from benchmarks.bench_app import App

    app = App(dsn)
    noop = app.task(name="noop")(lambda x=0: None)
    calls = {"enqueue": lambda: noop.enqueue(x=1), "delay": lambda: noop.delay(1)}
    samples: dict[str, list[float]] = {"enqueue": [], "delay": []}
    try:
        noop.enqueue()  # open the pool outside the timing
        for i in range(n):
            for name in ("enqueue", "delay") if i % 2 else ("delay", "enqueue"):
                start = time.perf_counter()
                calls[name]()
                samples[name].append((time.perf_counter() - start) * 1000)
    finally:
        app.close()
    return samples["enqueue"], samples["delay"]


def get_latency(dsn: str, n: int) -> list[float]:
    """Milliseconds from a task's end to get() returning its result, idle worker."""
    from benchmarks.bench_app import app

    app.use_dsn(dsn)
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        worker = start_worker(dsn)
        try:
            wait_until(conn, "SELECT count(*) > 0 FROM pgsched.workers", 30)
            app.tasks["finished_at"].delay().get(timeout=30)  # warm the pool and the worker
            for _ in range(n):
                ended = app.tasks["finished_at"].delay().get(timeout=30)
                samples.append((time.time() - ended) * 1000)
        finally:
            stop_worker(worker)
            app.close()
    return samples


DRAIN = """
import json, sys
from benchmarks._server import fresh_database
from benchmarks.throughput import drain
with fresh_database(sys.argv[1]) as dsn:
    print(json.dumps(drain(dsn, int(sys.argv[2]))))
"""


def drain_in(tree: Path, python: str, server: str, n: int) -> float:
    """runs/s of benchmarks.throughput's drain, run by ``tree``'s code on its own schema."""
    done = subprocess.run(
        [python, "-c", DRAIN, server, str(n)], cwd=tree, capture_output=True, text=True, timeout=900, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=2_000, help="calls of each for (a)")
    parser.add_argument("--reps", type=int, default=5, help="drains of each tree for (c)")
    parser.add_argument("--runs", type=int, default=20_000, help="runs per drain for (c)")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--before-tree", type=Path, help="a checkout of the release before, for (c)")
    parser.add_argument("--before-python", help="the python of a venv with that release installed")
    parser.add_argument("--dsn", help="a server to create the benchmark databases on (default: an embedded one)")
    args = parser.parse_args()

    figures: dict[str, Any] = {}
    with server_dsn(args.dsn) as server:
        with fresh_database(server) as dsn:
            enqueue_ms, delay_ms = single_latencies(dsn, args.single)
        figures["enqueue_per_s"] = 1000 / statistics.median(enqueue_ms)
        figures["delay_per_s"] = 1000 / statistics.median(delay_ms)
        figures["delay_vs_enqueue"] = figures["delay_per_s"] / figures["enqueue_per_s"]
        print(
            f"(a) enqueue {figures['enqueue_per_s']:,.0f}/s, delay {figures['delay_per_s']:,.0f}/s: "
            f"{figures['delay_vs_enqueue']:.2f}x (from the median call of {args.single} each, alternating)"
        )

        with fresh_database(server) as dsn:
            samples = get_latency(dsn, args.latency_samples)
        figures["get_after_end_ms_p50"] = percentile(samples, 50)
        figures["get_after_end_ms_p99"] = percentile(samples, 99)
        print(
            f"(b) get() after the task ended: p50 {figures['get_after_end_ms_p50']:.2f} ms, "
            f"p99 {figures['get_after_end_ms_p99']:.2f} ms ({len(samples)} samples)"
        )

        if args.before_tree and args.before_python:
            before, after = [], []
            for _ in range(args.reps):
                before.append(drain_in(args.before_tree, args.before_python, server, args.runs))
                after.append(drain_in(ROOT, sys.executable, server, args.runs))
            figures["drain_before_per_s"] = before
            figures["drain_after_per_s"] = after
            figures["drain_after_vs_before"] = statistics.median(after) / statistics.median(before)
            print(
                f"(c) drain before {statistics.median(before):,.0f}/s ({min(before):,.0f}-{max(before):,.0f}), "
                f"after {statistics.median(after):,.0f}/s ({min(after):,.0f}-{max(after):,.0f}): "
                f"{figures['drain_after_vs_before']:.2f}x (medians of {args.reps}, interleaved)"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

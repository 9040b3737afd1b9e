"""The worker's Python per run, without the database: what a claimed run costs from the fetcher's
hand-over to the completer (issue 18, item 3).

    python -m benchmarks.worker_per_run [--runs 20000] [--rounds 7] [--tasks noop,noop_sync]

A :class:`pgsched.worker.Worker` (concurrency 100) is given claimed runs 100 at a time, as its
fetcher gives them (``Capacity.start``), and its event loop runs until their slots are free;
the completer is a stand-in that only counts outcomes. The figure is this process's CPU time
per run (user + system): the run's asyncio task, its context, the executor, the thread pool for
sync tasks, and the slot's release. No statement, so no other load on the machine adds its
noise through the database; the claim's and the completion's costs per statement are
benchmarks.statement_costs' measure. ``task per run`` is the same loop with a bare
``loop.create_task`` of an empty coroutine per run: the share of the asyncio task alone (a
Task's creation, its registration in asyncio's WeakSet, its first step through call_soon).
Medians and ranges over rounds; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from benchmarks.bench_app import app
from pgsched.run_types import ClaimedRun, Outcome
from pgsched.worker import Worker, WorkerOptions

BATCH = 100


class CountingCompleter:
    """Takes outcomes as the completer does, and writes nothing."""

    unwritten = 0

    def __init__(self) -> None:
        self.outcomes = 0

    def add(self, outcome: Outcome) -> None:
        self.outcomes += 1


async def worker_rounds(task: str, runs: int, rounds: int) -> list[float]:
    worker = Worker(app, WorkerOptions(concurrency=BATCH))
    worker.worker_id = 1
    completer = CountingCompleter()
    worker._completer = completer  # type: ignore[assignment]  # the stand-in: no database
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        for first in range(0, runs, BATCH):
            for run_id in range(first, first + BATCH):
                worker._start(ClaimedRun(run_id, task, {}, 1, 3))
            # A yield per loop turn, as the fetcher's after a claim: an Event would add its own
            # callback to what is measured.
            while worker._state.executing:  # noqa: ASYNC110
                await asyncio.sleep(0)
        figures.append((time.process_time() - started) / runs * 1e6)
    worker._threads.shutdown()
    assert completer.outcomes == runs * rounds, f"{completer.outcomes} outcomes for {runs * rounds} runs"
    return figures


async def empty() -> None:
    return None


async def task_rounds(runs: int, rounds: int) -> list[float]:
    loop = asyncio.get_running_loop()
    figures = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(0, runs, BATCH):
            tasks = [loop.create_task(empty()) for _ in range(BATCH)]
            while not tasks[-1].done():  # noqa: ASYNC110 -- as above
                await asyncio.sleep(0)
        figures.append((time.process_time() - started) / runs * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--tasks", default="noop,noop_sync", help="bench_app tasks, comma-separated")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for task in args.tasks.split(","):
        results[task] = asyncio.run(worker_rounds(task, args.runs, args.rounds))
    results["task per run"] = asyncio.run(task_rounds(args.runs, args.rounds))
    report = {
        name: {"us_per_run": round(statistics.median(f), 2), "min": round(min(f), 2), "max": round(max(f), 2)}
        for name, f in results.items()
    }
    for name, figures in report.items():
        print(f"{name:14s} {figures['us_per_run']:6.2f} µs a run ({figures['min']:.2f}-{figures['max']:.2f})")
    print(json.dumps({"benchmark": "worker_per_run", "runs": args.runs, "rounds": args.rounds, "results": report}))


if __name__ == "__main__":
    main()

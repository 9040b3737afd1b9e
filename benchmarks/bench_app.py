"""The tasks the benchmarks run: no-ops, and one that reports when it started."""

from __future__ import annotations

import time
from typing import Any

from pgsched import App

app = App()


@app.task
async def noop() -> None:
    return None


@app.task
def noop_sync() -> None:
    return None


@app.task
async def started_at() -> float:
    """Returns the wall-clock time the task began, for enqueue→start latency."""
    return time.time()


@app.task
async def finished_at() -> float:
    """Returns the wall-clock time the task ended, for end→get() latency."""
    return time.time()


@app.task
async def collect(values: list[Any]) -> int:
    """A chord's callback: how many results it got (benchmarks/workflows.py)."""
    return len(values)

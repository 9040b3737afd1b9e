"""tests/process_app.py's App plus tasks that declare flow-control options (issue #14): a
worker of this app writes their rates to pgsched.task_settings when it starts, so only the
tests that start it (tests/test_rate_limits.py) have those limits."""

from __future__ import annotations

import asyncio

from tests.process_app import _record, app

__all__ = ["app"]


@app.task(rate_limit="4/s")
async def rated(key: str) -> str:
    """A task whose rate the code declares, Celery style (global here, not per worker)."""
    await _record(key, "run")
    return key


@app.task(concurrency_key="customer:{customer}")
async def per_customer(key: str, customer: int, seconds: float = 0.05) -> str:
    """Records its start and end; its runs of one customer share a concurrency key."""
    await _record(key, "start")
    await asyncio.sleep(seconds)
    await _record(key, "end")
    return key

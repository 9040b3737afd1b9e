"""The App the PgBouncer tests (tests/test_pgbouncer.py) run in real worker processes.

Its tasks record each execution into the test's side table ``executions`` through the app's
own pool, as the task of a real app would: over ``$PGSCHED_DSN`` (PgBouncer, in these tests),
with the pooler settings the worker itself reads (``PGSCHED_PGBOUNCER``,
``PGSCHED_DIRECT_DSN``). The test creates the table:

    CREATE TABLE executions (key text, event text, pid int, at timestamptz DEFAULT clock_timestamp())
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal

from pgsched import App

app = App()

# The tests send SIGUSR1 to a worker that misses a deadline, to see where its threads are.
faulthandler.register(signal.SIGUSR1, all_threads=True)

_INSERT = "INSERT INTO executions (key, event, pid) VALUES (%s, %s, %s)"


async def _record(key: str, event: str) -> None:
    async with (await app.async_pool()).connection() as conn:
        await conn.execute(_INSERT, (key, event, os.getpid()))


@app.task
async def record(key: str) -> str:
    """Records that it ran."""
    await _record(key, "run")
    return key


@app.task
async def slow(key: str, seconds: float) -> str:
    """Records its start, sleeps ``seconds``, records its end (a cancel stops it in between)."""
    await _record(key, "start")
    await asyncio.sleep(seconds)
    await _record(key, "end")
    return key

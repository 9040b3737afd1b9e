"""The task of the flow-control benchmark (benchmarks/limits.py): sleeps, and records its start
and end in the side table ``spans`` (the benchmark creates it) through one connection per
worker process, so overlaps of [start, end] count real executions."""

from __future__ import annotations

import asyncio
import os

import psycopg

from pgsched import App

app = App()

_conn: psycopg.AsyncConnection | None = None
_lock = asyncio.Lock()  # binds to the worker's loop on first use
CREATE_SPANS = (
    "CREATE TABLE spans (n int NOT NULL, event text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


async def _record(n: int, event: str) -> None:
    global _conn
    async with _lock:
        if _conn is None:
            # The measuring instrument, not the system measured: without a flush per record. With
            # one, each task waited for two serialised flushes of its worker's connection, outside
            # its recorded span, and (b)'s mean counted them as idle slots.
            _conn = await psycopg.AsyncConnection.connect(
                os.environ["PGSCHED_DSN"], autocommit=True, options="-c synchronous_commit=off"
            )
        await _conn.execute("INSERT INTO spans (n, event) VALUES (%s, %s)", (n, event))


@app.task
async def span(n: int, ms: float) -> None:
    """Records its start, sleeps ``ms``, records its end (before its run completes)."""
    await _record(n, "start")
    await asyncio.sleep(ms / 1000)
    await _record(n, "end")


@app.task
async def noop() -> None:
    return None

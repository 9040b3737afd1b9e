"""The task of the flow-control benchmark (benchmarks/limits.py): sleeps, and records its start
and end in the side table ``spans`` (the benchmark creates it) through one connection per
worker process, so overlaps of [start, end] count real executions.

Two instruments. ``span`` inserts each record as it happens (the instant is the server's
clock_timestamp() when the INSERT runs): two round trips per run on the task's path, through
one connection per process shared under a lock, which at load 5 on 2 cores took 3-7 ms before
the start and 2-5 ms after the sleep, all of it inside the slot's cycle. ``span_clock`` takes
the instant from the same clock in the task (time.time(): PostgreSQL's clock_timestamp() reads
the same system clock on this machine) and leaves the INSERT to a writer off the task's path,
so a span is the task's execution and nothing of the instrument's."""

from __future__ import annotations

import asyncio
import os
import time

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


_pending: list[tuple[int, str, float]] = []
_writer: asyncio.Task[None] | None = None


async def _write_pending() -> None:
    """Write what is pending, in batches, until nothing is (one writer at a time)."""
    global _conn, _writer
    try:
        while _pending:
            batch = _pending[:]
            del _pending[:]
            if _conn is None:
                _conn = await psycopg.AsyncConnection.connect(
                    os.environ["PGSCHED_DSN"], autocommit=True, options="-c synchronous_commit=off"
                )
            await _conn.execute(
                "INSERT INTO spans (n, event, at) SELECT n, event, to_timestamp(at_s)"
                " FROM unnest(%s::int[], %s::text[], %s::float8[]) AS r(n, event, at_s)",
                ([r[0] for r in batch], [r[1] for r in batch], [r[2] for r in batch]),
            )
    finally:
        _writer = None


def _note(n: int, event: str) -> None:
    global _writer
    _pending.append((n, event, time.time()))
    if _writer is None:
        _writer = asyncio.get_running_loop().create_task(_write_pending())


@app.task
async def span_clock(n: int, ms: float) -> None:
    """``span`` with its instants taken in the task and written off its path."""
    _note(n, "start")
    await asyncio.sleep(ms / 1000)
    _note(n, "end")


@app.task
async def noop() -> None:
    return None

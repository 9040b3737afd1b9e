"""POST /runs' inserts, several requests to one statement: the runs that requests queue while a
statement is running go in together in the next one (``run_insert_returning_many``).

A statement through psycopg's asyncio pool costs the API process ~0.3 ms of Python on the
2-core benchmark machine (checkout, the statement's adaptation, waiting, the row's loading),
more than the target for a whole POST. Under load that cost is shared by every run of a
statement; a lone request goes out at once, as before (no timer, no added wait).

Each run keeps its own parameters (its options, tenant, request id and trace context), and gets
back its own row. A statement the database refuses (a quota, a constraint) wrote nothing, so
its runs are then inserted one by one and each request gets its own answer, as it would have
alone. Any other failure (the connection lost mid-statement, no connection in time) is every
one of its requests' error, as it would be for each alone.
"""

from __future__ import annotations

import asyncio
import operator
from datetime import datetime
from typing import Any, Iterable

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgsched.app import _REJECTED, _rejection
from pgsched.sql import queries, text_array

# Statements at once: each holds a pool connection. Past it, requests wait for the next statement.
# 2 rather than 4 once the statement is prepared (shorter, so smaller batches): wrk with 16
# connections, 5 alternating rounds, API CPU per POST 0.298 -> 0.268 ms (median; 0.90x) and
# 1,270 -> 1,577 POSTs/s; a second statement still goes out while one waits on a lock or a flush.
MAX_FLIGHTS = 2
MAX_ROWS = 100  # a statement's runs; more wait for the next
_NUMBERS = ("priority", "delay", "max_attempts", "expires_in")
_TEXTS = ("task", "args", "queue", "tenant", "trace_context", "request_id", "concurrency_key")
_INSTANTS = ("run_at", "expires_at")
_COLUMNS = (*_TEXTS, *_NUMBERS, *_INSTANTS)
_columns_of = operator.itemgetter(*_COLUMNS)

Params = dict[str, Any]
Pending = tuple[Params, "asyncio.Future[dict[str, Any]]"]


class InsertBatcher:
    """Inserts runs (``run_insert_returning``'s parameters) and returns their rows, sharing a
    statement among the requests that wait at the same time."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._pending: list[Pending] = []
        self._flights = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def insert(self, params: Params) -> dict[str, Any]:
        """The new run's row (every column run_get reads)."""
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending.append((params, done))
        if self._flights < MAX_FLIGHTS:
            self._flights += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._tasks.add(task)  # a reference, so the task is not collected while it runs
            task.add_done_callback(self._tasks.discard)
        return await done

    async def _drain(self) -> None:
        """Statements until no run waits."""
        try:
            while self._pending:
                batch = self._pending[:MAX_ROWS]
                del self._pending[:MAX_ROWS]
                await self._flush(batch)
        finally:
            self._flights -= 1

    async def _flush(self, batch: list[Pending]) -> None:
        try:
            async with self.pool.connection() as conn:
                await _answer(conn, batch)
        except Exception as exc:  # noqa: BLE001 - no connection: every request waiting gets it
            _fail(batch, exc)


async def _answer(conn: psycopg.AsyncConnection, batch: list[Pending]) -> None:
    """Insert ``batch``'s runs and answer each request with its row or its error."""
    try:
        if len(batch) == 1:
            rows = [await _insert_one(conn, batch[0][0])]
        else:
            rows = await _insert_many(conn, [params for params, _ in batch])
    except psycopg.Error as exc:
        if len(batch) > 1 and exc.sqlstate is not None:
            # Refused by the database, so nothing was written: each run alone, each its own answer.
            for pending in batch:
                await _answer(conn, [pending])
            return
        # Alone, or the connection lost mid-statement (whether it was written is unknown).
        _fail(batch, _rejection(exc) if isinstance(exc, _REJECTED) else exc)
        return
    for (_, done), row in zip(batch, rows):
        if not done.done():  # its request may have been cancelled meanwhile
            done.set_result(row)


def _fail(batch: list[Pending], exc: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)


async def _insert_one(conn: psycopg.AsyncConnection, params: Params) -> dict[str, Any]:
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["run_insert_returning"], params)
        row = await cursor.fetchone()
    assert row is not None
    return row


async def _insert_many(conn: psycopg.AsyncConnection, batch: list[Params]) -> list[dict[str, Any]]:
    """The rows in ``batch``'s order: the statement numbers the ids in the arrays' order."""
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["run_insert_returning_many"], _arrays(batch))
        rows = await cursor.fetchall()
    return sorted(rows, key=lambda row: row["id"])


def _arrays(batch: list[Params]) -> dict[str, str]:
    """run_insert_returning_many's parameters: a column's values as one array literal. Read
    column by column, with a column of NULLs (most optional ones) written at once: 28 -> 14 us
    for 3 runs, against a generator per column and run."""
    arrays: dict[str, str] = {}
    for name, column in zip(_COLUMNS, zip(*map(_columns_of, batch))):
        if column.count(None) == len(column):
            arrays[name] = "{" + ",".join(["NULL"] * len(column)) + "}"
        elif name in _NUMBERS:
            arrays[name] = _number_array(column)
        elif name in _INSTANTS:
            arrays[name] = text_array(map(_instant, column))
        else:
            arrays[name] = text_array(column)
    return arrays


def _number_array(values: Iterable[int | float | None]) -> str:
    return "{" + ",".join("NULL" if value is None else repr(value) for value in values) + "}"


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()

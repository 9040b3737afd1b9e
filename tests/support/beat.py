"""The beat's rounds driven by a test: one round per simulated instant (the clock injected as
``now``, so no test sleeps for a schedule), a job's row to look at afterwards, and a leading
beat's lock and row held for a block."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

import psycopg
from psycopg.rows import dict_row

from pgsched.beat import fire_due_jobs
from pgsched.sql import queries
from tests.support.db import scalar

GRACE = 5.0  # the beat's default misfire grace


async def _fire_rounds(dsn: str, nows: list[datetime], grace: float) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
        return [await fire_due_jobs(aconn, misfire_grace_s=grace, now=now) for now in nows]


def fire(dsn: str, now: datetime, grace: float = GRACE) -> int:
    """One beat round at the simulated time ``now``; the number of runs it created."""
    return asyncio.run(_fire_rounds(dsn, [now], grace))[0]


def fire_each(dsn: str, nows: list[datetime], grace: float = GRACE) -> list[int]:
    """One beat round per simulated time, on one connection."""
    return asyncio.run(_fire_rounds(dsn, nows, grace))


def job_row(conn: psycopg.Connection[Any], name: str, columns: str = "*") -> dict[str, Any]:
    """The job named ``name``: every column, or those listed (a row whose instants no datetime
    can hold is read through its other columns)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {columns} FROM pgsched.jobs WHERE name = %s".encode(), (name,)).fetchone()
    assert row is not None, f"no job {name}"
    return row


@contextmanager
def a_beat_leading(dsn: str) -> Iterator[None]:
    """A beat's leader row and lock, as a leading beat holds them, for the ``with`` block."""
    with psycopg.connect(dsn, autocommit=True) as lock_holder:
        assert scalar(lock_holder, queries["leader_try_lock"])
        lock_holder.execute(queries["leader_record"], {"host": "beat-host", "pid": 4242})
        yield

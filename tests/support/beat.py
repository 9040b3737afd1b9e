"""The beat's rounds driven by a test: one round per simulated instant (the clock injected as
``now``, so no test sleeps for a schedule), and a job's row to look at afterwards."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.beat import fire_due_jobs

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

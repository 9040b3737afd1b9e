"""Helpers of the tests of runs_history (schemas 0029, 0030 and after): where a run is, runs
written as they were before the move, a round of the leader's movers, and an installation
without day partitions. Shared by the history, move, unique-key and moved-parent tests."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from pgsched.maintenance import HistoryMover, move_workflow_steps
from tests.support.db import insert_restored


def where(conn: psycopg.Connection[Any], run_id: int) -> list[str]:
    """The tables that hold a run: exactly one, unless it is lost or doubled."""
    rows = conn.execute(
        "SELECT 'runs' FROM pgsched.runs WHERE id = %(id)s"
        " UNION ALL SELECT 'history' FROM pgsched.runs_history WHERE id = %(id)s",
        {"id": run_id},
    )
    return [row[0] for row in rows]


def ended_before_0030(conn: psycopg.Connection[Any], n: int, **columns: str) -> list[int]:
    """n succeeded runs written straight into runs, as runs that ended before schema 0030 are;
    ``columns``: more columns and their SQL values."""
    names = "".join(f", {name}" for name in columns)
    values = "".join(f", {value}" for value in columns.values())
    cursor = insert_restored(
        conn,
        f"INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, result{names})"
        f" SELECT 't', 'succeeded', 1, now(), now(), 'null'{values}"
        " FROM generate_series(1, %s) RETURNING id".encode(),
        [n],
    )
    return [row[0] for row in cursor.fetchall()]


def move_round(dsn: str, mover: HistoryMover, **kwargs: Any) -> int:
    """One round of the leader's mover, on a connection of its own (autocommit, as the leader's)."""

    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await mover.round(own, **kwargs)

    return asyncio.run(main())


def move_steps(dsn: str, **kwargs: Any) -> int:
    """One round of the leader's move of succeeded workflows' steps, on a connection of its own."""

    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await move_workflow_steps(own, **kwargs)

    return asyncio.run(main())


def partitions(conn: psycopg.Connection[Any]) -> list[str]:
    """runs_history's day partitions, oldest first."""
    return [row[0] for row in conn.execute("SELECT name FROM pgsched.history_partitions()")]


def drop_day_partitions(conn: psycopg.Connection[Any]) -> None:
    """Every day partition dropped, as on an installation whose leader was down for days."""
    for name in partitions(conn):
        conn.execute("SELECT pgsched.history_partition_drop(%s, 'infinity')", [name])
    assert partitions(conn) == []

"""The fast POST /runs' inserts (pgsched.api.batching): requests waiting together share one
statement, each gets its own row back, and a run the database refuses fails only its own request."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pgsched.api import batching
from pgsched.api.app import ENQUEUE_CONNECTION
from pgsched.api.batching import InsertBatcher
from pgsched.app import App
from pgsched.enqueue import _insert_params
from pgsched.errors import InvalidInput
from pgsched.tracing import continued

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def params_of(app: App, index: int, **options: Any) -> dict[str, Any]:
    """run_insert_returning's parameters of run ``index``, each run with options of its own."""
    args = {"i": index, "text": 'a "quoted" \\ value, é'}
    with continued(f"req-{index}", TRACEPARENT if index % 2 else None):
        chosen = app._options(
            "t",
            queue=options.get("queue", f"q{index % 3}"),
            priority=index,
            max_attempts=1 + index % 4,
            run_at=options.get("run_at"),
            delay=options.get("delay"),
            tenant="acme" if index % 2 else None,
            concurrency_key=f"k{index}" if index % 3 == 0 else None,
            args=args,
        )
        return _insert_params("t", app._encode("t", args), chosen)


async def insert_all(
    dsn: str, all_params: list[dict[str, Any]], kwargs: dict[str, Any] = ENQUEUE_CONNECTION
) -> list[Any]:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, kwargs=kwargs) as pool:
        batcher = InsertBatcher(pool)
        return await asyncio.gather(*(batcher.insert(p) for p in all_params), return_exceptions=True)


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of runs of each multi-run statement."""
    sizes: list[int] = []
    insert_many = batching._insert_many

    async def counted(conn: psycopg.AsyncConnection, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        sizes.append(len(batch))
        return await insert_many(conn, batch)

    monkeypatch.setattr(batching, "_insert_many", counted)
    return sizes


def test_requests_waiting_together_share_a_statement_and_each_gets_its_own_run(
    dsn: str, conn: psycopg.Connection, statements: list[int]
):
    app = App(dsn)
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    all_params = [
        params_of(app, i, run_at=due if i % 5 == 0 else None, delay=30 if i % 7 == 0 else None) for i in range(40)
    ]
    rows = asyncio.run(insert_all(dsn, all_params))
    assert statements and max(statements) > 1, "no statement carried more than one run"
    assert sum(statements) <= 40
    for index, row in enumerate(rows):
        assert isinstance(row, dict), row
        wanted = all_params[index]
        assert row["args"] == {"i": index, "text": 'a "quoted" \\ value, é'}
        assert (row["queue"], row["priority"], row["max_attempts"]) == (f"q{index % 3}", index, 1 + index % 4)
        assert (row["tenant"], row["request_id"], row["trace_context"]) == (
            wanted["tenant"],
            f"req-{index}",
            wanted["trace_context"],
        )
        assert row["concurrency_key"] == wanted["concurrency_key"]
        if index % 5 == 0:
            assert row["run_at"] == due + timedelta(seconds=30 if index % 7 == 0 else 0)
        stored = conn.execute("SELECT args, request_id FROM pgsched.runs_all WHERE id = %s", (row["id"],)).fetchone()
        assert stored == (row["args"], row["request_id"])
    assert len({row["id"] for row in rows}) == 40


def test_a_run_the_database_refuses_fails_only_its_own_request(
    dsn: str, conn: psycopg.Connection, statements: list[int]
):
    app = App(dsn)
    all_params = [params_of(app, i) for i in range(12)]
    all_params[5] = {**all_params[5], "queue": "not a valid queue"}  # past the library's check: the table's
    outcomes = asyncio.run(insert_all(dsn, all_params))
    assert isinstance(outcomes[5], InvalidInput), outcomes[5]
    assert "the database rejected the run" in str(outcomes[5])
    assert all(isinstance(row, dict) for index, row in enumerate(outcomes) if index != 5), outcomes
    assert conn.execute("SELECT count(*) FROM pgsched.runs_all").fetchone() == (11,)


def test_a_lone_request_goes_out_alone(dsn: str, statements: list[int]):
    app = App(dsn)
    (row,) = asyncio.run(insert_all(dsn, [params_of(app, 1)]))
    assert isinstance(row, dict) and row["request_id"] == "req-1"
    assert statements == []


def test_the_batch_statement_answers_each_request_with_its_own_row_wave_after_wave(dsn: str, statements: list[int]):
    assert ENQUEUE_CONNECTION["prepare_threshold"] is None  # never prepared: the API works through PgBouncer as is
    app = App(dsn)
    all_params = [params_of(app, i, delay=30 if i % 7 == 0 else None) for i in range(60)]

    async def in_waves() -> list[Any]:  # a statement per wave, on the pool's one connection
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs=ENQUEUE_CONNECTION) as pool:
            batcher = InsertBatcher(pool)
            return [row for wave in range(6) for row in await _wave(batcher, all_params[wave * 10 : wave * 10 + 10])]

    rows = asyncio.run(in_waves())
    assert statements == [10] * 6, "the batch statement ran once per wave"
    for index, row in enumerate(rows):
        assert isinstance(row, dict), row
        assert (row["args"]["i"], row["request_id"], row["priority"]) == (index, f"req-{index}", index)


async def _wave(batcher: InsertBatcher, wave: list[dict[str, Any]]) -> list[Any]:
    return await asyncio.gather(*(batcher.insert(p) for p in wave))

"""A ``Worker`` driven in-process: it runs as a task in the test's event loop against the
real database, is watched through its own connection, and is stopped with ``request_stop()``."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import psycopg
from psycopg.rows import dict_row

from pgsched import App
from pgsched.worker import Worker, WorkerOptions
from tests.support.waiting import wait_until_async

FINAL = ("succeeded", "failed", "cancelled")


class RunningWorker:
    """``async with RunningWorker(app, dsn, concurrency=1) as w:`` — a worker in this event loop,
    plus a connection to watch the database with."""

    def __init__(self, app: App, dsn: str, **options: Any) -> None:
        self.app = app
        self.dsn = dsn
        self.options = WorkerOptions(**{"poll_interval_s": 0.5, **options})

    async def __aenter__(self) -> RunningWorker:
        self.db = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row)
        self.worker = Worker(self.app, self.options)
        self.task = asyncio.create_task(self.worker.run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            self.worker.request_stop()
            await asyncio.wait_for(self.task, 15)
        finally:
            await self.db.close()
            await self.app.aclose()

    async def row(self, run_id: int) -> dict[str, Any]:
        cursor = await self.db.execute("SELECT *, now() AS db_now FROM pgsched.runs_all WHERE id = %s", (run_id,))
        row = await cursor.fetchone()
        assert row is not None, f"run {run_id} does not exist"
        return row

    def still_running(self) -> None:
        """Raise the worker's own exception if it died, or say that it stopped."""
        if self.task.done():
            self.task.result()
            raise AssertionError("the worker stopped")

    async def until(
        self, run_id: int, condition: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            row = await self.row(run_id)
            return row if condition(row) else None

        return await wait_until_async(check, timeout, f"run {run_id}: {what}", poll=0.02, check=self.still_running)

    async def finished(self, run_id: int, timeout: float = 10.0) -> dict[str, Any]:
        return await self.until(run_id, lambda r: r["status"] in FINAL, "a final status", timeout)


def finish(app: App, dsn: str, *run_ids: int, timeout: float = 10.0, **options: Any) -> list[dict[str, Any]]:
    """Run a worker (``options``: WorkerOptions) until each run has a final status: their rows, in order."""

    async def main() -> list[dict[str, Any]]:
        async with RunningWorker(app, dsn, **options) as w:
            return [await w.finished(run_id, timeout) for run_id in run_ids]

    return asyncio.run(main())


def run_async(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]

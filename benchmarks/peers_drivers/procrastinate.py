"""procrastinate (latest from PyPI, psycopg 3 connector): async no-op tasks, one
`procrastinate worker --concurrency 30` process per worker (the figure its concurrency
how-to uses for asynchronous I/O-bound tasks; its default is 1)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from benchmarks.peers_drivers import _client, _probe

PACKAGE = "procrastinate"
REQUIREMENTS = ["procrastinate", "psycopg[binary]"]
STORE = "postgres"
CONCURRENCY = int(os.environ.get("PEERS_PROCRASTINATE_CONCURRENCY", "30"))
CONFIG = (
    f"PsycopgConnector; `procrastinate worker --concurrency {CONCURRENCY}` (the docs' async figure), "
    "other options default; batch_defer_async (batch) / defer_async (single)"
)
PENDING_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
RESET_SQL = "TRUNCATE procrastinate_jobs CASCADE"


def make_app(dsn: str) -> Any:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    @app.task(name="noop")
    async def noop() -> None:
        _probe.mark()

    @app.task(name="stamp")
    async def stamp() -> None:
        _probe.stamp()

    return app


def __getattr__(name: str) -> Any:
    """``--app benchmarks.peers_drivers.procrastinate.app``: built on first access, so the
    orchestrator can import this module without procrastinate installed."""
    if name == "app":
        app = make_app(os.environ["PEERS_DSN"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


def worker_argv(python: str, index: int, dsn: str) -> list[str]:
    return [
        python,
        "-m",
        "procrastinate",
        "--app",
        "benchmarks.peers_drivers.procrastinate.app",
        "worker",
        "--concurrency",
        str(CONCURRENCY),
        "--name",
        f"bench-{index}",
    ]


class Client:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def hello(self) -> dict:
        return {"version": _client.package_version(PACKAGE), "psycopg": _client.package_version("psycopg")}

    async def setup(self) -> None:
        self.app = make_app(self.dsn)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()
        self.noop = self.app.tasks["noop"]
        self.stamp = self.app.tasks["stamp"]
        await self.noop.defer_async()  # warm the pool outside any timing
        await self.reset()

    async def reset(self) -> None:
        await self.app.connector.execute_query_async(RESET_SQL)

    async def bulk(self, n: int) -> dict:
        start = time.perf_counter()
        await self.noop.batch_defer_async(*([{}] * n))
        return _client.timed_rate(n, time.perf_counter() - start)

    async def single(self, n: int) -> dict:
        start = time.perf_counter()
        for _ in range(n):
            await self.noop.defer_async()
        return _client.timed_rate(n, time.perf_counter() - start)

    async def prefill(self, n: int) -> None:
        await self.noop.batch_defer_async(*([{}] * n))

    async def pending(self) -> int:
        row = await self.app.connector.execute_query_one_async(PENDING_SQL.replace("count(*)", "count(*) AS n"))
        return row["n"]

    async def latency(self, n: int, socket_path: str) -> dict:
        async def idle() -> bool:
            return await self.pending() == 0

        return await _client.measure_latency(self.stamp.defer_async, idle, n, socket_path)

    async def close(self) -> None:
        if hasattr(self, "app"):
            await self.app.close_async()


if __name__ == "__main__" and sys.argv[1:] == ["client"]:
    _client.serve(Client(os.environ["PEERS_DSN"]))

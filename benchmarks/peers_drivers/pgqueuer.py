"""PgQueuer (latest from PyPI, asyncpg driver): async no-op entrypoints, one worker process
per worker as `pgq run` starts it (no concurrency cap, uvloop, one asyncpg connection), with
batch size 25: PgQueuer's performance-tuning guide says to raise the batch size (default 10)
for short-lived jobs and shows 25. Measured here: 10 drained at half the rate of 25 or 50,
and 25 and 50 were within noise of each other. PEERS_PGQUEUER_BATCH_SIZE overrides it.

The process is started as `pgqueuer.run(factory, ...)` on uvloop, which is what `pgq run`
does: PgQueuer 1.6.0's `pgq run` itself exits at once with AttributeError ('str' object has
no attribute 'name') from its --log-level option, default or given."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import AsyncIterator

from benchmarks.peers_drivers import _client, _probe

PACKAGE = "pgqueuer"
REQUIREMENTS = ["pgqueuer[asyncpg]"]
STORE = "postgres"
BATCH_SIZE = int(os.environ.get("PEERS_PGQUEUER_BATCH_SIZE", "25"))
CONFIG = (
    f"asyncpg driver; batch size {BATCH_SIZE} (its tuning guide's figure for short jobs), `pgq run`'s other "
    "defaults (no concurrency cap, uvloop), "
    "started as pgqueuer.run(factory) since 1.6.0's `pgq run` CLI crashes on its --log-level option; "
    "Queries.enqueue with lists (batch) / scalars (single)"
)
PENDING_SQL = "SELECT count(*) FROM pgqueuer WHERE status IN ('queued', 'picked')"
RESET_SQL = "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics"


@contextlib.asynccontextmanager
async def create() -> AsyncIterator[object]:
    """The factory `pgq run` loads: a PgQueuer on one asyncpg connection, as its docs advise."""
    import asyncpg
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver

    conn = await asyncpg.connect(os.environ["PEERS_DSN"])
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job: object) -> None:
        _probe.mark()

    @pgq.entrypoint("stamp")
    async def stamp(job: object) -> None:
        _probe.stamp()

    try:
        yield pgq
    finally:
        await conn.close()


def worker_argv(python: str, index: int, dsn: str) -> list[str]:
    return [python, "-m", "benchmarks.peers_drivers.pgqueuer", "worker"]


def worker() -> None:
    """What `pgq run benchmarks.peers_drivers.pgqueuer:create` does, minus its broken option parsing."""
    import asyncio
    from datetime import timedelta

    from pgqueuer import run
    from pgqueuer.core import logconfig

    logconfig.setup_fancy_logger(logconfig.LogLevel.INFO)
    coro = run(create, batch_size=BATCH_SIZE, dequeue_timeout=timedelta(seconds=30))
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


class Client:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def hello(self) -> dict:
        return {"version": _client.package_version(PACKAGE), "asyncpg": _client.package_version("asyncpg")}

    async def setup(self) -> None:
        import asyncpg
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgDriver

        self.conn = await asyncpg.connect(self.dsn)
        self.queries = Queries(AsyncpgDriver(self.conn))
        await self.queries.install()
        await self.queries.enqueue("noop", None)  # warm the connection outside any timing
        await self.reset()

    async def reset(self) -> None:
        await self.conn.execute(RESET_SQL)

    async def bulk(self, n: int) -> dict:
        start = time.perf_counter()
        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)
        return _client.timed_rate(n, time.perf_counter() - start)

    async def single(self, n: int) -> dict:
        start = time.perf_counter()
        for _ in range(n):
            await self.queries.enqueue("noop", None)
        return _client.timed_rate(n, time.perf_counter() - start)

    async def prefill(self, n: int) -> None:
        await self.queries.enqueue(["noop"] * n, [None] * n, [0] * n)

    async def pending(self) -> int:
        return await self.conn.fetchval(PENDING_SQL)

    async def latency(self, n: int, socket_path: str) -> dict:
        async def idle() -> bool:
            return await self.pending() == 0

        return await _client.measure_latency(lambda: self.queries.enqueue("stamp", None), idle, n, socket_path)

    async def close(self) -> None:
        if hasattr(self, "conn"):
            await self.conn.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["client"]:
        _client.serve(Client(os.environ["PEERS_DSN"]))
    elif sys.argv[1:] == ["worker"]:
        worker()

"""pgsched, from this work tree (the venv running the benchmark): async no-op tasks, one
`pgsched worker` process per worker at its default settings (concurrency 100).
PEERS_PGSCHED_SYNC=1 makes the no-op a plain `def` (run in the worker's thread pool);
PEERS_PGSCHED_WORKER_ARGS adds options to `pgsched worker` (e.g. "--log-level warning")."""

from __future__ import annotations

import os
import shlex
import sys
import time

from benchmarks.peers_drivers import _client, _probe
from pgsched import App

PACKAGE = "pgsched"
REQUIREMENTS = None  # the benchmark's own venv: the pgsched of this work tree
STORE = "postgres"
SYNC = os.environ.get("PEERS_PGSCHED_SYNC") == "1"
NOOP = "noop_sync" if SYNC else "noop"
WORKER_ARGS = shlex.split(os.environ.get("PEERS_PGSCHED_WORKER_ARGS", ""))
CONFIG = (
    f"{'sync (thread pool)' if SYNC else 'async'} no-op tasks; `pgsched worker` "
    + (f"{' '.join(WORKER_ARGS)} (otherwise defaults)" if WORKER_ARGS else "defaults (concurrency 100)")
    + "; App.enqueue_many (COPY, batch) / App.enqueue (single)"
)
PENDING_SQL = "SELECT count(*) FROM pgsched.runs WHERE status IN ('queued', 'running')"
RESET_SQL = "TRUNCATE pgsched.runs"

app = App()


@app.task
async def noop() -> None:
    _probe.mark()


@app.task
def noop_sync() -> None:
    _probe.mark()


@app.task
async def stamp() -> None:
    _probe.stamp()


def worker_argv(python: str, index: int, dsn: str) -> list[str]:
    return [
        python,
        "-m",
        "pgsched.cli.main",
        "worker",
        "--app",
        "benchmarks.peers_drivers.pgsched:app",
        "--dsn",
        dsn,
        *WORKER_ARGS,
    ]


class Client:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.app = App(dsn)
        self.app.tasks.update(app.tasks)  # same names and signatures: args are checked as usual

    def hello(self) -> dict:
        return {"version": _client.package_version(PACKAGE)}

    def setup(self) -> None:
        import psycopg

        from pgsched.migrate import migrate

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            migrate(conn)
        self.app.enqueue("noop", {})  # open the pool outside any timing
        self.reset()

    def reset(self) -> None:
        with self.app.pool.connection() as conn:
            conn.execute(RESET_SQL)

    def bulk(self, n: int) -> dict:
        start = time.perf_counter()
        self.app.enqueue_many(NOOP, [{}] * n)
        return _client.timed_rate(n, time.perf_counter() - start)

    def single(self, n: int) -> dict:
        start = time.perf_counter()
        for _ in range(n):
            self.app.enqueue(NOOP, {})
        return _client.timed_rate(n, time.perf_counter() - start)

    def prefill(self, n: int) -> None:
        self.app.enqueue_many(NOOP, [{}] * n)

    def pending(self) -> int:
        with self.app.pool.connection() as conn:
            return conn.execute(PENDING_SQL).fetchone()[0]  # type: ignore[index]

    async def latency(self, n: int, socket_path: str) -> dict:
        return await _client.measure_latency(
            lambda: self.app.enqueue("stamp", {}), lambda: self.pending() == 0, n, socket_path
        )

    def close(self) -> None:
        self.app.close()


if __name__ == "__main__" and sys.argv[1:] == ["client"]:
    _client.serve(Client(os.environ["PEERS_DSN"]))

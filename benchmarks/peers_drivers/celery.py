"""Celery (latest from PyPI) with the Redis broker, results ignored: no-op tasks, one
`celery worker` process per worker.

Pool: threads, 100 of them (pgsched's default concurrency; the thread pool is the one issue 6's
reference Celery figures used). Celery's concurrency docs point I/O-bound work at gevent or
eventlet (`celery worker -P gevent -c 1000`): PEERS_CELERY_POOL=gevent selects that (and
PEERS_CELERY_CONCURRENCY overrides the count). On the 2-core machine this was written on,
gevent -c 1000 drained slower with one process (244 vs 332 runs/s) and about the same with two
(276 vs 263), so the default is the faster of the two."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from benchmarks.peers_drivers import _client, _probe

PACKAGE = "celery"
REQUIREMENTS = ["celery[redis]", "gevent"]
STORE = "redis"
POOL = os.environ.get("PEERS_CELERY_POOL", "threads")
CONCURRENCY = int(os.environ.get("PEERS_CELERY_CONCURRENCY", "1000" if POOL in ("gevent", "eventlet") else "100"))
CONFIG = (
    f"Redis broker, task_ignore_result=True, other settings default; `celery worker -P {POOL} -c {CONCURRENCY}`; "
    "batch: apply_async in a loop on one acquired producer (Celery has no bulk publish; its group() is "
    "measured too, as enqueue_bulk_group_per_s) / single: Task.delay()"
)
PENDING_SQL = None  # no completion record: the probe counts executed runs


def make_app(broker: str) -> Any:
    from celery import Celery

    app = Celery("peers", broker=broker)
    app.conf.update(task_ignore_result=True, result_backend=None, broker_connection_retry_on_startup=True)

    @app.task(name="noop")
    def noop() -> None:
        _probe.mark()

    @app.task(name="stamp")
    def stamp() -> None:
        _probe.stamp()

    return app


def __getattr__(name: str) -> Any:
    """``celery -A benchmarks.peers_drivers.celery:app``: built on first access, so the
    orchestrator can import this module without Celery installed."""
    if name == "app":
        app = make_app(os.environ["PEERS_REDIS_URL"])
        globals()["app"] = app
        return app
    raise AttributeError(name)


def worker_argv(python: str, index: int, dsn: str) -> list[str]:
    celery = os.path.join(os.path.dirname(python), "celery")
    return [
        celery,
        "-A",
        "benchmarks.peers_drivers.celery:app",
        "worker",
        "-P",
        POOL,
        "-c",
        str(CONCURRENCY),
        "-n",
        f"bench{index}@%h",
        "-l",
        "WARNING",
    ]


class Client:
    def __init__(self, broker: str) -> None:
        self.broker = broker

    def hello(self) -> dict:
        return {
            "version": _client.package_version(PACKAGE),
            "kombu": _client.package_version("kombu"),
            "redis-py": _client.package_version("redis"),
            "gevent": _client.package_version("gevent"),
        }

    def setup(self) -> None:
        import redis

        self.redis = redis.Redis.from_url(self.broker)
        self.app = make_app(self.broker)
        self.noop = self.app.tasks["noop"]
        self.stamp = self.app.tasks["stamp"]
        self.noop.delay()  # connect outside any timing
        self.reset()

    def reset(self) -> None:
        self.redis.flushdb()

    def _publish(self, n: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.noop.apply_async(producer=producer)

    def bulk(self, n: int) -> dict:
        from celery import group

        start = time.perf_counter()
        self._publish(n)
        result = _client.timed_rate(n, time.perf_counter() - start)
        self.reset()
        start = time.perf_counter()
        group(self.noop.s() for _ in range(n)).apply_async()
        result["extra"] = {"enqueue_bulk_group_per_s": n / (time.perf_counter() - start)}
        return result

    def single(self, n: int) -> dict:
        start = time.perf_counter()
        for _ in range(n):
            self.noop.delay()
        return _client.timed_rate(n, time.perf_counter() - start)

    def prefill(self, n: int) -> None:
        self._publish(n)

    def pending(self) -> int:
        return int(self.redis.llen("celery"))

    async def latency(self, n: int, socket_path: str) -> dict:
        # No completion record to wait for: the worker acks a run before executing it, and
        # the stamp arrives when it starts; the 2 ms pause before each sample lets it finish.
        return await _client.measure_latency(self.stamp.delay, lambda: True, n, socket_path)

    def close(self) -> None:
        if hasattr(self, "app"):
            self.app.close()


if __name__ == "__main__" and sys.argv[1:] == ["client"]:
    _client.serve(Client(os.environ["PEERS_REDIS_URL"]))

"""`pgsched dev`: the quick start. Embedded PostgreSQL (unless a DSN is configured), schema
applied, and a worker hosting a beat; with the example app, a producer that keeps runs
flowing and a periodic job."""

from __future__ import annotations

import asyncio
import logging

import psycopg

from pgsched import example
from pgsched.app import App
from pgsched.beat import BeatOptions
from pgsched.migrate import migrate
from pgsched.worker import Worker, WorkerOptions

logger = logging.getLogger("pgsched.dev")


def run_dev(app: App, options: WorkerOptions, *, run_for_s: float | None = None) -> None:
    with psycopg.connect(app.dsn, autocommit=True) as conn:
        applied = migrate(conn)
        app.sync_periodic_jobs(conn)
    logger.info("schema ready (%d migrations applied now); database: %s", len(applied), app.dsn)
    asyncio.run(_work(app, options, run_for_s))


async def _work(app: App, options: WorkerOptions, run_for_s: float | None) -> None:
    worker = Worker(app, options, beat=BeatOptions())
    worker.install_signal_handlers()
    extras: list[asyncio.Task[None]] = []
    stop_demo = asyncio.Event()
    if app is example.app:
        logger.info("running the example app: enqueuing demo runs; see them with `pgsched stats --watch`")
        extras.append(asyncio.create_task(example.produce_demo_runs(stop_demo)))
    if run_for_s is not None:
        extras.append(asyncio.create_task(_stop_after(worker, run_for_s)))
    try:
        await worker.run()
    finally:
        stop_demo.set()
        for task in extras:
            task.cancel()
        await asyncio.gather(*extras, return_exceptions=True)
        await app.aclose()


async def _stop_after(worker: Worker, seconds: float) -> None:
    await asyncio.sleep(seconds)
    worker.request_stop()

"""The example app `pgsched dev` runs when no --app is given: a few tasks, and a producer
that keeps enqueuing them so runs visibly flow (watch them with `pgsched stats --watch`)."""

from __future__ import annotations

import asyncio
import logging
import random
import time

from pgsched.app import App

app = App()
logger = logging.getLogger("pgsched.example")


@app.task
async def greet(name: str) -> str:
    """An async task: waits like an HTTP call would."""
    await asyncio.sleep(random.uniform(0.01, 0.2))
    return f"hello {name}"


@app.task(max_attempts=3, retry_backoff=0.5)
def build_report(rows: int) -> dict[str, int]:
    """A sync task (runs in the worker's thread pool) that fails now and then, to show retries."""
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 0.2:
        raise RuntimeError("the report service timed out")
    return {"rows": rows, "pages": rows // 50 + 1}


@app.periodic(every=10)
async def heartbeat_report() -> dict[str, str]:
    """A periodic task: the beat fires it every 10 seconds."""
    return {"status": "ok", "at": time.strftime("%H:%M:%S")}


async def produce_demo_runs(stop: asyncio.Event, per_second: float = 5.0) -> None:
    """Enqueue example runs until ``stop`` is set."""
    names = ["ada", "grace", "linus", "barbara", "ken"]
    while not stop.is_set():
        await greet.enqueue_async(name=random.choice(names))
        if random.random() < 0.3:
            await build_report.enqueue_async(rows=random.randint(10, 1000))
        try:
            await asyncio.wait_for(stop.wait(), 1 / per_second)
        except TimeoutError:
            pass

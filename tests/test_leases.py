"""Leases are renewed, not timed: a task that runs longer than its lease while its worker
heartbeats is never rescued (no second execution), and a huge or unserialisable result ends
the run failed with the reason while the worker lives on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pgsched import App
from tests.support.db import empty_tables
from tests.support.inprocess import RunningWorker, finish
from tests.support.waiting import wait_until_async

# One database for the module, emptied before each test: a fresh clone per test costs more
# than most of these tests (conftest's ``app`` is on it too).


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


def test_a_task_longer_than_its_lease_is_never_rescued_while_its_worker_heartbeats(app: App, dsn: str) -> None:
    executions: list[int] = []

    @app.task
    async def long_import(batch: int) -> int:
        executions.append(batch)
        await asyncio.sleep(3.0)  # three leases long
        return batch

    run_id = app.enqueue("long_import", {"batch": 1})

    # lease 1 s: heartbeat every 1/3 s, lease sweep every 1/2 s in this same worker
    [row] = finish(app, dsn, run_id, lease_s=1.0, timeout=15)
    assert (row["status"], row["attempt"], row["errors"]) == ("succeeded", 1, [])
    assert executions == [1]


def test_a_result_over_1_mb_fails_the_run_with_the_reason_and_the_worker_goes_on(app: App, dsn: str) -> None:
    @app.task(max_attempts=3)
    def dump() -> str:
        return "x" * (2 * 1024 * 1024)

    @app.task
    def small() -> str:
        return "ok"

    huge, fine = app.enqueue("dump", {}), app.enqueue("small", {})

    huge_row, fine_row = finish(app, dsn, huge, fine)
    assert (huge_row["status"], huge_row["attempt"]) == ("failed", 1)  # retrying cannot shrink it
    assert huge_row["errors"][-1]["type"] == "ResultTooLarge"
    assert "the limit is 1048576" in huge_row["errors"][-1]["message"]
    assert fine_row["status"] == "succeeded"


def test_a_run_claimed_for_a_live_worker_that_never_got_it_is_rescued_when_its_lease_runs_out(
    app: App, dsn: str
) -> None:
    """A claim's answer lost with its connection, after the commit: the run is this worker's in
    the table, and nowhere in the worker. Its heartbeat extends only what the worker knows it
    holds, so the lease runs out and the sweep hands the run on (here back to the same worker)."""

    @app.task
    async def import_batch(batch: int) -> int:
        return batch

    async def main() -> dict[str, Any]:
        async with RunningWorker(app, dsn, lease_s=1.0) as w:
            await wait_until_async(
                lambda: _registered(w), 10, "the worker to register", poll=0.02, check=w.still_running
            )
            lost = await _claimed_for(w, app.enqueue("import_batch", {"batch": 7}, delay=3600))
            return await w.finished(lost, timeout=15)

    row = asyncio.run(main())
    assert (row["status"], row["attempt"]) == ("succeeded", 2)  # attempt 1 was the lost claim's


async def _registered(w: RunningWorker) -> bool:
    return w.worker.worker_id is not None


async def _claimed_for(w: RunningWorker, run_id: int) -> int:
    """The run claimed in the worker's name, as its fetcher's claim would, but never handed to it."""
    await w.db.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = %s, started_at = now(),"
        " run_at = now(), lease_expires_at = now() + interval '1 second' WHERE id = %s",
        (w.worker.worker_id, run_id),
    )
    return run_id

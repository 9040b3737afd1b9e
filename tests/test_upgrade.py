"""Upgrades of a running system: a database at the previous release's schema, a worker draining
a backlog through it, and the migration applied while it works. Nothing fails, nothing stops,
and what the migration fixes works afterwards.

The draining worker claims with the previous release's statement (tests/support/previous_release.sql):
the current claim reads columns the migrations being applied add, as a worker of the new release,
deployed after the migration, does."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType

import psycopg
import pytest

from pgsched import fetcher
from pgsched.app import App
from pgsched.errors import RunCancelled
from pgsched.maintenance import cancel_expired
from pgsched.migrate import available, migrate, pending
from pgsched.queues import list_queues
from pgsched.sql import parse_queries, queries
from tests.support.db import scalar
from tests.support.inprocess import RunningWorker
from tests.support.waiting import wait_until_async

BACKLOG = 3000
PREVIOUS_STATEMENTS = parse_queries((Path(__file__).parent / "support" / "previous_release.sql").read_text())


def release_before(version: str) -> str:
    """The schema version a release before ``version`` ran on."""
    versions = [m.version for m in available()]
    return versions[versions.index(version) - 1]


@pytest.fixture
def previous_release_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in this test claim as the previous release did."""
    monkeypatch.setattr(fetcher, "queries", MappingProxyType({**queries, **PREVIOUS_STATEMENTS}))


def drain_through_the_upgrade(dsn: str, conn: psycopg.Connection) -> list[str]:
    """Queue a backlog, start a worker on it, apply every pending migration while it drains, and
    wait until the whole backlog succeeded: the versions applied."""
    app = App(dsn)

    @app.task()
    async def noop() -> None:
        await asyncio.sleep(0)

    app.enqueue_many("noop", [{}] * BACKLOG)

    def succeeded() -> int:
        return int(scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE status = 'succeeded'"))

    async def drain() -> list[str]:
        async with RunningWorker(app, dsn, concurrency=20) as w:

            async def started() -> bool:
                w.still_running()
                return succeeded() > 0

            await wait_until_async(started, 20, "the worker to drain its first runs")
            # The migration runs in another thread, on its own connection, while the worker claims.
            applied: list[str] = []

            def upgrade() -> None:
                with psycopg.connect(dsn, autocommit=True) as migrator:
                    applied.extend(m.version for m in migrate(migrator))

            upgrading = threading.Thread(target=upgrade)
            upgrading.start()
            await asyncio.to_thread(upgrading.join, 30)

            async def drained() -> bool:
                w.still_running()
                return succeeded() == BACKLOG

            await wait_until_async(drained, 60, f"all {BACKLOG} runs to succeed")
            return applied

    try:
        return asyncio.run(drain())
    finally:
        app.close()


def test_a_worker_drains_through_the_upgrade_from_0007_and_the_queue_figures_read_an_infinite_run_at(
    empty_dsn: str, previous_release_claims: None
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to="0007")
        expected = [m.version for m in pending(conn)]
        assert expected[0] == "0008"
        assert drain_through_the_upgrade(empty_dsn, conn) == expected
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE status <> 'succeeded'") == 0
        # What 0008 fixes: a run due since -infinity (a plain INSERT can write one) no longer
        # makes the queue figures fail.
        conn.execute("INSERT INTO pgsched.runs (task, queue, run_at) VALUES ('t', 'ancient', '-infinity')")
        ancient = next(row for row in list_queues(conn) if row["queue"] == "ancient")
        assert ancient["due"] == 1 and ancient["oldest_queued_age_s"] > 60 * 365 * 24 * 3600


def test_a_worker_drains_through_the_upgrade_to_0011_and_then_runs_expire_and_waiters_are_woken(
    empty_dsn: str, previous_release_claims: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to=release_before("0011"))
        assert [m.version for m in pending(conn)] == ["0011"]
        assert drain_through_the_upgrade(empty_dsn, conn) == ["0011"]
        monkeypatch.undo()  # from here on, the new release

        app = App(empty_dsn)

        @app.task
        async def square(x: int) -> int:
            return x * x

        expiring = square.apply_async((2,), expires=60)
        asyncio.run(cancel_expired_later(empty_dsn, minutes=2))
        with pytest.raises(RunCancelled) as cancelled:
            expiring.get(timeout=5)
        assert cancelled.value.reason == "expired"

        async def wait_on_a_run() -> int:
            async with RunningWorker(app, empty_dsn):
                result: int = await square.delay(7).wait(timeout=10)
                return result

        assert asyncio.run(wait_on_a_run()) == 49
        app.close()


async def cancel_expired_later(dsn: str, *, minutes: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await cancel_expired(conn, now=datetime.now(timezone.utc) + timedelta(minutes=minutes))

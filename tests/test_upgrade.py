"""Upgrades of a running system: a database at the previous release's schema, a worker draining
a backlog through it, and the migration applied while it works. Nothing fails, nothing stops,
and what the migration fixes works afterwards."""

from __future__ import annotations

import asyncio
import threading

import psycopg

from pgsched.app import App
from pgsched.migrate import available, migrate, pending
from pgsched.queues import list_queues
from tests.support.db import scalar
from tests.support.inprocess import RunningWorker
from tests.support.waiting import wait_until_async

PREVIOUS_RELEASE = "0007"
BACKLOG = 3000


def test_a_worker_drains_through_the_upgrade_from_0007_and_the_queue_figures_read_an_infinite_run_at(
    empty_dsn: str,
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to=PREVIOUS_RELEASE)
        # 0008 and every later migration (0010's dashboard tables and index too) apply under load.
        later = [m.version for m in available() if m.version > PREVIOUS_RELEASE]
        assert [m.version for m in pending(conn)] == later and later[0] == "0008"
        app = App(empty_dsn)

        @app.task()
        async def noop() -> None:
            await asyncio.sleep(0)

        app.enqueue_many("noop", [{}] * BACKLOG)

        def succeeded() -> int:
            return int(scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE status = 'succeeded'"))

        async def drain_through_the_migration() -> list[str]:
            async with RunningWorker(app, empty_dsn, concurrency=20) as w:

                async def started() -> bool:
                    w.still_running()
                    return succeeded() > 0

                await wait_until_async(started, 20, "the worker to drain its first runs")
                # The migration runs in another thread, on its own connection, while the worker claims.
                applied: list[str] = []

                def upgrade() -> None:
                    with psycopg.connect(empty_dsn, autocommit=True) as migrator:
                        applied.extend(m.version for m in migrate(migrator))

                upgrading = threading.Thread(target=upgrade)
                upgrading.start()
                await asyncio.to_thread(upgrading.join, 30)

                async def drained() -> bool:
                    w.still_running()
                    return succeeded() == BACKLOG

                await wait_until_async(drained, 60, f"all {BACKLOG} runs to succeed")
                return applied

        assert asyncio.run(drain_through_the_migration()) == later
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE status <> 'succeeded'") == 0
        # What 0008 fixes: a run due since -infinity (a plain INSERT can write one) no longer
        # makes the queue figures fail.
        conn.execute("INSERT INTO pgsched.runs (task, queue, run_at) VALUES ('t', 'ancient', '-infinity')")
        ancient = next(row for row in list_queues(conn) if row["queue"] == "ancient")
        assert ancient["due"] == 1 and ancient["oldest_queued_age_s"] > 60 * 365 * 24 * 3600

"""PostgreSQL goes away under load: the suite's own server is stopped and started again while
two worker processes drain runs and more runs are enqueued. Nothing crashes, no run is lost,
every run ends succeeded.

Completions that could not be written during the outage are kept by the completer and
written when the database returns; a run whose task failed because the database was gone
is retried (at-least-once)."""

from __future__ import annotations

import signal
import time
from typing import Any

import psycopg
import pytest

from pgsched import App
from tests.support.db import reconnect, scalar
from tests.support.workers import CREATE_EXECUTIONS, Workers, events, insert_run

pytestmark = pytest.mark.slow

RUNS = 600


def test_workers_survive_a_postgresql_restart_under_load_and_lose_no_run(
    postgresql_proc: Any, dsn: str, conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    conn.execute(CREATE_EXECUTIONS)
    app = App(dsn)
    app.task(name="record_reconnecting")(lambda key: key)
    before = app.enqueue_many("record_reconnecting", [{"key": f"before-{i}"} for i in range(RUNS)], max_attempts=10)
    app.close()
    workers = Workers(dsn, conn, tmp_path)
    after_restart: psycopg.Connection[Any] | None = None
    try:
        started = [workers.start("--concurrency", "20", "--lease", "5") for _ in range(2)]
        workers.wait_until(lambda: scalar(conn, "SELECT count(*) FROM executions") >= 50, 30, "the drain to start")

        postgresql_proc.stop()  # fast shutdown: every session is cut off mid-flight
        time.sleep(1.0)  # the outage: workers must ride it out
        postgresql_proc.start()

        conn = after_restart = reconnect(dsn)
        workers.conn = conn
        app = App(dsn)
        app.task(name="record_reconnecting")(lambda key: key)
        after = app.enqueue_many("record_reconnecting", [{"key": f"after-{i}"} for i in range(RUNS)], max_attempts=10)
        app.close()

        ids = before + after
        workers.wait_until(
            lambda: (
                scalar(
                    conn, "SELECT count(*) FROM pgsched.runs_all WHERE status IN ('succeeded', 'failed', 'cancelled')"
                )
                == len(ids)
            ),
            90,
            "every run to finish after the restart",
            alive=started,
        )
        statuses = dict(conn.execute("SELECT status::text, count(*) FROM pgsched.runs_all GROUP BY 1").fetchall())
        assert statuses == {"succeeded": len(ids)}, statuses
        executed = {row[0] for row in conn.execute("SELECT DISTINCT key FROM executions")}
        assert executed == {f"before-{i}" for i in range(RUNS)} | {f"after-{i}" for i in range(RUNS)}

        for worker in started:
            assert worker.popen.poll() is None, f"a worker died in the outage:\n{worker.log()[-4000:]}"
            worker.signal(signal.SIGTERM)
        for worker in started:
            assert worker.wait_exit(20) == 0, worker.log()[-4000:]
            assert "Traceback" not in worker.log(), worker.log()[-6000:]
    finally:
        workers.cleanup()
        if after_restart is not None:
            after_restart.close()


def test_a_worker_told_to_stop_while_the_database_is_gone_still_exits(
    postgresql_proc: Any, dsn: str, conn: psycopg.Connection[Any], tmp_path: Any
) -> None:
    # Its last outcome cannot be written: the worker must not wait for the database forever
    # (a service manager would have to SIGKILL it); the run stays 'running' in the database
    # and runs again when its lease expires.
    conn.execute(CREATE_EXECUTIONS)
    workers = Workers(dsn, conn, tmp_path)
    after_restart: psycopg.Connection[Any] | None = None
    try:
        worker = workers.start("--grace", "2", "--lease", "5")
        run_id = insert_run(conn, "slow", {"key": "outage", "seconds": 1.0})
        workers.wait_until(lambda: events(conn, "outage"), 20, "the run to start")

        postgresql_proc.stop()
        # The task ends in the outage (its end cannot be recorded either).
        workers.wait_until(lambda: f"run {run_id} slow attempt 1/" in worker.log(), 20, "the task to end in the outage")
        worker.signal(signal.SIGTERM)
        assert worker.wait_exit(30) == 0, worker.log()[-4000:]
        assert "outcomes unwritten" in worker.log()
        assert "Traceback" not in worker.log(), worker.log()[-6000:]
    finally:
        if not postgresql_proc.running():
            postgresql_proc.start()
        workers.conn = after_restart = reconnect(dsn)
        workers.cleanup()
    try:
        assert scalar(after_restart, f"SELECT status::text FROM pgsched.runs_all WHERE id = {run_id}") == "running"
    finally:
        after_restart.close()

"""Cancelling runs: a queued run at once; a running one through its worker (NOTIFY on
pgsched_cancel) — async tasks are cancelled, sync tasks see current_run().cancelled — and the
run ends 'cancelled' whatever the task does next. From Python, SQL and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from pgsched import App, current_run
from pgsched.errors import PgschedError, RunNotFound, RunStateConflict
from pgsched.runs import cancel_run
from pgsched.worker import Worker
from tests.support.db import empty_tables, insert_restored
from tests.support.inprocess import RunningWorker, run_async

pytestmark = pytest.mark.usefixtures("dsn")


# One database for the module, emptied before each test: a fresh clone per test costs more
# than most of these tests (conftest's ``app`` is on it too).


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


def test_a_running_async_task_is_stopped_and_its_run_ends_cancelled(app: App, dsn: str) -> None:
    started = asyncio.Event()
    finished_normally = []

    @app.task(max_attempts=3)
    async def crawl(site: str) -> str:
        started.set()
        await asyncio.sleep(30)
        finished_normally.append(site)
        return site

    run_id = app.enqueue("crawl", {"site": "example.com"})

    async def main() -> dict[str, Any]:
        async with RunningWorker(app, dsn) as w:
            await asyncio.wait_for(started.wait(), 10)
            with psycopg.connect(dsn, autocommit=True) as conn:
                assert cancel_run(conn, run_id) == "running"
            return await w.finished(run_id)

    row = run_async(main())
    assert row["status"] == "cancelled" and row["attempt"] == 1
    assert row["errors"][-1]["type"] == "Cancelled"
    assert finished_normally == []


def test_a_running_sync_task_sees_the_cancel_flag_and_its_run_ends_cancelled(app: App, dsn: str) -> None:
    started = threading.Event()
    seen: list[tuple[int, bool]] = []

    @app.task
    def export(rows: int) -> int:
        started.set()
        run = current_run()
        for _ in range(3000):  # a cooperative task: checks the flag between chunks of work
            if run.cancelled:
                break
            threading.Event().wait(0.01)
        seen.append((run.id, run.cancelled))
        return rows

    run_id = app.enqueue("export", {"rows": 5})

    async def main() -> dict[str, Any]:
        async with RunningWorker(app, dsn) as w:
            await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("SELECT pgsched.cancel(%s)", (run_id,))  # the SQL entry point
            return await w.finished(run_id)

    row = run_async(main())
    assert row["status"] == "cancelled"
    assert seen == [(run_id, True)]


def test_a_cancel_request_that_races_the_worker_still_ends_the_run_cancelled(app: App, dsn: str) -> None:
    # The request is recorded on the row: even with no worker to tell (it is not listening
    # yet), the completion turns the outcome into 'cancelled'.
    gate = threading.Event()

    @app.task
    def slow_report() -> str:
        gate.wait(10)
        return "done"

    run_id = app.enqueue("slow_report", {})

    async def main() -> dict[str, Any]:
        async with RunningWorker(app, dsn) as w:
            await w.until(run_id, lambda r: r["status"] == "running", "the run to start")
            with psycopg.connect(dsn, autocommit=True) as conn:  # recorded, as if the NOTIFY was missed
                conn.execute("UPDATE pgsched.runs SET cancel_requested_at = now() WHERE id = %s", (run_id,))
            gate.set()
            return await w.finished(run_id)

    assert run_async(main())["status"] == "cancelled"


def test_a_queued_run_is_cancelled_at_once_and_never_runs(app: App, dsn: str) -> None:
    ran = []
    app.task(name="never")(lambda: ran.append(1))
    run_id = app.enqueue("never", {}, delay=3600)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert cancel_run(conn, run_id) == "cancelled"
        assert (
            conn.execute("SELECT status::text FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()[0]
            == "cancelled"
        )
    assert ran == []


def test_cancelling_a_finished_or_missing_run_is_refused_naming_why(app: App, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        done = insert_restored(
            conn, "INSERT INTO pgsched.runs (task, status, finished_at) VALUES ('t', 'succeeded', now()) RETURNING id"
        ).fetchone()[0]
        with pytest.raises(
            RunStateConflict, match="it is succeeded; only waiting, queued or running runs can be cancelled"
        ):
            cancel_run(conn, done)
        with pytest.raises(RunNotFound):
            cancel_run(conn, 987654)
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="only waiting, queued or running"):
            conn.execute("SELECT pgsched.cancel(%s)", (done,))
        assert (
            conn.execute("SELECT status::text FROM pgsched.runs_all WHERE id = %s", (done,)).fetchone()[0]
            == "succeeded"
        )


def test_cli_cancel_of_a_running_run_says_its_worker_was_asked(app: App, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        run_id = insert_restored(
            conn,
            "INSERT INTO pgsched.runs (task, status, attempt, worker_id, started_at, lease_expires_at)"
            " VALUES ('t', 'running', 1, 1, now(), now() + interval '1 minute') RETURNING id",
        ).fetchone()[0]
    result = subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", "runs", "cancel", str(run_id)],
        env={**os.environ, "PGSCHED_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "asked to stop it" in result.stdout


def test_current_run_outside_a_task_says_so() -> None:
    with pytest.raises(PgschedError, match="only available inside a task"):
        current_run()


def test_a_cancel_in_the_loop_turn_that_starts_the_run_frees_its_slot_and_ends_it_cancelled(
    app: App, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancel NOTIFY can be handled after the claim created the run's asyncio task and
    # before that task's first step: the task is cancelled without ever running its code.
    ran = []

    @app.task(max_attempts=3)
    async def quick(n: int) -> int:
        ran.append(n)
        return n

    first, second = app.enqueue("quick", {"n": 1}), app.enqueue("quick", {"n": 2})

    async def main() -> tuple[dict[str, Any], dict[str, Any], int]:
        start = Worker._start

        def start_then_cancel_at_once(worker: Worker, run: Any) -> None:
            start(worker, run)
            if run.id == first:
                worker._cancel(run.id)  # same loop turn: the task has not stepped yet

        # On the class: the worker hands its bound _start to the fetcher when it is built.
        monkeypatch.setattr(Worker, "_start", start_then_cancel_at_once)
        async with RunningWorker(app, dsn, concurrency=1) as w:
            rows = await w.finished(first), await w.finished(second)
            return rows[0], rows[1], len(w.worker._state.executing)

    cancelled, next_run, executing = run_async(main())
    assert cancelled["status"] == "cancelled" and ran == [2]
    assert next_run["status"] == "succeeded"  # the one slot was freed for it
    assert executing == 0

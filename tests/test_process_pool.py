"""The process pool: sync tasks in child processes of the worker, stopped hard at their timeout
or on a cancel, replaced when they die, and never outliving the worker.

Three layers: the options (no database), the pool on its own (real child processes importing
``tests.process_app``, no database), and real ``pgsched worker`` processes (the harness of
tests/support/workers.py: tasks record each execution, with their pid, into ``executions``).
Which processes exist is read from /proc; a zombie counts as gone once its parent is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from pgsched import App
from pgsched.errors import AppLoadError, Cancel, ConfigError, InvalidInput, Retry
from pgsched.process_pool import ChildFailed, ProcessPool
from pgsched.run_types import ClaimedRun
from pgsched.worker import Worker, WorkerOptions
from tests.support.db import scalar
from tests.support.inprocess import finish
from tests.support.waiting import wait_until, wait_until_async
from tests.support.workers import Workers, events, insert_run, registered, run_row, status_of

ROOT = Path(__file__).resolve().parent.parent
APP_PATH = "tests.process_app:app"
SPAWN_MARK = "multiprocessing.spawn"  # in the command line of every pool child
T = TypeVar("T")


# ---- processes, as /proc sees them


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None if it does not exist."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[1])


def exists(pid: int) -> bool:
    return proc_stat(pid) is not None


def running(pid: int) -> bool:
    """Alive: exists and is not a zombie (a killed orphan may stay a zombie if init does not reap)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def pool_children(pid: int) -> list[int]:
    """The live process-pool children of ``pid`` (not multiprocessing's resource tracker)."""

    def is_pool_child(child: int) -> bool:
        try:
            return SPAWN_MARK in Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            return False

    return [child for child in children_of(pid) if is_pool_child(child)]


def descendants(pid: int) -> list[int]:
    found = []
    for child in children_of(pid):
        found += [child, *descendants(child)]
    return found


def at_least(found: list[T], count: int) -> list[T] | None:
    """``found`` once it holds ``count`` items (a wait_until condition)."""
    return found if len(found) >= count else None


# ---- choosing the pool: bad values are refused


def test_a_pool_other_than_thread_or_process_is_refused_and_nothing_is_registered() -> None:
    app = App(dsn="postgresql://unused")
    with pytest.raises(InvalidInput, match="pool must be 'thread' or 'process', got 'fork'"):
        app.task(pool="fork")(lambda: None)
    assert app.tasks == {}


def test_an_async_task_cannot_ask_for_the_process_pool() -> None:
    app = App(dsn="postgresql://unused")

    async def crawl() -> None: ...

    with pytest.raises(
        InvalidInput, match=r"'crawl' is async: it runs in the worker's event loop.*make it a plain def"
    ):
        app.task(pool="process")(crawl)
    assert app.tasks == {}


def test_worker_options_refuse_a_bad_pool_or_process_count() -> None:
    with pytest.raises(ValueError, match="pool must be 'thread' or 'process', got 'processes'"):
        WorkerOptions(pool="processes")
    with pytest.raises(ValueError, match="processes must be at least 1"):
        WorkerOptions(processes=0)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--pool", "fork"], "error: pool must be 'thread' or 'process', got 'fork'"),
        (["--processes", "0"], "error: processes must be at least 1"),
    ],
)
def test_cli_worker_refuses_a_bad_pool_option_in_one_line(option: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", "worker", *option],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == message
    assert "Traceback" not in result.stdout + result.stderr


def test_a_worker_whose_app_has_no_module_path_says_how_to_give_one() -> None:
    app = App(dsn="postgresql://unused")  # defined here, in no module's namespace

    @app.task(pool="process")
    def resize(path: str) -> None: ...

    with pytest.raises(ConfigError, match=r"resize run in child processes.*--app module:attribute"):
        Worker(app, WorkerOptions())
    # With no process-pool task there is no pool, and nothing to import.
    assert Worker(App(dsn="postgresql://unused"), WorkerOptions(pool="process")) is not None


# ---- the pool on its own: real child processes, no database


def pool_of(size: int = 1) -> ProcessPool:
    return ProcessPool(APP_PATH, size, frozenset({"in_child_does"}))


def claimed(what: str, seconds: float = 0.0, run_id: int = 7) -> tuple[ClaimedRun, dict[str, Any]]:
    args = {"what": what, "seconds": seconds}
    return ClaimedRun(run_id, "in_child_does", args, 2, 3), args


async def report(pool: ProcessPool) -> dict[str, Any]:
    return json.loads(await pool.call(*claimed("report"), None))


def test_the_pool_runs_a_task_in_its_child_which_knows_its_run() -> None:
    async def main() -> list[dict[str, Any]]:
        pool = pool_of(2)
        await pool.start()
        try:
            return [await report(pool) for _ in range(4)]
        finally:
            await pool.close()

    reports = asyncio.run(main())
    assert {r["parent"] for r in reports} == {os.getpid()}
    assert len({r["pid"] for r in reports}) == 2 and os.getpid() not in {r["pid"] for r in reports}
    assert {(r["run_id"], r["attempt"], r["cancelled"]) for r in reports} == {(7, 2, False)}
    assert not any(running(r["pid"]) for r in reports)  # closed: every child killed and reaped


def test_the_tasks_exceptions_cross_the_process_boundary() -> None:
    async def main() -> dict[str, BaseException]:
        pool = pool_of()
        await pool.start()
        raised = {}
        try:
            for what in ("retry", "cancel", "error", "own-timeout", "not-json"):
                with pytest.raises((Retry, Cancel, ChildFailed)) as info:
                    await pool.call(*claimed(what), None)
                raised[what] = info.value
        finally:
            await pool.close()
        return raised

    raised = asyncio.run(main())
    assert isinstance(raised["retry"], Retry) and raised["retry"].after == 7 and str(raised["retry"]) == "not yet"
    assert isinstance(raised["cancel"], Cancel) and str(raised["cancel"]) == "nothing to do"
    error = raised["error"]
    assert isinstance(error, ChildFailed)
    assert (error.kind, error.message, error.retryable) == ("ValueError", "bad value in the child", True)
    assert error.traceback is not None and 'raise ValueError("bad value in the child")' in error.traceback
    own = raised["own-timeout"]  # the task's own TimeoutError is its error, not the run's timeout
    assert isinstance(own, ChildFailed) and own.kind == "TimeoutError"
    not_json = raised["not-json"]
    assert isinstance(not_json, ChildFailed)
    assert (not_json.kind, not_json.retryable) == ("ResultNotSerialisable", False)


def test_the_pool_kills_a_child_at_the_timeout_and_starts_a_replacement() -> None:
    async def main() -> tuple[float, int, dict[str, Any]]:
        pool = pool_of()
        await pool.start()
        try:
            victim = (await report(pool))["pid"]
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.call(*claimed("sleep", 30), 0.5)
            elapsed = time.monotonic() - started
            after = await report(pool)  # waits for the replacement
            return elapsed, victim, after
        finally:
            await pool.close()

    elapsed, victim, after = asyncio.run(main())
    assert 0.5 <= elapsed < 1.0, f"the call returned {elapsed:.2f}s after it started, with a 0.5s timeout"
    assert not exists(victim)  # killed and reaped
    assert after["pid"] != victim and after["parent"] == os.getpid()


def test_the_pool_reports_a_child_that_exits_and_replaces_it() -> None:
    async def main() -> tuple[ChildFailed, int, int]:
        pool = pool_of()
        await pool.start()
        try:
            victim = (await report(pool))["pid"]
            with pytest.raises(ChildFailed) as info:
                await pool.call(*claimed("exit"), None)
            return info.value, victim, (await report(pool))["pid"]
        finally:
            await pool.close()

    died, victim, replacement = asyncio.run(main())
    assert (died.kind, died.message, died.retryable) == ("ProcessDied", "the task's process exited with code 3", True)
    assert replacement != victim and not exists(victim)


def test_cancelling_a_call_kills_its_child() -> None:
    async def main() -> int:
        pool = pool_of()
        await pool.start()
        try:
            victim = (await report(pool))["pid"]
            call = asyncio.create_task(pool.call(*claimed("sleep", 30), None))

            async def taken() -> bool:  # the call takes the only child
                return pool._idle.empty()

            await wait_until_async(taken, 10, "the call to take the child", poll=0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await asyncio.sleep(0)
            return victim
        finally:
            await pool.close()

    victim = asyncio.run(main())
    assert not exists(victim)


def test_the_pool_refuses_to_start_when_its_children_cannot_import_the_app() -> None:
    async def main() -> None:
        await ProcessPool("tests.no_such_module:app", 2, frozenset({"t"})).start()

    before = set(children_of(os.getpid()))
    with pytest.raises(
        AppLoadError,
        match=r"could not import the app 'tests.no_such_module:app': "
        r"AppLoadError: cannot import 'tests.no_such_module'",
    ):
        asyncio.run(main())
    assert not set(pool_children(os.getpid())) - before


# ---- the thread pool: what its timeout does not do


def test_a_thread_pool_task_runs_past_its_timeout_to_its_end(app: App, dsn: str) -> None:
    """What README says: a thread cannot be stopped, so the thread pool does not enforce a timeout."""

    @app.task(timeout=0.1)
    def digest() -> str:
        time.sleep(0.6)
        return "done"

    [row] = finish(app, dsn, app.enqueue("digest", {}))
    assert (row["status"], row["result"], row["errors"]) == ("succeeded", "done", [])
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 0.6


def test_a_thread_pool_task_raising_its_own_timeout_error_fails_with_that_error(app: App, dsn: str) -> None:
    """A sync task's TimeoutError (a socket's, say) is its own error; no timeout was set."""

    @app.task(max_attempts=1)
    def fetch() -> None:
        raise TimeoutError("the socket timed out")

    [row] = finish(app, dsn, app.enqueue("fetch", {}))
    assert row["status"] == "failed"
    assert [(e["type"], e["message"]) for e in row["errors"]] == [("TimeoutError", "the socket timed out")]


# ---- real worker processes


@pytest.mark.slow
def test_a_process_pool_task_runs_in_a_child_of_the_worker_and_its_result_is_stored(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--processes", "2")
    run_id = workers.run_until("in_child", {"key": "child"}, "succeeded", 20, "the process-pool run to succeed")

    result = scalar(conn, "SELECT result FROM pgsched.runs_all WHERE id = %s", (run_id,))
    assert (result["parent"], result["run_id"], result["attempt"]) == (worker.pid, run_id, 1)
    assert result["pid"] != worker.pid
    assert events(conn, "child") == [("run", result["pid"])]
    assert result["pid"] in pool_children(worker.pid)  # children live on, run after run
    assert len(pool_children(worker.pid)) == 2


@pytest.mark.slow
def test_a_process_pool_task_past_its_timeout_is_killed_retried_then_failed(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--processes", "1")
    run_id = insert_run(conn, "overrun_in_child", {"key": "over", "seconds": 30}, max_attempts=2)

    killed_after = []
    for attempt in (1, 2):
        started = workers.wait_until(
            lambda attempt=attempt: at_least(events(conn, "over"), attempt), 20, f"attempt {attempt} to start"
        )
        seen_at = time.monotonic()
        pid = started[attempt - 1][1]
        # The worker kills at 1 s and reaps at once: not even a zombie is left.
        workers.wait_until(lambda pid=pid: not exists(pid), 5, f"the process of attempt {attempt} to be gone")
        killed_after.append(time.monotonic() - seen_at)
    workers.wait_until(lambda: status_of(conn, run_id) == "failed", 10, "the run to fail")

    row = run_row(conn, run_id)
    assert row["attempt"] == 2
    assert [(e["type"], e["message"]) for e in row["errors"]] == [("Timeout", "timed out after 1s")] * 2
    assert [e for e, _ in events(conn, "over")] == ["start", "start"]  # never reached its end
    first, second = (pid for _, pid in events(conn, "over"))
    assert first != second and first != worker.pid
    # Seen started (a poll after it recorded its start) until gone: the 1 s timeout plus a margin.
    assert all(0.5 < seconds < 2.0 for seconds in killed_after), killed_after
    workers.wait_until(lambda: len(pool_children(worker.pid)) == 1, 10, "the pool to be back to its size")
    assert registered(conn, worker)


@pytest.mark.slow
def test_cancelling_a_running_process_pool_task_kills_its_process_and_the_run_ends_cancelled(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--processes", "1")
    run_id = insert_run(conn, "block_in_child", {"key": "cancel-me", "seconds": 60})
    pid = workers.wait_until(lambda: events(conn, "cancel-me"), 20, "the run to start")[0][1]

    requested = time.monotonic()
    assert scalar(conn, "SELECT pgsched.cancel(%s)", (run_id,)) == "running"
    workers.wait_until(lambda: status_of(conn, run_id) == "cancelled", 10, "the run to end cancelled")
    workers.wait_until(lambda: not exists(pid), 5, "the task's process to be gone")
    assert time.monotonic() - requested < 5

    row = run_row(conn, run_id)
    assert (row["attempt"], [e["type"] for e in row["errors"]]) == (1, ["Cancelled"])
    assert [e for e, _ in events(conn, "cancel-me")] == ["start"]
    # The child that replaced the killed one takes the next run.
    workers.run_until("in_child", {"key": "after-cancel"}, "succeeded", 20, "the next run to succeed")
    assert events(conn, "after-cancel")[0][1] not in (pid, worker.pid)


@pytest.mark.slow
def test_a_child_that_exits_by_itself_fails_its_run_and_the_worker_carries_on(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--processes", "1")
    run_id = workers.run_until(
        "exit_in_child", {"key": "exit", "code": 3}, "failed", 20, "the run to fail", max_attempts=1
    )

    row = run_row(conn, run_id)
    assert [(e["type"], e["message"]) for e in row["errors"]] == [
        ("ProcessDied", "the task's process exited with code 3")
    ]
    dead = events(conn, "exit")[0][1]
    workers.run_until("in_child", {"key": "next"}, "succeeded", 20, "the next run to succeed")
    assert events(conn, "next")[0][1] not in (dead, worker.pid)
    assert not exists(dead)
    assert worker.popen.poll() is None and registered(conn, worker)


@pytest.mark.slow
def test_pool_process_sends_every_sync_task_of_the_worker_to_a_child(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--pool", "process", "--processes", "1")
    sync_run = insert_run(conn, "record_sync", {"key": "sync"})  # no pool= of its own
    async_run = insert_run(conn, "record", {"key": "async"})
    workers.wait_until(
        lambda: {status_of(conn, sync_run), status_of(conn, async_run)} == {"succeeded"}, 20, "both runs to succeed"
    )

    sync_pid = events(conn, "sync")[0][1]
    assert sync_pid != worker.pid and sync_pid in pool_children(worker.pid)
    assert events(conn, "async") == [("run", worker.pid)]  # async tasks stay in the event loop


@pytest.mark.slow
def test_the_worker_claims_no_more_process_pool_runs_than_it_has_processes(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    workers.start("--processes", "1", "--concurrency", "10")
    ids = [insert_run(conn, "block_in_child", {"key": f"one-at-a-time-{i}", "seconds": 0.5}) for i in range(3)]
    most_held = 0

    def held_and_unfinished() -> int:
        # A run whose task has ended stays 'running' until the completer writes its outcome,
        # and by then the freed child may hold the next run: count only runs still executing
        # or waiting for a child (the task records its end before the child is free again).
        keys = [
            key
            for (key,) in conn.execute("SELECT args->>'key' FROM pgsched.runs_all WHERE status = 'running'").fetchall()
        ]
        return sum(1 for key in keys if "end" not in [event for event, _ in events(conn, key)])

    def all_done() -> bool:
        nonlocal most_held
        most_held = max(most_held, held_and_unfinished())
        return all(status_of(conn, i) == "succeeded" for i in ids)

    workers.wait_until(all_done, 30, "the three runs to succeed")
    assert most_held == 1  # the others stayed queued, free for any other worker to take


@pytest.mark.slow
def test_sigterm_lets_children_finish_within_the_grace_then_kills_the_rest_leaving_no_process(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    grace = 2.0
    worker = workers.start("--processes", "2", "--grace", str(grace))
    short = insert_run(conn, "block_in_child", {"key": "short", "seconds": 1.0})
    long = insert_run(conn, "block_in_child", {"key": "long", "seconds": 60})
    workers.wait_until(lambda: events(conn, "short") and events(conn, "long"), 20, "both runs to start")
    family = descendants(worker.pid)
    assert len(family) >= 2  # the two children (and multiprocessing's resource tracker)

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(grace + 10) == 0, worker.log()[-3000:]
    stopped_in = time.monotonic() - signalled

    assert status_of(conn, short) == "succeeded" and [e for e, _ in events(conn, "short")] == ["start", "end"]
    row = run_row(conn, long)
    assert (row["status"], row["attempt"], row["errors"]) == ("queued", 0, [])  # released, no attempt used
    assert [e for e, _ in events(conn, "long")] == ["start"]
    assert grace <= stopped_in < grace + 5, f"stopped {stopped_in:.1f}s after SIGTERM with a {grace}s grace"
    wait_until(lambda: not any(running(pid) for pid in family), 5, "every process of the worker to be gone")


@pytest.mark.slow
def test_sigkill_of_the_worker_leaves_no_child_process_behind(workers: Workers, conn: psycopg.Connection[Any]) -> None:
    worker = workers.start("--processes", "2")
    insert_run(conn, "block_in_child", {"key": "orphan?", "seconds": 60})
    busy = workers.wait_until(lambda: events(conn, "orphan?"), 20, "the run to start")[0][1]
    family = descendants(worker.pid)
    assert busy in family and len(pool_children(worker.pid)) == 2

    worker.popen.kill()
    assert worker.popen.wait(timeout=10) == -signal.SIGKILL
    wait_until(
        lambda: not any(running(pid) for pid in family),
        5,
        f"the processes {family} of the killed worker to die with it",
    )


def test_a_busy_process_pool_does_not_hold_back_the_workers_other_tasks(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    # One child, busy for seconds: async runs queued behind it still run at once (only the
    # process-pool tasks' claims are capped by the free children).
    workers.start("--processes", "1", "--concurrency", "10")
    blocker = insert_run(conn, "block_in_child", {"key": "blocker", "seconds": 5.0})
    workers.wait_until(lambda: events(conn, "blocker"), 20, "the child to be busy")
    waiting = insert_run(conn, "block_in_child", {"key": "waits-for-the-child", "seconds": 0.1})
    quick = [insert_run(conn, "record", {"key": f"async-{n}"}) for n in range(5)]
    workers.wait_until(lambda: all(status_of(conn, i) == "succeeded" for i in quick), 10, "the async runs to succeed")
    assert status_of(conn, blocker) == "running"  # still busy: the async runs did not wait for it
    assert status_of(conn, waiting) == "queued"  # left for any worker with a free child
    workers.wait_until(lambda: status_of(conn, waiting) == "succeeded", 30, "the waiting run to get the child")

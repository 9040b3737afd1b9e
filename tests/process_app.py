"""The App the multi-process tests (tests/test_processes.py) run in real worker processes.

Every task records each execution into the test's side table ``executions`` through its own
connection (DSN from ``$PGSCHED_DSN``), with the ``key`` it was given (a task cannot learn its
run id yet), the worker's pid and an event name. The test creates the table:

    CREATE TABLE executions (key text, event text, pid int, at timestamptz DEFAULT clock_timestamp())
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import threading
import time

import psycopg

from pgsched import App

app = App()

# The tests send SIGUSR1 to a worker that misses a deadline, to see where its threads are.
faulthandler.register(signal.SIGUSR1, all_threads=True)

_INSERT = "INSERT INTO executions (key, event, pid) VALUES (%s, %s, %s)"

_async_conn: psycopg.AsyncConnection | None = None
_async_lock = asyncio.Lock()  # binds to the worker's loop on first use
_sync_conn: psycopg.Connection | None = None
_sync_lock = threading.Lock()


async def _record(key: str, event: str) -> None:
    """One row per event, over a connection this process shares between its async tasks
    (psycopg serialises the statements of one connection)."""
    global _async_conn
    async with _async_lock:
        if _async_conn is None:
            _async_conn = await psycopg.AsyncConnection.connect(os.environ["PGSCHED_DSN"], autocommit=True)
    await _async_conn.execute(_INSERT, (key, event, os.getpid()))


def _record_sync(key: str, event: str) -> None:
    global _sync_conn
    with _sync_lock:
        if _sync_conn is None:
            _sync_conn = psycopg.connect(os.environ["PGSCHED_DSN"], autocommit=True)
        _sync_conn.execute(_INSERT, (key, event, os.getpid()))


@app.task
async def record(key: str) -> str:
    """The fast one: records that it ran, nothing else."""
    await _record(key, "run")
    return key


@app.task
async def slow(key: str, seconds: float) -> str:
    """Records its start, sleeps ``seconds``, records its end."""
    await _record(key, "start")
    await asyncio.sleep(seconds)
    await _record(key, "end")
    return key


@app.task
def record_sync(key: str) -> str:
    """A sync task (the worker's thread pool): records that it ran."""
    _record_sync(key, "run")
    return key


@app.task
def exit_sync(key: str) -> None:
    """A poison run: a sync task that raises SystemExit in the worker's thread."""
    _record_sync(key, "run")
    raise SystemExit(3)


@app.task
async def exit_async(key: str) -> None:
    """A poison run: an async task that raises SystemExit in the worker's event loop."""
    await _record(key, "run")
    raise SystemExit(4)


class FirstAttemptFails(ValueError):
    """fail_first's planned failure."""


@app.task
async def fail_first(key: str) -> str:
    """Fails (with a traceback) the first time it runs for ``key``, succeeds after that: a
    failed run that a retry then completes (the dashboard's tests)."""
    await _record(key, "run")
    assert _async_conn is not None
    cursor = await _async_conn.execute("SELECT count(*) FROM executions WHERE key = %s", (key,))
    row = await cursor.fetchone()
    if row is not None and row[0] == 1:
        raise FirstAttemptFails(f"first attempt for {key} fails on purpose")
    return key


@app.task
def block_sync(key: str, seconds: float) -> None:
    """A sync task that holds a thread for ``seconds`` (cannot be cancelled)."""
    _record_sync(key, "start")
    time.sleep(seconds)
    _record_sync(key, "end")


@app.task
def record_reconnecting(key: str) -> str:
    """Records each execution over a fresh connection: survives a PostgreSQL restart (a
    failed insert raises, so the attempt fails and is retried)."""
    with psycopg.connect(os.environ["PGSCHED_DSN"], autocommit=True) as conn:
        conn.execute(_INSERT, (key, "run", os.getpid()))
    return key


# ---- the chaos soak (tests/test_soak.py, benchmarks/soak.py, driver in tests/soak_driver.py)

import random  # noqa: E402 - this section is appended

from pgsched import current_run  # noqa: E402

_SOAK_INSERT = "INSERT INTO soak_executions (key, run_id, attempt, pid, planned) VALUES (%s, %s, %s, %s, %s)"


class SoakFailure(Exception):
    """The soak task's planned failure (a retryable exception)."""


@app.task(retry_backoff=0.05)
async def soak(key: str, fail_rate: float, slow_rate: float) -> dict[str, object]:
    """Random duration (0-50 ms; with probability ``slow_rate`` 0.2-0.5 s) and a random
    planned failure (probability ``fail_rate``). Records each execution, with its run id,
    attempt, pid and what it planned, into ``soak_executions`` over a fresh connection (so it
    survives a PostgreSQL restart; a failed insert raises and the attempt is retried) before
    it sleeps. Its result names the attempt and pid, so the row shows which execution won:

        CREATE TABLE soak_executions (key text, run_id bigint, attempt int, pid int, planned text,
                                      at timestamptz DEFAULT clock_timestamp())
    """
    run = current_run()
    seconds = random.uniform(0.2, 0.5) if random.random() < slow_rate else random.uniform(0.0, 0.05)
    planned = "raise" if random.random() < fail_rate else "ok"
    async with await psycopg.AsyncConnection.connect(os.environ["PGSCHED_DSN"], autocommit=True) as conn:
        await conn.execute(_SOAK_INSERT, (key, run.id, run.attempt, os.getpid(), planned))
    await asyncio.sleep(seconds)
    if planned == "raise":
        raise SoakFailure(f"planned failure of {key} at attempt {run.attempt}")
    return {"key": key, "attempt": run.attempt, "pid": os.getpid()}


# ---- the process pool (tests/test_process_pool.py): sync tasks in child processes of the worker

from pgsched import Cancel, Retry  # noqa: E402 - this section is appended


@app.task(pool="process")
def in_child(key: str) -> dict[str, int]:
    """Records that it ran; returns where it ran and what current_run() says there."""
    _record_sync(key, "run")
    run = current_run()
    return {"pid": os.getpid(), "parent": os.getppid(), "run_id": run.id, "attempt": run.attempt}


@app.task(pool="process", timeout=1.0, max_attempts=2, retry_backoff=0.05)
def overrun_in_child(key: str, seconds: float) -> None:
    """Records its start, then sleeps past its 1 s timeout: the worker kills its process."""
    _record_sync(key, "start")
    time.sleep(seconds)
    _record_sync(key, "end")


@app.task(pool="process")
def block_in_child(key: str, seconds: float) -> None:
    """Records its start and its end around ``seconds`` of sleep; no timeout (cancel, shutdown)."""
    _record_sync(key, "start")
    time.sleep(seconds)
    _record_sync(key, "end")


@app.task(pool="process")
def exit_in_child(key: str, code: int) -> None:
    """Records that it ran, then ends its process at once with ``code``: no exception, no cleanup."""
    _record_sync(key, "run")
    os._exit(code)


@app.task(pool="process")
def in_child_does(what: str, seconds: float = 0.0) -> object:
    """No database: returns where it ran ("report"), sleeps, raises Retry, Cancel, ValueError or
    its own TimeoutError, returns a value that is not JSON, or exits (os._exit(3))."""
    if what == "report":
        run = current_run()
        return {
            "pid": os.getpid(),
            "parent": os.getppid(),
            "run_id": run.id,
            "attempt": run.attempt,
            "cancelled": run.cancelled,
        }
    if what == "sleep":
        time.sleep(seconds)
        return "slept"
    if what == "retry":
        raise Retry(after=7, reason="not yet")
    if what == "cancel":
        raise Cancel("nothing to do")
    if what == "error":
        raise ValueError("bad value in the child")
    if what == "own-timeout":
        raise TimeoutError("the task's own socket timed out")
    if what == "not-json":
        return {1, 2}
    if what == "exit":
        os._exit(3)
    raise LookupError(f"in_child_does: unknown {what!r}")


@app.task(pool="process", autoretry_for=(ConnectionError,))
def raise_in_child(kind: str) -> None:
    """Celery's autoretry_for, decided in the child: only ConnectionError may be retried."""
    raise {"ConnectionError": ConnectionError, "KeyError": KeyError}[kind]("raised in the child")


# ---- workflows in the process pool (tests/test_workflow_processes.py)


@app.task(pool="process")
def gather_in_child(values: list[object]) -> dict[str, object]:
    """A chord's callback in a pool child: the header's results bound to ``values``, and
    current_run().parent_results as the child sees them, with where it ran."""
    return {"values": values, "parents": current_run().parent_results, "pid": os.getpid(), "parent": os.getppid()}


@app.task(pool="process")
def next_in_child(previous: object) -> dict[str, object]:
    """A chain's step in a pool child: the previous step's result bound to ``previous``."""
    return {"previous": previous, "parents": current_run().parent_results, "pid": os.getpid()}

"""Run handles: what ``task.delay()`` and ``task.apply_async()`` return and ``app.run(id)`` gives,
pgsched's counterpart of Celery's ``AsyncResult``.

    handle = add.delay(2, 3)
    handle.get(timeout=10)          # 5, or RunFailed carrying the worker's error and traceback
    await handle.wait(timeout=10)   # the same from asyncio

Waiting is woken by a notification, never a poll loop: the waiter LISTENs on
``pgsched_finished``, marks the run ``awaited`` (``run_watch``), and the trigger
``runs_notify_finished`` sends the run id when the run ends. Only runs someone waits on are
marked, so a run nobody waits on pays one ``WHEN`` test on its completion and nothing more.
After the LISTEN the waiter reads the run once more: a run that ended before the mark is seen
there, one that ends after it is notified.

The sync and async paths share everything but their I/O: the reading of a row into a
:class:`RunState` and the settling of a state into a value or an exception.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator

import psycopg

from pgsched.config import connection_kwargs, session_dsn
from pgsched.context import inside_task
from pgsched.errors import ConfigError, RunCancelled, RunFailed, RunNotFound, WaitInsideTask
from pgsched.runs import check_run_id
from pgsched.sql import queries

if TYPE_CHECKING:
    from pgsched.app import App

FINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True, slots=True)
class RunState:
    """A run as a waiter sees it: its status, its result, and its last errors entry."""

    run_id: int
    status: str
    result: Any
    last_error: dict[str, Any] | None
    task: str

    @property
    def finished(self) -> bool:
        return self.status in FINAL

    def failure(self) -> RunFailed | None:
        """The exception a failed or cancelled run settles to (None otherwise)."""
        if self.status not in ("failed", "cancelled"):
            return None
        error = self.last_error or {}
        kind = str(error.get("type") or "Cancelled")
        message = str(error.get("message") or "cancel requested")
        remote_traceback = error.get("traceback")
        if self.status == "cancelled":
            return RunCancelled(self.run_id, kind, message, remote_traceback)
        return RunFailed(self.run_id, kind, message, remote_traceback)

    def settle(self, propagate: bool) -> Any:
        """The result of a run that succeeded; a failure is raised, or returned when not ``propagate``."""
        failure = self.failure()
        if failure is None:
            return self.result
        if propagate:
            raise failure
        return failure


def _state(run_id: int, row: tuple[Any, ...] | None) -> RunState:
    if row is None:
        raise RunNotFound(f"no run with id {run_id}")
    return RunState(run_id, row[0], row[1], row[2], row[3])


def _refuse_inside_task() -> None:
    if inside_task():
        raise WaitInsideTask()


def _deadline(timeout: float | None) -> float | None:
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return None if timeout is None else time.monotonic() + timeout


def _remaining(run_id: int, deadline: float | None, timeout: float | None) -> float | None:
    """Seconds left to wait; TimeoutError once the deadline has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"run {run_id} did not finish within {timeout:g}s")
    return left


class RunHandle:
    """One run, by id. Reading a property asks the database (one query), as Celery's
    ``AsyncResult.state`` asks its backend."""

    def __init__(self, app: App, run_id: int) -> None:
        self.app = app
        self.id = check_run_id(run_id)

    def __repr__(self) -> str:
        return f"<RunHandle {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunHandle) and other.id == self.id and other.app is self.app

    def __hash__(self) -> int:
        return hash(self.id)

    # ---- reading the run now

    def state(self) -> RunState:
        """The run as it is now (RunNotFound if there is no such run)."""
        with self.app.pool.connection() as conn:
            return self.state_on(conn)

    def state_on(self, conn: psycopg.Connection[Any]) -> RunState:
        """:meth:`state`, read on ``conn`` (in its transaction, if it has one)."""
        return _read(conn, self.id)

    @property
    def status(self) -> str:
        """queued, running, succeeded, failed or cancelled."""
        return self.state().status

    def ready(self) -> bool:
        """Whether the run has ended (succeeded, failed or cancelled)."""
        return self.state().finished

    def successful(self) -> bool:
        return self.status == "succeeded"

    def failed(self) -> bool:
        """Whether the run ended without succeeding (failed, or cancelled)."""
        return self.status in ("failed", "cancelled")

    @property
    def result(self) -> Any:
        """The task's return value once it succeeded; the RunFailed (not raised) once it failed
        or was cancelled; None while it has not ended (as Celery's ``AsyncResult.result``)."""
        state = self.state()
        return state.settle(propagate=False) if state.finished else None

    # ---- waiting for it to end

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """Wait until the run ends and return its result. A failed or cancelled run raises
        :class:`RunFailed` / :class:`RunCancelled` (returned instead when ``propagate`` is
        False); ``timeout`` seconds without an end raise TimeoutError. Raises at once inside a
        task (:class:`WaitInsideTask`)."""
        _refuse_inside_task()
        deadline = _deadline(timeout)
        with _listening(self.app) as conn:
            conn.execute(queries["run_watch"], {"id": self.id})
            while not (state := _read(conn, self.id)).finished:
                for notify in conn.notifies(timeout=_remaining(self.id, deadline, timeout)):
                    if notify.payload == str(self.id):
                        break
        return state.settle(propagate)

    async def wait(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The asyncio twin of :meth:`get`."""
        _refuse_inside_task()
        deadline = _deadline(timeout)
        async with _listening_async(self.app) as conn:
            await conn.execute(queries["run_watch"], {"id": self.id})
            while not (state := await _read_async(conn, self.id)).finished:
                async for notify in conn.notifies(timeout=_remaining(self.id, deadline, timeout)):
                    if notify.payload == str(self.id):
                        break
        return state.settle(propagate)


def _read(conn: psycopg.Connection[Any], run_id: int) -> RunState:
    return _state(run_id, conn.execute(queries["run_outcome"], {"id": run_id}).fetchone())


async def _read_async(conn: psycopg.AsyncConnection[Any], run_id: int) -> RunState:
    cursor = await conn.execute(queries["run_outcome"], {"id": run_id})
    return _state(run_id, await cursor.fetchone())


def _listen_dsn(app: App) -> str | None:
    """Behind a transaction-mode pooler a LISTEN hears nothing: waiting then needs the direct
    DSN, on a connection of its own. Otherwise None: a pooled connection will do."""
    if not app.pgbouncer:
        return None
    dsn = session_dsn(app.dsn, app.direct_dsn, True)
    if dsn is None:
        raise ConfigError("waiting on a run needs LISTEN, which PgBouncer cannot carry: set a direct DSN")
    return dsn


@contextmanager
def _listening(app: App) -> Iterator[psycopg.Connection[Any]]:
    """A connection that LISTENs on pgsched_finished, and stops before it goes back to the pool."""
    direct = _listen_dsn(app)
    if direct is not None:
        with psycopg.connect(direct, **connection_kwargs(False, autocommit=True)) as conn:
            conn.execute(queries["run_listen_finished"])
            yield conn
        return
    with app.pool.connection() as conn:
        conn.execute(queries["run_listen_finished"])
        try:
            yield conn
        finally:
            if not conn.closed:
                conn.execute(queries["run_unlisten_finished"])


@asynccontextmanager
async def _listening_async(app: App) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """The asyncio twin of :func:`_listening`."""
    direct = _listen_dsn(app)
    if direct is not None:
        async with await psycopg.AsyncConnection.connect(direct, **connection_kwargs(False, autocommit=True)) as conn:
            await conn.execute(queries["run_listen_finished"])
            yield conn
        return
    async with (await app.async_pool()).connection() as conn:
        await conn.execute(queries["run_listen_finished"])
        try:
            yield conn
        finally:
            if not conn.closed:
                await conn.execute(queries["run_unlisten_finished"])

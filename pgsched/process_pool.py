"""The process pool: sync tasks in child processes, so a timeout or a cancel can stop them hard.

A thread cannot be stopped from outside; a process can. A worker whose app has tasks with
``@app.task(pool="process")`` (or that runs with ``--pool process``, which sends every sync
task there) keeps ``size`` long-lived children (:mod:`pgsched.process_child`) and sends each
such run to an idle one:

    call ─► wait for an idle child ─► request (JSON) ─► reply: result | exception | EOF (died)
                                                    └─► timeout / cancel: SIGKILL ─► replacement

Children are started with multiprocessing's ``spawn`` method. ``fork`` would copy a worker
that has threads, an event loop and open database connections; ``forkserver`` would start
replacements faster (a fork of a server that imported the app already, where ``spawn`` pays
~0.3 s here, mostly importing the app) but adds a server process between the worker and its
children, and a preload that runs the user's module once for all of them. Children are
reused run after run, so the start-up is paid once per child, plus once per kill.

A kill is SIGKILL straight away, with no SIGTERM first: the task has had its whole timeout,
Python code does not get to run ``finally`` blocks on a default SIGTERM anyway, and a task
stuck in C code cannot ignore SIGKILL. Children ignore SIGINT/SIGTERM (a Ctrl-C or a service
manager signals the whole process group; the worker's graceful shutdown decides) and die with
the worker (PR_SET_PDEATHSIG, see :func:`pgsched.process_child.die_with_parent`).

All of it runs on the worker's event-loop thread: the pipes are watched with ``add_reader``,
and children are spawned from that thread, which the death signal is tied to.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any, Mapping

from pgsched.context import running
from pgsched.errors import AppLoadError, Cancel, ConfigError, Retry
from pgsched.process_child import LOAD_FAILED, RAISED, READY, RESULT, child_main, parent_logging
from pgsched.tracing import current_traceparent

if TYPE_CHECKING:
    from multiprocessing.context import SpawnProcess

    from pgsched.app import App, Task
    from pgsched.run_types import ClaimedRun

logger = logging.getLogger("pgsched.worker")

START_TIMEOUT_S = 60.0
EXIT_WAIT_S = 5.0  # after the pipe closed, how long a child may take to exit before it is killed
REPLACE_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)

_spawn = multiprocessing.get_context("spawn")


class ChildFailed(Exception):
    """The run failed in its child process: the task raised, or the process died."""

    def __init__(self, kind: str, message: str, tb: str | None = None, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.traceback = tb
        self.retryable = retryable


def runs_in_process(task: Task[Any, Any], default_pool: str) -> bool:
    """Whether a run of ``task`` goes to a child process: the task's own ``pool``, else the worker's."""
    return not task.is_async and (task.pool or default_pool) == "process"


def find_import_path(app: App) -> str | None:
    """``module:attribute`` of an imported module holding ``app``, for children to import it by."""
    for module_name, module in list(sys.modules.items()):
        if module_name in ("__main__", "__mp_main__") or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is app:
                return f"{module_name}:{attribute}"
    return None


def describe_exit(exitcode: int | None, process: str = "the task's process") -> str:
    """Why a child ended, for the run's error (``exitcode`` as multiprocessing reports it)."""
    if exitcode is None:
        return f"{process} closed its pipe to the worker without exiting, and was killed"
    if exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else f"signal {-exitcode}"
        hint = " (killed from outside: out of memory?)" if exitcode == -signal.SIGKILL else ""
        return f"{process} died from {name}{hint}, exit code {exitcode}"
    return f"{process} exited with code {exitcode}"


@dataclass(eq=False)
class _Child:
    process: SpawnProcess
    conn: Connection
    _exit: asyncio.Future[None] | None = None
    _disposed: bool = False

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def alive(self) -> bool:
        return not self._disposed and self.process.exitcode is None  # polls (waitpid WNOHANG)

    async def receive(self) -> bytes:
        """The next message; EOFError when the child is gone."""
        await _readable(self.conn.fileno())
        # Readable means the first bytes are here; the child writes the rest of the message
        # at once, so recv_bytes only waits for the pipe to drain, never for the task.
        return self.conn.recv_bytes()

    async def exited(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the process to end (any number of waiters); True if it did."""
        if self._exit is None:  # one reader on the sentinel, shared by every waiter
            loop = asyncio.get_running_loop()
            self._exit = loop.create_future()
            loop.add_reader(self.process.sentinel, self._on_exit)
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._exit)
        except TimeoutError:
            return False
        return True

    def _on_exit(self) -> None:
        asyncio.get_running_loop().remove_reader(self.process.sentinel)
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(None)

    async def reap(self) -> int | None:
        """Wait for the end of the process (killing it if it takes over EXIT_WAIT_S) and collect
        its exit code: None when it had to be killed."""
        exited = await self.exited(EXIT_WAIT_S)
        if not exited:
            self.process.kill()
            await self.exited(EXIT_WAIT_S)
        self.process.join()
        return self.process.exitcode if exited else None

    def dispose(self) -> None:
        """Release the pipe and the process object (once; only after :meth:`reap`)."""
        if self._disposed:
            return
        self._disposed = True
        if self._exit is not None and not self._exit.done():
            asyncio.get_running_loop().remove_reader(self.process.sentinel)
            self._exit.cancel()
        self.conn.close()
        self.process.close()


@dataclass(eq=False)
class ProcessPool:
    """``size`` child processes importing the app from ``app_path``; runs ``tasks`` there."""

    app_path: str
    size: int
    tasks: frozenset[str]
    _idle: asyncio.Queue[_Child] = field(init=False)
    _children: set[_Child] = field(init=False, default_factory=set)
    _background: set[asyncio.Task[None]] = field(init=False, default_factory=set)
    _closing: bool = field(init=False, default=False)

    @classmethod
    def for_app(cls, app: App, *, default_pool: str, size: int | None, app_path: str | None) -> ProcessPool | None:
        """The pool a worker needs, or None when none of the app's tasks runs in a process."""
        tasks = frozenset(name for name, task in app.tasks.items() if runs_in_process(task, default_pool))
        if not tasks:
            return None
        path = app_path or find_import_path(app)
        if path is None:
            raise ConfigError(
                f"tasks {', '.join(sorted(tasks))} run in child processes, which import the app by "
                "its module path: start the worker with --app module:attribute, or pass "
                "WorkerOptions(app_path=...)"
            )
        return cls(path, size or os.cpu_count() or 1, tasks)

    def handles(self, task_name: str) -> bool:
        return task_name in self.tasks

    # ---- lifecycle

    async def start(self) -> None:
        """Start every child and wait until each has imported the app (AppLoadError if one cannot)."""
        self._idle = asyncio.Queue()
        atexit.register(self._kill_all)  # a worker leaving by an unexpected path still leaves no child
        started = time.perf_counter()
        results = await asyncio.gather(*(self._start_child() for _ in range(self.size)), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.close()
            raise failure
        for child in results:
            self._idle.put_nowait(child)  # type: ignore[arg-type]
        logger.info(
            "process pool: %d processes ready in %.2fs (app %s, tasks %s)",
            self.size,
            time.perf_counter() - started,
            self.app_path,
            ",".join(sorted(self.tasks)),
        )

    def stopping(self) -> None:
        """The worker is shutting down: a child that ends from now on is not replaced."""
        self._closing = True

    async def close(self) -> None:
        """Kill every child (running ones too: the worker has given up on their runs) and reap them."""
        self._closing = True
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        children = list(self._children)
        for child in children:
            if child.alive():
                child.process.kill()
        await asyncio.gather(*(child.reap() for child in children), return_exceptions=True)
        for child in children:
            child.dispose()
        self._children.clear()
        atexit.unregister(self._kill_all)

    def _kill_all(self) -> None:
        for child in self._children:
            if child.process.exitcode is None:
                child.process.kill()
                child.process.join(EXIT_WAIT_S)

    # ---- running a task

    async def call(self, run: ClaimedRun, args: Mapping[str, Any], timeout_s: float | None) -> str:
        """Run ``run`` in an idle child; its result as JSON text.

        Raises TimeoutError (the child was killed at ``timeout_s``, counted from the moment it
        got the run, not from the wait for a free one), Retry or Cancel (raised by the task),
        ChildFailed (another exception, or the process died). A cancelled call kills its child.
        """
        request = json.dumps(_request(run, args)).encode()
        child = await self._dispatch(request)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await child.receive()
        except TimeoutError:  # first: TimeoutError is an OSError too
            self._retire(child)
            raise
        except (EOFError, OSError):
            try:
                exitcode = await child.reap()
            finally:
                self._retire(child)
            raise ChildFailed("ProcessDied", describe_exit(exitcode)) from None
        except BaseException:  # a cancel: a cancel request, or the worker stopping
            self._retire(child)
            raise
        if reply[:1] not in (RESULT, RAISED):  # cannot happen; if it does, trust that process no more
            self._retire(child)
            raise ChildFailed(
                "ProtocolError", f"unexpected reply from the task's process: {reply[:80]!r}", retryable=False
            )
        self._idle.put_nowait(child)
        return _decode(reply)

    async def _dispatch(self, request: bytes) -> _Child:
        """Hand ``request`` to an idle child, replacing any that died while idle."""
        while True:
            child = await self._idle.get()
            if child.alive():
                try:
                    # A blocking write, but the idle child is blocked reading it (args are at most 1 MB).
                    child.conn.send_bytes(request)
                    return child
                except OSError:
                    pass
            logger.warning("process pool: process %s died while idle; replacing it", child.pid)
            self._retire(child)

    def _retire(self, child: _Child) -> None:
        """Kill ``child`` now (if it still lives); reap it and start its replacement in the background."""
        if child.alive():
            child.process.kill()
        task = asyncio.get_running_loop().create_task(self._reap_and_replace(child))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reap_and_replace(self, child: _Child) -> None:
        await child.reap()
        self._children.discard(child)
        child.dispose()
        failures = 0
        while not self._closing:
            try:
                self._idle.put_nowait(await self._start_child())
                return
            except (AppLoadError, OSError) as exc:  # OSError: out of processes or file descriptors
                delay = REPLACE_BACKOFF_S[min(failures, len(REPLACE_BACKOFF_S) - 1)]
                failures += 1
                logger.error("process pool: a replacement process failed to start (%s); retrying in %.0fs", exc, delay)
                await asyncio.sleep(delay)

    async def _start_child(self) -> _Child:
        """Spawn a child and wait for its READY; AppLoadError if it cannot import the app."""
        parent_end, child_end = _spawn.Pipe(duplex=True)
        log_level, json_logs = parent_logging()
        process = _spawn.Process(
            target=child_main, name="pgsched-task", args=(self.app_path, child_end, os.getpid(), log_level, json_logs)
        )
        try:
            process.start()
        except BaseException:  # out of processes, say: a retry loop must not leak the pipe too
            parent_end.close()
            child_end.close()
            raise
        child_end.close()  # the child's copy only: EOF then means the child is gone
        child = _Child(process, parent_end)
        self._children.add(child)
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                message = await child.receive()
        except TimeoutError:  # first: TimeoutError is an OSError too
            process.kill()
            message = LOAD_FAILED + f"it was not ready {START_TIMEOUT_S:g}s after it started".encode()
        except (EOFError, OSError):
            message = LOAD_FAILED + describe_exit(await child.reap(), "it").encode()
        except BaseException:
            process.kill()  # close() reaps it
            raise
        if message != READY:
            if child.alive():
                process.kill()
            await child.reap()
            self._children.discard(child)
            child.dispose()
            raise AppLoadError(
                f"a process-pool process could not import the app {self.app_path!r}: "
                f"{message.removeprefix(LOAD_FAILED).decode(errors='replace')}"
            )
        return child


def _request(run: ClaimedRun, args: Mapping[str, Any]) -> dict[str, Any]:
    """What a child needs to run ``run`` as the worker would: its task and args, and what the
    task and log lines see of the run; ``traceparent`` is the worker's span for it."""
    worker_run = running()
    return {
        "id": run.id,
        "task": run.task,
        "attempt": run.attempt,
        "max_attempts": run.max_attempts,
        "args": args,
        "queue": run.queue,
        "worker_id": worker_run.worker_id if worker_run is not None else None,
        "request_id": run.request_id,
        "traceparent": current_traceparent(),
        "parent_results": worker_run.parent_results if worker_run is not None else [],
    }


def _decode(reply: bytes) -> str:
    """A child's reply to a request: the result's JSON text, or the task's exception raised here."""
    if reply[:1] == RESULT:
        return reply[1:].decode()
    error = json.loads(reply[1:])
    if error["control"] == "retry":
        raise Retry(error["after"], error["message"])
    if error["control"] == "cancel":
        raise Cancel(error["message"])
    raise ChildFailed(error["type"], error["message"], error["traceback"], retryable=error["retryable"])


async def _readable(fd: int) -> None:
    """Wait until ``fd`` is readable (data, or EOF)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)

"""The child side of the process pool: one long-lived process that runs sync tasks, one at a time.

A child is started by :mod:`pgsched.process_pool` with the ``spawn`` method: a fresh
interpreter that inherits no threads, sockets or database connections from the worker. It
imports the user's App by its ``module:attribute`` path (functions never cross the process
boundary), says it is ready, then answers one request per run until its pipe closes.

The pipe carries bytes, never pickles. A request is the JSON object
``{"id", "task", "attempt", "max_attempts", "args", "queue", "worker_id", "request_id",
"traceparent"}`` (the last: the worker's span for the run, which the task continues); a reply
is one tag byte and a payload:

    READY          the app is imported; the child takes requests
    LOAD_FAILED    + message: the app cannot be imported here (the child then exits)
    RESULT         + the task's return value as JSON text
    RAISED         + JSON {"type", "message", "traceback", "retryable", "control", "after"}

The child never stops itself between runs: a timeout, a cancel or the worker's shutdown end
it with SIGKILL from the worker, and it dies with the worker (see :func:`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from pgsched.context import RunContext, enter_run
from pgsched.errors import Cancel, Retry
from pgsched.tracing import span_continued

READY = b"+"
LOAD_FAILED = b"!"
RESULT = b"R"
RAISED = b"E"

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0


def child_main(app_path: str, conn: Connection, parent_pid: int, log_level: str | None, json_logs: bool) -> None:
    """The child's entry point (the spawned process's target)."""
    die_with_parent(parent_pid)
    # Ctrl-C (SIGINT) and a service manager's SIGTERM reach every process of the group: the
    # running task must not die of them. The worker decides when a child ends, with SIGKILL.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if log_level is not None:
        from pgsched.logs import configure_logging

        configure_logging(log_level, "json" if json_logs else "text")
    try:
        tasks = _load_tasks(app_path)
    except BaseException as exc:  # noqa: BLE001 - whatever the import raised, the worker must hear why
        conn.send_bytes(LOAD_FAILED + f"{type(exc).__name__}: {exc}".encode())
        return
    conn.send_bytes(READY)
    serve(tasks, conn)


def die_with_parent(parent_pid: int) -> None:
    """Make sure this process does not outlive the worker, even if the worker is SIGKILLed.

    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``): it works
    while a task is stuck in C code holding the GIL, which a watching thread could not. The
    parent is the *thread* that spawned us — the worker's event-loop thread, which lives as
    long as the worker. Elsewhere a daemon thread polls the parent pid.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(
            target=_exit_when_orphaned, args=(parent_pid,), name="pgsched-parent-watch", daemon=True
        ).start()
    if os.getppid() != parent_pid:  # the worker died before the death signal was armed
        os._exit(1)


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _load_tasks(app_path: str) -> dict[str, Any]:
    from pgsched.loader import load_app

    return load_app(app_path).tasks


def serve(tasks: dict[str, Any], conn: Connection) -> None:
    """Answer requests until the worker closes the pipe."""
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        conn.send_bytes(run_request(tasks, request))


def run_request(tasks: dict[str, Any], request: dict[str, Any]) -> bytes:
    """Run one task and encode what happened as a reply."""
    name = request["task"]
    task = tasks.get(name)
    if task is None:  # the app changed on disk between the worker's import and ours
        return _raised("TaskNotFound", f"unknown task {name!r} in the child process's copy of the app", retryable=False)
    # current_run() works here; its ``cancelled`` flag never turns True, since a cancel kills
    # the process instead.
    enter_run(_run_context(request), request["traceparent"])
    try:
        with span_continued(request["traceparent"]):
            value = task.fn(**request["args"])
    except Retry as exc:
        return _raised("Retry", str(exc), control="retry", after=exc.after)
    except Cancel as exc:
        return _raised("Cancel", str(exc), control="cancel")
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: this child serves the next run
        return _raised(
            type(exc).__name__, str(exc) or repr(exc), traceback.format_exc(), retryable=task.retries_on(exc)
        )
    try:
        return RESULT + json.dumps(value, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        return _raised(
            "ResultNotSerialisable", f"the task returned a value that is not JSON-serialisable: {exc}", retryable=False
        )


def _run_context(request: dict[str, Any]) -> RunContext:
    return RunContext(
        request["id"],
        request["task"],
        request["attempt"],
        request["max_attempts"],
        queue=request["queue"],
        worker_id=request["worker_id"],
        request_id=request["request_id"],
        parent_results=request.get("parent_results", []),
    )


def _raised(
    kind: str,
    message: str,
    tb: str | None = None,
    *,
    retryable: bool = True,
    control: str | None = None,
    after: float | None = None,
) -> bytes:
    return (
        RAISED
        + json.dumps(
            {
                "type": kind,
                "message": message,
                "traceback": tb,
                "retryable": retryable,
                "control": control,
                "after": after,
            }
        ).encode()
    )


def parent_logging() -> tuple[str | None, bool]:
    """The worker's log level and whether it writes JSON lines, for its children to copy."""
    root = logging.getLogger()
    if not root.handlers:
        return None, False
    from pgsched.logs import JsonFormatter

    return logging.getLevelName(root.level).lower(), isinstance(root.handlers[0].formatter, JsonFormatter)

"""Execute: run one claimed run's task and turn what happened into an :class:`Outcome`.

Async tasks run in the worker's event loop (cancelled at their ``timeout``); sync tasks run in
the worker's thread pool (where a timeout cannot be enforced: a thread cannot be stopped), or
in its process pool (killed at their ``timeout``, see :mod:`pgsched.process_pool`). Nothing
here touches the database: outcomes go to the completer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import random
import traceback
from collections import abc
from datetime import datetime, timezone
from typing import Any, Mapping

from pgsched.app import Task
from pgsched.errors import Cancel, InvalidArgs, Retry
from pgsched.process_pool import ChildFailed, ProcessPool
from pgsched.run_types import ClaimedRun, Outcome
from pgsched.threads import TaskThreads

logger = logging.getLogger("pgsched.worker")

MAX_BACKOFF_S = 3600.0
MAX_RESULT_BYTES = 1024 * 1024


def backoff_delay(base_s: float, attempt: int) -> float:
    """Exponential backoff with jitter: base * 2^(attempt-1), capped, times 0.5..1.5."""
    return min(base_s * 2.0 ** (attempt - 1), MAX_BACKOFF_S) * random.uniform(0.5, 1.5)


def _error_entry(run: ClaimedRun, worker_id: int, kind: str, message: str, tb: str | None) -> str:
    return json.dumps(
        {
            "attempt": run.attempt,
            "at": datetime.now(timezone.utc).isoformat(),
            "worker_id": worker_id,
            "type": kind,
            "message": message,
            "traceback": tb,
        }
    )


def _failure(
    run: ClaimedRun,
    worker_id: int,
    kind: str,
    message: str,
    tb: str | None = None,
    *,
    retryable: bool = True,
    retry_after: float | None = None,
    backoff_s: float = 1.0,
) -> Outcome:
    """A failed attempt: back to the queue while attempts remain, else the run fails."""
    error = _error_entry(run, worker_id, kind, message, tb)
    if retryable and run.attempt < run.max_attempts:
        delay = retry_after if retry_after is not None else backoff_delay(backoff_s, run.attempt)
        return Outcome(run.id, run.attempt, "queued", error=error, retry_delay_s=delay)
    return Outcome(run.id, run.attempt, "failed", error=error)


def cancelled_on_request(run: ClaimedRun, worker_id: int) -> Outcome:
    """The outcome of a run whose task was stopped because someone cancelled the run."""
    return Outcome(
        run.id,
        run.attempt,
        "cancelled",
        error=_error_entry(run, worker_id, "Cancelled", "cancelled on request while running", None),
    )


class _TimedOut(Exception):
    """The task's ``timeout`` passed: it was cancelled (async) or its process killed."""


def _bound_args(task: Task[Any, Any], args: Any) -> Mapping[str, Any]:
    # A run's args come from jsonb: a dict, which the exact type test passes without the ABC's
    # isinstance (typing.Mapping's goes through typing's __instancecheck__, ~1 µs a run).
    if type(args) is not dict and not isinstance(args, abc.Mapping):
        raise InvalidArgs(f"args must be a JSON object, got {type(args).__name__}")
    task.check_args(args)
    return args


async def execute(
    run: ClaimedRun,
    tasks: Mapping[str, Task[Any, Any]],
    threads: TaskThreads,
    worker_id: int,
    processes: ProcessPool | None = None,
) -> Outcome:
    """Run the task of ``run`` and report the outcome. Never raises, except CancelledError.

    The caller has entered the run (:func:`pgsched.context.enter_run`): what the task sees as
    ``pgsched.current_run()``. Tasks ``processes`` handles run in its child processes.
    """
    task = tasks.get(run.task)
    if task is None:
        known = ", ".join(sorted(tasks)) or "none"
        return _failure(
            run, worker_id, "TaskNotFound", f"unknown task {run.task!r}: this worker knows {known}", retryable=False
        )
    try:
        args = _bound_args(task, run.args)
    except InvalidArgs as exc:
        return _failure(run, worker_id, "InvalidArgs", str(exc), retryable=False)

    value: Any = None
    result: str | None = None  # the value as JSON text, when a child process encoded it already
    try:
        if task.is_async and task.timeout is None:
            value = await task.fn(**args)
        elif processes is not None and processes.handles(task.name):
            result = await _in_process(processes, run, args, task.timeout)
        elif task.is_async:
            value = await _with_deadline(task, args)
        else:
            value = await threads.run(functools.partial(contextvars.copy_context().run, task.fn, **args))
    except asyncio.CancelledError:
        raise
    except _TimedOut:
        return _failure(run, worker_id, "Timeout", f"timed out after {task.timeout:g}s", backoff_s=task.retry_backoff)
    except Retry as exc:
        return _failure(run, worker_id, "Retry", str(exc), retry_after=exc.after, backoff_s=task.retry_backoff)
    except Cancel as exc:
        return Outcome(run.id, run.attempt, "cancelled", error=_error_entry(run, worker_id, "Cancel", str(exc), None))
    except ChildFailed as exc:  # raised in (or the death of) a child process: its type and traceback came along
        return _failure(
            run, worker_id, exc.kind, exc.message, exc.traceback, retryable=exc.retryable, backoff_s=task.retry_backoff
        )
    except BaseException as exc:  # noqa: BLE001 - a task's SystemExit or KeyboardInterrupt must not kill the worker
        return _failure(
            run,
            worker_id,
            type(exc).__name__,
            str(exc) or repr(exc),
            traceback.format_exc(),
            retryable=task.retries_on(exc),
            backoff_s=task.retry_backoff,
        )

    if value is None and result is None:
        result = "null"  # most tasks return nothing: json.dumps(None) costs ~2 µs a run
    elif result is None:
        try:
            result = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            return _failure(
                run,
                worker_id,
                "ResultNotSerialisable",
                f"the task returned a value that is not JSON-serialisable: {exc}",
                retryable=False,
            )
    if len(result) > MAX_RESULT_BYTES:
        return _failure(
            run,
            worker_id,
            "ResultTooLarge",
            f"the task returned {len(result)} bytes of JSON; the limit is {MAX_RESULT_BYTES}",
            retryable=False,
        )
    return Outcome(run.id, run.attempt, "succeeded", result=result)


async def _with_deadline(task: Task[Any, Any], args: Mapping[str, Any]) -> Any:
    """Await an async task, cancelled at its timeout. A TimeoutError the task raises itself
    (a socket's, say) stays the task's own error, not a timeout of the run."""
    deadline = asyncio.timeout(task.timeout)
    try:
        async with deadline:
            return await task.fn(**args)
    except TimeoutError:
        if deadline.expired():
            raise _TimedOut from None
        raise


async def _in_process(processes: ProcessPool, run: ClaimedRun, args: Mapping[str, Any], timeout_s: float | None) -> str:
    """The result (JSON text) of a run in a child process, killed at ``timeout_s``."""
    try:
        return await processes.call(run, args, timeout_s)
    except TimeoutError:  # only the pool's own deadline: the task's exceptions arrive as ChildFailed
        raise _TimedOut from None

"""The run a task is executing, for the task itself: ``pgsched.current_run()``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

from pgsched.errors import PgschedError


@dataclass
class RunContext:
    """What a task may know about its own run."""

    id: int
    task: str
    attempt: int
    max_attempts: int
    # Set when someone asks to cancel this run. Async tasks are cancelled outright; a sync
    # task (in a thread nobody can stop) should check this now and then and return early.
    cancelled: bool = False


_current: ContextVar[RunContext] = ContextVar("pgsched_current_run")


def current_run() -> RunContext:
    """The run being executed, from inside a task (sync or async)."""
    try:
        return _current.get()
    except LookupError:
        raise PgschedError("current_run() is only available inside a task run by a pgsched worker") from None


def enter_run(context: RunContext) -> None:
    _current.set(context)


def inside_task() -> bool:
    """Whether this code runs inside a task a worker is executing (its thread or process too)."""
    return _current.get(None) is not None

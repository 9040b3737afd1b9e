"""What the code running now is doing for pgsched: the run a task is executing (for the task
itself: ``pgsched.current_run()``, and for log lines about it), and the request and trace an
enqueue made here belongs to, which the new run keeps.

Context variables, so each asyncio task, and each thread started with a copy of the context
(the worker's thread pool does), sees its own.
"""

from __future__ import annotations

import re
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

from pgsched.errors import InvalidInput, PgschedError

# What a request id may be: visible ASCII, bounded, so no log line or terminal ever shows a
# control character from one. Schema 0015's check on runs.request_id says the same.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID}}}")


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
    queue: str = "default"
    worker_id: int | None = None
    # The X-Request-ID of the API request that queued the run (runs it queues keep it too).
    request_id: str | None = None
    # A workflow step's parents' results, in the order of its ``after`` (a chord callback's: its
    # header's order); empty for a run without parents.
    parent_results: list[Any] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an enqueue made here comes from: the API request (its X-Request-ID) and, when
    OpenTelemetry has no current span in this process, the W3C traceparent to continue."""

    request_id: str | None = None
    traceparent: str | None = None


_current: ContextVar[RunContext] = ContextVar("pgsched_current_run")
_NOWHERE = Origin()
_origin: ContextVar[Origin] = ContextVar("pgsched_origin", default=_NOWHERE)  # frozen: safe to share


def current_run() -> RunContext:
    """The run being executed, from inside a task (sync or async)."""
    try:
        return _current.get()
    except LookupError:
        raise PgschedError("current_run() is only available inside a task run by a pgsched worker") from None


def running() -> RunContext | None:
    """The run being executed here, if any (what log lines are about)."""
    return _current.get(None)


def enter_run(context: RunContext, traceparent: str | None = None) -> None:
    """Executing ``context``'s run from here on (in this asyncio task or thread): runs it
    queues keep its request id and continue ``traceparent``, the run's own span."""
    _current.set(context)
    # Most runs came from no request and no trace: the shared empty Origin spares a frozen
    # dataclass per run (~1 µs, its __init__ sets each field through object.__setattr__).
    if context.request_id is None and traceparent is None:
        _origin.set(_NOWHERE)
    else:
        _origin.set(Origin(context.request_id, traceparent))


def inside_task() -> bool:
    """Whether this code runs inside a task a worker is executing (its thread or process too)."""
    return _current.get(None) is not None


def origin() -> Origin:
    return _origin.get()


def enter_origin(new: Origin) -> Token[Origin]:
    """Enqueues from here on come from ``new`` (until :func:`leave_origin` with the token)."""
    if new.request_id is not None and not is_request_id(new.request_id):
        raise InvalidInput(f"a request id is 1-{MAX_REQUEST_ID} visible ASCII characters, got {new.request_id!r}")
    return _origin.set(new)


def leave_origin(token: Token[Origin]) -> None:
    _origin.reset(token)


def is_request_id(value: str) -> bool:
    return _REQUEST_ID.fullmatch(value) is not None

"""Calling a task the Celery way: what ``task.delay(...)``, ``task.apply_async(...)`` and the
Celery options of ``@app.task`` mean in pgsched's terms. Pure: no I/O, so ``Task`` (sync and
asyncio alike) and the beat_schedule importer share it.

- Positional args are bound to the task's parameters by its signature and stored by name: a
  run's args stay a JSON object that any reader (SQL, the API, another language) can read.
- ``countdown`` is pgsched's ``delay``, ``eta`` its ``run_at``, ``task_id`` its ``unique_key``.
- ``priority`` passes through unchanged: pgsched runs lower numbers first, as Celery does on
  Redis (0 before 9). On RabbitMQ, where higher runs first, negate it.
"""

from __future__ import annotations

import inspect
import string
from datetime import datetime
from typing import Any, Mapping, Sequence

from pgsched.errors import InvalidArgs, InvalidInput
from pgsched.queue_settings import check_rate

# apply_async's options, and the Celery ones pgsched has no counterpart for: passed to delay()
# they would silently become task arguments in Celery (countdown=60 as an argument).
CELERY_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "priority",
        "task_id",
        "retry",
        "retry_policy",
        "routing_key",
        "exchange",
        "link",
        "link_error",
        "headers",
        "serializer",
        "compression",
        "shadow",
        "soft_time_limit",
        "time_limit",
        "ignore_result",
        "add_to_parent",
        "connection",
        "producer",
        "publisher",
    }
)

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def bind_by_name(
    task: str, signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any], *, partial: bool = False
) -> dict[str, Any]:
    """``args`` and ``kwargs`` as one mapping of parameter name to value, the way a run stores
    them; InvalidArgs if they do not fit, or fit only a parameter a name cannot reach.
    ``partial``: some may be missing (a workflow step's, which its parents' results complete)."""
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise InvalidArgs(f"args must be a tuple or list of positional arguments, got {type(args).__name__}")
    if not isinstance(kwargs, Mapping):
        raise InvalidArgs(f"kwargs must be a dict, got {type(kwargs).__name__}")
    try:
        bound = signature.bind_partial(*args, **kwargs) if partial else signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgs(f"args do not fit {task}{signature}: {exc}") from None
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif kind in _NAMED:
            named[name] = value
        else:  # *args or a positional-only parameter: fn(**args) could not pass it
            raise InvalidArgs(
                f"{task}{signature}: parameter {name!r} takes values by position only, and a run stores its "
                "args by name; make it a named parameter"
            )
    return named


def refuse_celery_options(task: str, signature: inspect.Signature, kwargs: Mapping[str, Any]) -> None:
    """A Celery option passed to ``delay`` is a mistake (Celery would make it a task argument),
    unless the task really has a parameter of that name."""
    parameters = {name for name, p in signature.parameters.items() if p.kind in _NAMED}
    misplaced = sorted(name for name in kwargs if name in CELERY_OPTIONS and name not in parameters)
    if misplaced:
        options = ", ".join(f"{name}=" for name in misplaced)
        raise InvalidInput(
            f"{options} passed to {task}.delay() is a Celery option, not an argument of {task}{signature}: "
            f"use {task}.apply_async(args, kwargs, {misplaced[0]}=...)"
        )


def schedule_of(countdown: Any, eta: Any) -> tuple[datetime | None, float]:
    """``(run_at, delay)`` for apply_async's ``eta`` and ``countdown``."""
    if countdown is not None and eta is not None:
        raise InvalidInput("countdown and eta cannot both be given: countdown is seconds from now, eta an instant")
    if eta is not None and (not isinstance(eta, datetime) or eta.tzinfo is None):
        raise InvalidInput(f"eta must be a timezone-aware datetime (a naive one is a guess at a timezone), got {eta!r}")
    if countdown is not None and (
        isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or not 0 <= countdown < 10**9
    ):
        raise InvalidInput(f"countdown must be a number of seconds >= 0, got {countdown!r}")
    return eta, float(countdown or 0.0)


def check_task_id(task_id: Any) -> str | None:
    if task_id is not None and (not isinstance(task_id, str) or not task_id.strip() or len(task_id) > 200):
        raise InvalidInput(f"task_id must be a non-empty string of at most 200 characters, got {task_id!r}")
    return task_id


def attempts_of(task: str, max_attempts: int | None, max_retries: int | None) -> int:
    """Celery's ``max_retries`` counts retries; pgsched's ``max_attempts`` counts attempts."""
    if max_retries is None:
        return 3 if max_attempts is None else max_attempts
    if max_attempts is not None and max_attempts != max_retries + 1:
        raise InvalidInput(
            f"task {task!r}: max_retries={max_retries!r} and max_attempts={max_attempts!r} disagree "
            "(max_attempts is max_retries + 1); give one of them"
        )
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise InvalidInput(f"task {task!r}: max_retries must be an integer >= 0, got {max_retries!r}")
    return max_retries + 1


def timeout_of(task: str, timeout: float | None, time_limit: float | None) -> float | None:
    """Celery's ``time_limit`` is pgsched's ``timeout`` (enforced for async and process-pool tasks)."""
    if time_limit is not None and timeout is not None and time_limit != timeout:
        raise InvalidInput(f"task {task!r}: time_limit and timeout are the same setting; give one of them")
    return time_limit if time_limit is not None else timeout


def rate_limit_of(task: str, rate_limit: Any) -> str | None:
    """Celery's ``rate_limit`` ("10/s", "100/m", "5/h", or a number: per second) as the task's
    rate, enforced over all workers (not per worker process as Celery's is)."""
    try:
        return check_rate(rate_limit)
    except InvalidInput as exc:
        raise InvalidInput(f"task {task!r}: rate_limit: {exc}") from None


def concurrency_key_fields(task: str, template: Any, signature: inspect.Signature) -> tuple[str, ...]:
    """The args a ``concurrency_key`` format string names ("customer:{customer_id}"), each a
    parameter of the task; a template naming none, or a parameter the task lacks, is refused."""
    if template is None:
        return ()
    if not isinstance(template, str):
        raise InvalidInput(f"task {task!r}: concurrency_key must be a format string, got {template!r}")
    try:
        fields = tuple(name for _, name, spec, conv in string.Formatter().parse(template) if name is not None)
    except ValueError as exc:
        raise InvalidInput(f"task {task!r}: concurrency_key {template!r} is not a format string: {exc}") from None
    if not fields or any(not name.isidentifier() for name in fields):
        raise InvalidInput(
            f"task {task!r}: concurrency_key {template!r} must name the task's arguments in braces, "
            "e.g. 'customer:{customer_id}'"
        )
    unknown = [name for name in fields if name not in signature.parameters]
    if unknown:
        raise InvalidInput(f"task {task!r}: concurrency_key names {unknown[0]!r}, not a parameter of the task")
    return fields


def concurrency_key_of(task: str, template: str, fields: tuple[str, ...], args: Mapping[str, Any]) -> str:
    """A run's key from its args; an argument the key needs and the run lacks is refused."""
    missing = [name for name in fields if name not in args]
    if missing:
        raise InvalidArgs(f"task {task!r}: its concurrency_key {template!r} needs the argument {missing[0]!r}")
    return template.format_map({name: args[name] for name in fields})


def check_autoretry_for(task: str, autoretry_for: Any) -> tuple[type[BaseException], ...] | None:
    if autoretry_for is None:
        return None
    classes = tuple(autoretry_for) if isinstance(autoretry_for, (tuple, list)) else (autoretry_for,)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in classes):
        raise InvalidInput(f"task {task!r}: autoretry_for must be exception classes, got {autoretry_for!r}")
    return classes

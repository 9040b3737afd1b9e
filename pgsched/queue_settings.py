"""Settings per queue (the ``pgsched.queues`` table) and per task (``pgsched.task_settings``):
``paused``, ``max_running``, ``rate`` + ``burst`` (a token bucket of run starts, ``"100/m"``)
and, for a queue, ``key_max_running`` (runs of one concurrency key at once) and ``fair`` (the
claim takes tenants and concurrency keys in turns, not in id order). Read and changed
by the CLI (`pgsched queues …`, `pgsched tasks …`) and the REST API (``/queues/{name}``,
``/tasks/{name}``). A plain SQL UPDATE of the tables works the same: their triggers tell the
workers, whose claim enforces them (see :mod:`pgsched.fetcher`). A queue or task without a row
has the defaults: not paused, no limit.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.enqueue import check_queue_name, check_task_name
from pgsched.errors import InvalidInput
from pgsched.sql import queries

# The column is an integer: a larger limit could not be stored (and could never bind).
MAX_RUNNING_LIMIT = 2**31 - 1
# The columns' checks (0020): 1-7 digits per s, m or h; a burst of 1 to a million.
_RATE = re.compile(r"[1-9][0-9]{0,6}/[smh]")
MAX_BURST = 1_000_000
COMMON = ("paused", "max_running", "rate", "burst")  # the settings a queue and a task both have
RATE_RULE = "a rate is N/s, N/m or N/h with N a whole number from 1 to 9999999 (e.g. 100/m), or none"


class Keep(enum.Enum):
    """A setting left as it is (``set_queue_settings``'s default for each one)."""

    KEEP = "keep"


KEEP = Keep.KEEP


def check_max_running(value: Any) -> int | None:
    """``value`` if it is None (no limit) or an integer from 1 to 2**31-1; else InvalidInput."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RUNNING_LIMIT:
        raise InvalidInput(
            f"max_running must be an integer from 1 to {MAX_RUNNING_LIMIT}, or none for no limit; got {value!r}"
        )
    return value


def parse_max_running(text: str) -> int | None:
    """The CLI's ``--max-running``: a number, or ``none`` to clear the limit."""
    if text.strip().lower() == "none":
        return None
    try:
        number = int(text.strip(), 10)
    except ValueError:
        raise InvalidInput(
            f"max_running must be an integer from 1 to {MAX_RUNNING_LIMIT}, or none for no limit; got {text!r}"
        ) from None
    return check_max_running(number)


def parse_limit(field: str, text: str, maximum: int = MAX_RUNNING_LIMIT) -> int | None:
    """A CLI number option (``--key-max-running``, ``--burst``): a number, or ``none``."""
    if text.strip().lower() == "none":
        return None
    try:
        number = int(text.strip(), 10)
    except ValueError:
        raise InvalidInput(f"{field} must be an integer from 1 to {maximum}, or none; got {text!r}") from None
    return check_limit(field, number, maximum)


def check_limit(field: str, value: Any, maximum: int = MAX_RUNNING_LIMIT) -> int | None:
    """``value`` if it is None or an integer from 1 to ``maximum``; else InvalidInput naming ``field``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInput(f"{field} must be an integer from 1 to {maximum}, or none; got {value!r}")
    return value


def check_rate(value: Any) -> str | None:
    """A rate as the database keeps it (``"100/m"``), or None; else InvalidInput. A whole
    number is per second, as Celery reads one (``rate_limit=10`` or ``"10"``)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value}/s"
    if not isinstance(value, str):
        raise InvalidInput(f"{RATE_RULE}; got {value!r}")
    text = f"{value}/s" if value.isascii() and value.isdigit() else value
    if not _RATE.fullmatch(text):
        raise InvalidInput(f"{RATE_RULE}; got {value!r}")
    return text


def parse_rate(text: str) -> str | None:
    """The CLI's ``--rate``: ``100/m``, or ``none`` to clear the rate."""
    return None if text.strip().lower() == "none" else check_rate(text.strip())


def rate_per_s(rate: str) -> float:
    """Starts a second a rate allows (``"100/m"`` -> 1.667), as ``pgsched.rate_per_s`` computes it."""
    count, per = rate.split("/")
    return int(count) / {"s": 1, "m": 60, "h": 3600}[per]


def get_queue_settings(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """One queue's settings: name, paused, max_running, updated_at (None: never set)."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["queue_settings_get"], {"name": check_queue_name(name)}).fetchone()
    assert row is not None  # one row, whether the queue has settings or not
    return row


def list_queue_settings(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every queue that has runs or settings: its settings, queued and running runs."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["queue_settings_list"]).fetchall()


def set_queue_settings(
    conn: psycopg.Connection,
    name: str,
    *,
    paused: bool | Keep = KEEP,
    max_running: int | Keep | None = KEEP,
    rate: str | Keep | None = KEEP,
    burst: int | Keep | None = KEEP,
    key_max_running: int | Keep | None = KEEP,
    fair: bool | Keep = KEEP,
) -> dict[str, Any]:
    """Change the settings given (the others stay); workers see the change within a second.
    Clearing the rate clears the burst; a new rate or burst starts with a full bucket."""
    check_queue_name(name)
    changes = _checked_changes(paused=paused, max_running=max_running, rate=rate, burst=burst)
    if key_max_running is not KEEP:
        check_limit("key_max_running", key_max_running)
    if fair is not KEEP and not isinstance(fair, bool):
        raise InvalidInput(f"fair must be true or false, got {fair!r}")
    if not any(changes[f"set_{field}"] for field in COMMON) and key_max_running is KEEP and fair is KEEP:
        raise InvalidInput("nothing to change: give paused, max_running, rate, burst, key_max_running or fair")
    params = {**changes, **_param("key_max_running", key_max_running), **_param("fair", fair), "name": name}
    return _upsert(conn, "queue_settings_set", params, f"queue {name!r}")


def get_task_settings(conn: psycopg.Connection, task: str) -> dict[str, Any]:
    """One task's settings: name, paused, max_running, rate, burst, updated_at (None: never set)."""
    check_task_name(task)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["task_settings_get"], {"task": task}).fetchone()
    assert row is not None  # one row, whether the task has settings or not
    return row


def list_task_settings(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every task with settings: its settings, queued and running runs, runs held back."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["task_settings_list"]).fetchall()


def set_task_settings(
    conn: psycopg.Connection,
    task: str,
    *,
    paused: bool | Keep = KEEP,
    max_running: int | Keep | None = KEEP,
    rate: str | Keep | None = KEEP,
    burst: int | Keep | None = KEEP,
) -> dict[str, Any]:
    """Change the settings given of a task (over every queue its runs are in); the others stay."""
    check_task_name(task)
    changes = _checked_changes(paused=paused, max_running=max_running, rate=rate, burst=burst)
    if not any(changes[f"set_{field}"] for field in COMMON):
        raise InvalidInput("nothing to change: give paused, max_running, rate or burst")
    return _upsert(conn, "task_settings_set", {**changes, "name": task}, f"task {task!r}")


def _param(field: str, value: Any) -> dict[str, Any]:
    return {f"set_{field}": value is not KEEP, field: None if value is KEEP else value}


def _checked_changes(
    *, paused: bool | Keep, max_running: int | Keep | None, rate: str | Keep | None, burst: int | Keep | None
) -> dict[str, Any]:
    """The statement's parameters for the settings every scope has, checked."""
    if paused is not KEEP and not isinstance(paused, bool):
        raise InvalidInput(f"paused must be true or false, got {paused!r}")
    if max_running is not KEEP:
        check_max_running(max_running)
    if rate is not KEEP:
        rate = check_rate(rate)
    if burst is not KEEP:
        check_limit("burst", burst, MAX_BURST)
    if burst not in (KEEP, None) and rate is None:
        raise InvalidInput("burst needs a rate: a burst without a rate limits nothing")
    return {
        **_param("paused", paused),
        **_param("max_running", max_running),
        **_param("rate", rate),
        **_param("burst", burst),
    }


def _upsert(conn: psycopg.Connection, query: str, params: dict[str, Any], what: str) -> dict[str, Any]:
    try:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(queries[query], params).fetchone()
    except psycopg.errors.CheckViolation as exc:
        if exc.diag.constraint_name and exc.diag.constraint_name.endswith("burst_needs_a_rate"):
            raise InvalidInput(f"burst needs a rate: {what} has none; give a rate too") from None
        raise
    assert row is not None  # the upsert always returns its row
    return row

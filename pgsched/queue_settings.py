"""Settings per queue (the ``pgsched.queues`` table): ``paused`` and ``max_running``, read and
changed by the CLI (`pgsched queues …`) and the REST API (``/queues/{name}``). A plain SQL
UPDATE of the table works the same: its trigger tells the workers, whose claim enforces them
(see :mod:`pgsched.fetcher`). A queue without a row has the defaults: not paused, no limit.
"""

from __future__ import annotations

import enum
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.enqueue import check_queue_name
from pgsched.errors import InvalidInput
from pgsched.sql import queries

# The column is an integer: a larger limit could not be stored (and could never bind).
MAX_RUNNING_LIMIT = 2**31 - 1


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
) -> dict[str, Any]:
    """Change the settings given (the others stay); workers see the change within a second."""
    check_queue_name(name)
    if paused is not KEEP and not isinstance(paused, bool):
        raise InvalidInput(f"paused must be true or false, got {paused!r}")
    if max_running is not KEEP:
        check_max_running(max_running)
    if paused is KEEP and max_running is KEEP:
        raise InvalidInput("nothing to change: give paused or max_running")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            queries["queue_settings_set"],
            {
                "name": name,
                "set_paused": paused is not KEEP,
                "paused": None if paused is KEEP else paused,
                "set_max_running": max_running is not KEEP,
                "max_running": None if max_running is KEEP else max_running,
            },
        ).fetchone()
    assert row is not None  # the upsert always returns its row
    return row

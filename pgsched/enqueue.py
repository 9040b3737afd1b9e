"""Enqueue: the first hop of the data path. Turns a task name and its args into rows of
``pgsched.runs``; the table's AFTER INSERT trigger sends the NOTIFY that wakes workers.

Every function takes the connection to write on. Pass your own (in a transaction) and the
run exists if and only if your transaction commits. Each run keeps where it came from: the
caller's trace context and the API request's id (:func:`origin_params`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgsched.context import origin
from pgsched.errors import InvalidInput
from pgsched.instants import check_readable
from pgsched.sql import queries
from pgsched.tracing import current_traceparent

MAX_ARGS_BYTES = 1024 * 1024
MAX_ATTEMPTS = 1000
MAX_KEY_CHARS = 200
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")


def check_queue_name(queue: Any) -> str:
    """``queue`` if it is a valid queue name (runs' and queues' check in SQL); else InvalidInput."""
    if not isinstance(queue, str) or not _QUEUE_NAME.fullmatch(queue):
        raise InvalidInput(
            f"queue {queue!r} is not a valid name: 1-63 characters of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return queue


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Where and when a run goes; validated on creation with messages that name the field."""

    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    run_at: datetime | None = None
    delay: float = 0.0
    unique_key: str | None = None
    tenant: str | None = None
    # Not started by then, the run never starts: an aware datetime, or seconds from now.
    expires: float | datetime | None = None
    # With the queue's key_max_running, at most that many runs of one key run at once.
    concurrency_key: str | None = None

    def __post_init__(self) -> None:
        check_queue_name(self.queue)
        if isinstance(self.priority, bool) or not isinstance(self.priority, int) or not -100 <= self.priority <= 100:
            raise InvalidInput(f"priority must be an integer between -100 and 100, got {self.priority!r}")
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or not 1 <= self.max_attempts <= MAX_ATTEMPTS
        ):
            raise InvalidInput(f"max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, got {self.max_attempts!r}")
        if self.run_at is not None and (not isinstance(self.run_at, datetime) or self.run_at.tzinfo is None):
            raise InvalidInput(f"run_at must be a timezone-aware datetime, got {self.run_at!r}")
        if isinstance(self.delay, bool) or not isinstance(self.delay, (int, float)) or not 0 <= self.delay < 10**9:
            raise InvalidInput(f"delay must be a number of seconds >= 0, got {self.delay!r}")
        if self.run_at is not None:
            check_readable("run_at", self.run_at, plus_s=self.delay)
        if self.unique_key is not None and (
            not isinstance(self.unique_key, str) or not self.unique_key.strip() or len(self.unique_key) > 200
        ):
            raise InvalidInput(
                f"unique_key must be a non-empty string of at most 200 characters, got {self.unique_key!r}"
            )
        check_no_nul("unique_key", self.unique_key)
        if self.tenant is not None and (
            not isinstance(self.tenant, str) or not self.tenant.strip() or len(self.tenant) > 200
        ):
            raise InvalidInput(f"tenant must be a non-empty string of at most 200 characters, got {self.tenant!r}")
        check_no_nul("tenant", self.tenant)
        if self.expires is not None:
            check_expires(self.expires, self.run_at, self.delay)
        check_concurrency_key(self.concurrency_key)


def check_concurrency_key(key: Any) -> None:
    """1-200 characters, not only blanks, no NUL: the column's check (0020), said here first."""
    if key is not None and (not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS):
        raise InvalidInput(
            f"concurrency_key must be a non-empty string of at most {MAX_KEY_CHARS} characters, got {key!r}"
        )
    check_no_nul("concurrency_key", key)


def check_expires(expires: Any, run_at: datetime | None, delay: float) -> None:
    """``expires`` is an aware datetime or seconds from now, later than the run is due: a run
    that expires before it is due would never start, which is surely not what was meant."""
    now = datetime.now(timezone.utc)
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            raise InvalidInput(f"expires must be a timezone-aware datetime or seconds from now, got {expires!r}")
        check_readable("expires", expires)
        expiry = expires
    elif isinstance(expires, bool) or not isinstance(expires, (int, float)) or not 0 < expires < 10**9:
        raise InvalidInput(f"expires must be a timezone-aware datetime or seconds from now (> 0), got {expires!r}")
    else:
        expiry = now + timedelta(seconds=expires)
    due = (run_at or now) + timedelta(seconds=delay)
    if expiry <= due:
        raise InvalidInput(
            f"expires ({expiry.isoformat()}) is not after the run is due ({due.isoformat()}): it would never start"
        )


def check_task_name(task: str) -> None:
    if not isinstance(task, str) or not task.strip() or len(task) > 200:
        raise InvalidInput(f"task must be a non-empty name of at most 200 characters, got {task!r}")
    check_no_nul("task", task)


def check_no_nul(field: str, value: str | None) -> None:
    """PostgreSQL text cannot hold NUL: say so here rather than as a driver error."""
    if value is not None and "\x00" in value:
        raise InvalidInput(f"{field} cannot contain NUL (\\x00) characters")


# Built once: json.dumps with non-default options builds a new encoder on every call, which
# was most of the cost of encoding a bulk enqueue's args.
_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode_args_text(args: Mapping[str, Any] | None) -> str:
    """Args as JSON text, checked to be a JSON object of at most 1 MB."""
    if args is None or (type(args) is dict and not args):
        return "{}"  # a no-argument task's args, the commonest of all: nothing to encode
    if type(args) is not dict and not isinstance(args, Mapping):
        raise InvalidInput(f"args must be a JSON object (a dict), got {type(args).__name__}")
    try:
        text = _JSON.encode(args)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"args are not JSON-serialisable: {exc}") from None
    if len(text) > MAX_ARGS_BYTES:
        raise InvalidInput(f"args are {len(text)} bytes of JSON; the limit is {MAX_ARGS_BYTES}")
    return text


def encode_args(args: Mapping[str, Any] | None) -> Jsonb:
    """Args as a jsonb parameter (see :func:`encode_args_text`)."""
    return Jsonb(encode_args_text(args), dumps=str)  # already JSON: passed through as is


# The columns' defaults (0001): a run that asks for nothing else sends its task and args only.
_COLUMN_DEFAULTS = RunOptions()


def _insert_statement(task: str, args: Jsonb | str, options: RunOptions) -> tuple[str, Any]:
    """The statement for ``options`` and its parameters. Most enqueues are due now, in the
    default queue, without key, tenant or trace: those send 2 parameters (run_insert_bare)
    instead of 9, whose conversion and dump were ~2.5 us of the client's ~100 us a call."""
    if options.unique_key:
        return queries["run_insert_unique"], _insert_params(task, args, options)
    if not _is_plain(options):
        return queries["run_insert"], _insert_params(task, args, options)
    trace_context = current_traceparent()
    request_id = origin().request_id
    if options == _COLUMN_DEFAULTS and trace_context is None and request_id is None:
        return queries["run_insert_bare"], {"task": task, "args": args}
    return queries["run_insert_now"], {
        "task": task,
        "args": args,
        "queue": options.queue,
        "priority": options.priority,
        "max_attempts": options.max_attempts,
        "tenant": options.tenant,
        "trace_context": trace_context,
        "request_id": request_id,
        "concurrency_key": options.concurrency_key,
    }


def _insert_params(task: str, args: Jsonb | str, options: RunOptions) -> dict[str, Any]:
    """run_insert's (and run_insert_unique's) parameters."""
    return {
        "task": task,
        "args": args,
        "queue": options.queue,
        "priority": options.priority,
        "run_at": options.run_at,
        "delay": float(options.delay),
        "max_attempts": options.max_attempts,
        "unique_key": options.unique_key,
        "tenant": options.tenant,
        "expires_at": options.expires if isinstance(options.expires, datetime) else None,
        "expires_in": None if isinstance(options.expires, datetime) else options.expires,
        "concurrency_key": options.concurrency_key,
        **origin_params(),
    }


def origin_params() -> dict[str, str | None]:
    """Where a run queued here comes from: the caller's trace context and API request id."""
    return {"trace_context": current_traceparent(), "request_id": origin().request_id}


def _is_plain(options: RunOptions) -> bool:
    """Due now, no idempotency key, no expiry: most enqueues, which run_insert_now serves."""
    return options.unique_key is None and options.run_at is None and not options.delay and options.expires is None


def insert_run(conn: psycopg.Connection, task: str, args: Jsonb | str, options: RunOptions) -> tuple[int, bool]:
    """INSERT one run (one round trip): (its id, True); with a unique_key that is already
    taken, (the existing run's id, False). ``args``: a Jsonb, or JSON text from
    :func:`encode_args_text` (cheaper to send: a plain string the server reads as jsonb)."""
    query, params = _insert_statement(task, args, options)
    row = conn.execute(query, params).fetchone()
    assert row is not None  # run_insert_unique answers with the key's holder, wherever it is (0037)
    return int(row[0]), bool(row[1])


async def insert_run_async(
    conn: psycopg.AsyncConnection, task: str, args: Jsonb | str, options: RunOptions
) -> tuple[int, bool]:
    """The asyncio twin of :func:`insert_run`."""
    query, params = _insert_statement(task, args, options)
    cursor = await conn.execute(query, params)
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


async def insert_run_returning_async(
    conn: psycopg.AsyncConnection, task: str, args: Jsonb | str, options: RunOptions
) -> dict[str, Any]:
    """INSERT one run without a unique_key and return its row, every column :func:`pgsched.runs.get_run`
    reads, in the same statement (what the REST API answers with)."""
    if options.unique_key is not None:
        raise InvalidInput("insert_run_returning_async takes no unique_key: use insert_run_async")
    params = _insert_params(task, args, options)
    async with conn.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(queries["run_insert_returning"], params)
        row = await cursor.fetchone()
    assert row is not None
    return row


def _copy_text(
    task: str, ids: list[int], all_args: list[str], options: RunOptions, run_at: datetime, keys: list[str | None] | None
) -> bytes:
    """COPY text-format rows, built as one string: write_row's per-value adaptation was the
    largest cost of a bulk enqueue (~18 us a row). JSON from the encoder is printable ASCII,
    so a backslash is the only character COPY needs escaped; the queue name is validated."""
    came_from = "\t".join(_copy_value(value) for value in origin_params().values())
    fixed = (
        f"\t{options.queue}\t{options.priority}\t{run_at.isoformat()}\t{options.max_attempts}"
        f"\t{_copy_value(options.tenant)}\t{came_from}\t{_copy_value(options.concurrency_key)}\n"
    )
    name = _copy_escape(task)
    if keys is not None:  # a key per run (the task derives them): the row's last column differs
        fixed = fixed[: fixed.rindex("\t") + 1]
        return "".join(
            f"{run_id}\t{name}\t{args.replace(chr(92), chr(92) * 2)}{fixed}{_copy_value(key)}\n"
            for run_id, args, key in zip(ids, all_args, keys)
        ).encode()
    return "".join(
        f"{run_id}\t{name}\t{args.replace(chr(92), chr(92) * 2)}{fixed}" for run_id, args in zip(ids, all_args)
    ).encode()


def _copy_value(value: str | None) -> str:
    return "\\N" if value is None else _copy_escape(value)


def _copy_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _check_bulk(options: RunOptions) -> None:
    if options.unique_key is not None:
        raise InvalidInput("unique_key applies to single enqueues, not to enqueue_many")


def insert_runs(
    conn: psycopg.Connection,
    task: str,
    all_args: list[str],
    options: RunOptions,
    keys: list[str | None] | None = None,
) -> list[int]:
    """Bulk enqueue with COPY (one NOTIFY for the whole batch); returns the new ids in order.
    ``keys``: each run's concurrency key (None: the options' for all)."""
    _check_bulk(options)
    if not all_args:
        return []
    # Reserve first: on the caller's idle non-autocommit connection this opens the caller's
    # transaction, so the block below is a savepoint in it (not a BEGIN/COMMIT of its own).
    ids, run_at = conn.execute(
        queries["run_reserve_ids"], {"n": len(all_args), "run_at": options.run_at, "delay": float(options.delay)}
    ).fetchone()  # type: ignore[misc]
    with conn.transaction():
        with conn.cursor().copy(queries["run_copy"]) as copy:
            copy.write(_copy_text(task, ids, all_args, options, run_at, keys))
    return list(ids)


async def insert_runs_async(
    conn: psycopg.AsyncConnection,
    task: str,
    all_args: list[str],
    options: RunOptions,
    keys: list[str | None] | None = None,
) -> list[int]:
    """The asyncio twin of :func:`insert_runs`."""
    _check_bulk(options)
    if not all_args:
        return []
    cursor = await conn.execute(  # first, as in insert_runs: then the block below is a savepoint
        queries["run_reserve_ids"], {"n": len(all_args), "run_at": options.run_at, "delay": float(options.delay)}
    )
    ids, run_at = await cursor.fetchone()  # type: ignore[misc]
    async with conn.transaction():
        async with conn.cursor().copy(queries["run_copy"]) as copy:
            await copy.write(_copy_text(task, ids, all_args, options, run_at, keys))
    return list(ids)

"""Inspect and steer runs: what the CLI (and the API) call. One function per operation.

Each takes an optional ``tenant``: given, the function sees and changes only that tenant's runs
(the queries filter on it), and another tenant's run is "not found".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, NoReturn

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgsched.errors import InvalidInput, RunNotFound, RunStateConflict
from pgsched.sql import queries

RUN_STATUSES = ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
MAX_LIST_LIMIT = 1000
COUNT_CAP = 10_000  # counts of matching runs stop here ("10,000+")
# Ids an args search reads a page: containment costs ~0.3 µs a row (10^6 runs in 250-320 ms,
# benchmarks.ui), so a page stays near 30 ms however long the history.
ARGS_SCAN_WINDOW = 100_000
FAILURE_GROUPS_SHOWN = 200


def check_run_id(run_id: Any) -> int:
    if isinstance(run_id, bool) or not isinstance(run_id, int) or not 0 < run_id < 2**63:
        raise InvalidInput(f"a run id is a positive integer, got {run_id!r}")
    return run_id


def get_run(conn: psycopg.Connection, run_id: int, *, tenant: str | None = None) -> dict[str, Any]:
    """Every column of one run."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["run_get"], {"id": check_run_id(run_id), "tenant": tenant}).fetchone()
    if row is None:
        raise RunNotFound(f"no run with id {run_id}")
    return row


def list_runs(
    conn: psycopg.Connection,
    *,
    status: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    job: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    finished_after: datetime | None = None,
    finished_before: datetime | None = None,
    run_id: int | None = None,
    args: dict[str, Any] | None = None,
    error_type: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
    tenant: str | None = None,
    scan_floor: int | None = None,
) -> list[dict[str, Any]]:
    """Runs newest first; pass the last id seen as ``before_id`` for the next page.

    ``job`` is a scheduled job's name. The time filters are half-open windows: ``*_after``
    includes its instant, ``*_before`` excludes it; each must carry a timezone. ``args``
    matches runs whose args contain it (``{"customer": 42}``); ``error_type`` the type of a
    run's last error. ``scan_floor``: read no run with a lower id (see :func:`page_runs`).
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    params = _run_list_params(
        status=status,
        queue=queue,
        task=task,
        job=job,
        created_after=created_after,
        created_before=created_before,
        finished_after=finished_after,
        finished_before=finished_before,
        run_id=run_id,
        args=args,
        error_type=error_type,
        limit=limit,
        before_id=before_id,
        tenant=tenant,
        scan_floor=scan_floor,
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["run_list"], params).fetchall()


@dataclass(frozen=True)
class RunsPage:
    """One page of :func:`page_runs`."""

    runs: list[dict[str, Any]]
    older: int | None  # the next page's before_id; None: no older run can match
    searched_from: int | None  # an args search's lowest id read on this page; else None


def page_runs(conn: psycopg.Connection, *, limit: int = 50, before_id: int | None = None, **filters: Any) -> RunsPage:
    """A page of :func:`list_runs` and where the next one starts.

    No index serves ``args`` containment, and a rare match would read the whole history for
    one page (319 ms p95 on 10^6 runs, benchmarks.ui): an args search reads at most
    ``ARGS_SCAN_WINDOW`` ids a page instead. Its page can then hold fewer than ``limit`` runs
    (none, even) and still have an ``older`` one, which goes on below ``searched_from``.
    """
    if filters.get("args") is None:
        runs = list_runs(conn, limit=limit, before_id=before_id, **filters)
        return RunsPage(runs, runs[-1]["id"] if len(runs) == limit else None, None)
    row = conn.execute(queries["run_id_range"]).fetchone()
    lowest, highest = row if row is not None and row[0] is not None else (1, 0)
    start = min(before_id, highest + 1) if before_id is not None else highest + 1
    floor = max(lowest, start - ARGS_SCAN_WINDOW)
    runs = list_runs(conn, limit=limit, before_id=before_id, scan_floor=floor, **filters)
    if len(runs) == limit:
        return RunsPage(runs, runs[-1]["id"], floor)
    return RunsPage(runs, floor if floor > lowest else None, floor)


# run_list's matches, counted up to its LIMIT: the same filters, so the count cannot drift.
_COUNT_LISTED: LiteralString = "SELECT count(*) FROM (" + queries["run_list"] + ") AS listed"


def count_runs(conn: psycopg.Connection, *, cap: int = COUNT_CAP, **filters: Any) -> int:
    """How many runs match ``filters`` (those of :func:`list_runs`), counted no further than
    ``cap + 1``: a caller says "10,000+" past the cap, and no request counts the history."""
    params = _run_list_params(**filters, limit=cap + 1, before_id=None)
    row = conn.execute(_COUNT_LISTED, params).fetchone()
    assert row is not None
    return int(row[0])


def _run_list_params(
    *,
    status: str | None = None,
    queue: str | None = None,
    task: str | None = None,
    job: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    finished_after: datetime | None = None,
    finished_before: datetime | None = None,
    run_id: int | None = None,
    args: dict[str, Any] | None = None,
    error_type: str | None = None,
    limit: int,
    before_id: int | None,
    tenant: str | None = None,
    scan_floor: int | None = None,
) -> dict[str, Any]:
    """run_list's parameters, each checked."""
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    for given in (before_id, run_id, scan_floor):
        if given is not None:
            check_run_id(given)
    if args is not None and not isinstance(args, dict):
        raise InvalidInput(f"args must be a JSON object to match runs' args against, got {args!r}")
    instants = {
        "created_after": created_after,
        "created_before": created_before,
        "finished_after": finished_after,
        "finished_before": finished_before,
    }
    for name, instant in instants.items():
        _check_aware(name, instant)
    return {
        "status": status,
        "queue": queue,
        "task": task,
        "job": job,
        **instants,
        "id": run_id,
        "args": None if args is None else Jsonb(args),
        "error_type": error_type,
        "limit": limit,
        "before_id": before_id,
        "tenant": tenant,
        "scan_floor": scan_floor,
    }


def parse_args_filter(text: str) -> dict[str, Any]:
    """An args filter as typed (CLI, query string): a JSON object, or InvalidInput saying so."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InvalidInput(f'args must be a JSON object such as {{"customer": 42}}: {exc}') from None
    if not isinstance(value, dict):
        raise InvalidInput(f'args must be a JSON object such as {{"customer": 42}}, got {text[:40]!r}')
    if _holds_nul(value):  # jsonb holds no NUL: no run could match
        raise InvalidInput("args must not contain a NUL character (\\u0000): no run's args can hold one")
    return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(key) or _holds_nul(item) for key, item in value.items())
    return isinstance(value, list) and any(_holds_nul(item) for item in value)


def parse_instant(name: str, text: str) -> datetime:
    """An ISO 8601 instant with a timezone (the CLI's and the API's time options), or
    InvalidInput naming ``name`` and what is wrong with ``text``."""
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            f"{name} must be an ISO 8601 timestamp with a timezone, e.g. 2030-01-02T03:04:05Z; got {text!r}"
        ) from None
    if instant.utcoffset() is None:
        raise InvalidInput(f"{name} needs a timezone (e.g. {text}+00:00 or {text}Z), got {text!r}")
    return instant


def _check_aware(name: str, instant: Any) -> None:
    # A naive time would be read in the database session's timezone: a silent guess.
    if instant is None:
        return
    if not isinstance(instant, datetime):
        raise InvalidInput(f"{name} must be a datetime, got {instant!r}")
    if instant.utcoffset() is None:
        raise InvalidInput(f"{name} must include a timezone (e.g. 2030-01-02T03:04:05Z), got {instant.isoformat()}")


def retry_run(conn: psycopg.Connection, run_id: int, *, tenant: str | None = None) -> None:
    """Queue a failed or cancelled run again, due now."""
    if not retry_runs(conn, [check_run_id(run_id)], tenant=tenant):
        _explain_refusal(conn, run_id, "retry", "only failed or cancelled runs can be retried", tenant)


def retry_runs(conn: psycopg.Connection, run_ids: list[int], *, tenant: str | None = None) -> list[int]:
    """Queue the failed and cancelled runs among ``run_ids`` again, due now; returns their ids
    (runs in another state, or another tenant's, are left as they are). A run in runs_history
    (schema 0029) moves back to runs: inserted queued, then given its attempts back, in one
    transaction. It counts as created in its tenant's usage and quotas, as a new run does."""
    with conn.transaction():
        returned = conn.execute(queries["run_retry_from_history"], {"ids": run_ids, "tenant": tenant}).fetchall()
        if returned:
            ids, attempts = [row[0] for row in returned], [row[1] for row in returned]
            conn.execute(queries["run_retry_attempts"], {"ids": ids, "attempts": attempts})
        rows = conn.execute(queries["run_retry_many"], {"ids": run_ids, "tenant": tenant}).fetchall()
    return sorted({row[0] for row in returned} | {row[0] for row in rows})


def cancel_runs(conn: psycopg.Connection, run_ids: list[int], *, tenant: str | None = None) -> list[int]:
    """Cancel the queued runs among ``run_ids`` and ask the workers of the running ones to stop
    them; returns their ids (finished runs, or another tenant's, are left as they are)."""
    rows = conn.execute(queries["run_cancel_many"], {"ids": run_ids, "tenant": tenant}).fetchall()
    return [row[0] for row in rows]


def cancel_run(conn: psycopg.Connection, run_id: int, *, tenant: str | None = None) -> str:
    """Cancel a queued run at once ('cancelled'), or ask the worker running it to stop it
    ('running': the run ends 'cancelled' when the worker is done with it)."""
    try:
        # In a savepoint: a caller's transaction outlives the refusal, for the explaining read.
        with conn.transaction():
            row = conn.execute(queries["run_cancel"], {"id": check_run_id(run_id), "tenant": tenant}).fetchone()
    except psycopg.errors.NoDataFound:
        raise RunNotFound(f"no run with id {run_id}") from None
    except psycopg.errors.ObjectNotInPrerequisiteState:
        _explain_refusal(conn, run_id, "cancel", "only waiting, queued or running runs can be cancelled", tenant)
    if row is None:  # no such run, another tenant's, or one that ended and moved to runs_history
        _explain_refusal(conn, run_id, "cancel", "only waiting, queued or running runs can be cancelled", tenant)
    return str(row[0])


def _explain_refusal(
    conn: psycopg.Connection, run_id: int, verb: str, rule: str, tenant: str | None = None
) -> NoReturn:
    row = conn.execute(queries["run_status"], {"id": run_id, "tenant": tenant}).fetchone()
    if row is None:
        raise RunNotFound(f"no run with id {run_id}")
    raise RunStateConflict(f"cannot {verb} run {run_id}: it is {row[0]}; {rule}")


def failure_groups(
    conn: psycopg.Connection, *, tenant: str | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Runs that ended failed in the last week by task and the type of their last error, with
    counts for the last hour, day and week; the most recently seen group first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            queries["run_failure_groups"], {"tenant": tenant, "limit": FAILURE_GROUPS_SHOWN, "now": now}
        ).fetchall()

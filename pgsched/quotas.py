"""Tenant quotas and usage (schema 0026). A tenant's quotas are a row of ``pgsched.tenants``
(``max_queued``, ``runs_per_day``, ``max_running``; none: no quota), read and changed by the CLI (`pgsched
tenants …`), the REST API (``/tenants/{name}``) or a plain SQL UPDATE. The database enforces
them on every INSERT into ``pgsched.runs`` (trigger ``runs_tenant_inserted``): over a quota the
statement fails with SQLSTATE ``PS429``, which every enqueue path turns into
:class:`~pgsched.errors.QuotaExceeded`. Usage per tenant and UTC day is folded by the beat
leader (:func:`fold_usage`) into ``pgsched.tenant_usage`` and read by :func:`list_usage`.

``max_running`` (schema 0033) is no enqueue quota: it is held by the claim, as a queue's
``max_running`` is (at least 1, as there; see :mod:`pgsched.limited_claim`).
"""

from __future__ import annotations

import json
import logging
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.errors import InvalidInput, QuotaExceeded
from pgsched.queue_settings import KEEP, Keep
from pgsched.sql import queries
from pgsched.tenants import check_tenant

logger = logging.getLogger("pgsched.quotas")

QUOTA_SQLSTATE = "PS429"
QUOTAS = ("max_queued", "runs_per_day", "max_running")
# The columns are integers: a larger quota could not be stored.
QUOTA_LIMIT = 2**31 - 1
# Seconds a client refused by max_queued is told to wait: workers free slots continuously.
MAX_QUEUED_RETRY_S = 5
# Finished runs are folded once this old: a completion's finished_at is its transaction's
# start, and the batched completion commits within milliseconds; a minute is ample.
USAGE_LAG_S = 60.0


def quota_error(exc: psycopg.Error) -> QuotaExceeded | None:
    """The :class:`QuotaExceeded` a database error is (SQLSTATE PS429), else None."""
    if exc.sqlstate != QUOTA_SQLSTATE:
        return None
    detail = json.loads(exc.diag.message_detail or "{}")
    return QuotaExceeded(
        (exc.diag.message_primary or str(exc)).strip(),
        tenant=str(detail.get("tenant")),
        quota=str(detail.get("quota")),
        limit=int(detail.get("limit", 0)),
        count=int(detail.get("count", 0)),
        adding=int(detail.get("adding", 0)),
    )


def retry_after_s(exc: QuotaExceeded, now: datetime | None = None) -> int:
    """Seconds until the quota may admit the runs: the next UTC day for runs_per_day."""
    if exc.quota != "runs_per_day":
        return MAX_QUEUED_RETRY_S
    now = now or datetime.now(timezone.utc)
    midnight = datetime.combine(
        now.astimezone(timezone.utc).date() + timedelta(days=1), datetime.min.time(), timezone.utc
    )
    return max(1, int((midnight - now).total_seconds() + 0.999))


def _quota_message(name: str, value: Any) -> str:
    return f"{name} must be an integer from {_least(name)} to {QUOTA_LIMIT}, or none for no quota; got {value!r}"


def _least(name: str) -> int:
    """A quota's smallest value: 0 for the enqueue quotas (none admitted), 1 for max_running,
    as a queue's or a task's max_running (0 would be a pause, which tenants do not have)."""
    return 1 if name == "max_running" else 0


def check_quota(name: str, value: Any) -> int | None:
    """``value`` if it is None (no quota) or an integer in the quota's range; else InvalidInput."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not _least(name) <= value <= QUOTA_LIMIT:
        raise InvalidInput(_quota_message(name, value))
    return value


def parse_quota(name: str, text: str) -> int | None:
    """The CLI's ``--max-queued`` / ``--runs-per-day`` / ``--max-running``: a number, or ``none``
    to clear it."""
    if text.strip().lower() == "none":
        return None
    try:
        number = int(text.strip(), 10)
    except ValueError:
        raise InvalidInput(_quota_message(name, text)) from None
    return check_quota(name, number)


def check_tenant_name(name: Any) -> str:
    """A tenant's name where one is needed (not None), checked by the name rule."""
    if name is None:
        raise InvalidInput("tenant is needed: give a tenant name")
    checked = check_tenant(name)
    assert checked is not None
    return checked


def get_tenant(conn: psycopg.Connection, name: str) -> dict[str, Any]:
    """A tenant's quotas (None: no quota), its queued runs and the runs it created today."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["tenant_get"], {"name": check_tenant_name(name)}).fetchone()
    assert row is not None  # one row, whether the tenant has quotas or not
    return row


def list_tenants(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every tenant with a quota row, as :func:`get_tenant` shows one."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["tenant_list"]).fetchall()


def set_tenant(
    conn: psycopg.Connection,
    name: str,
    *,
    max_queued: int | Keep | None = KEEP,
    runs_per_day: int | Keep | None = KEEP,
    max_running: int | Keep | None = KEEP,
) -> dict[str, Any]:
    """Change the quotas given (the others stay); the next INSERT meets them, and the next claim
    the max_running (workers reload it on the change's notification)."""
    check_tenant_name(name)
    given = {"max_queued": max_queued, "runs_per_day": runs_per_day, "max_running": max_running}
    for quota, value in given.items():
        if value is not KEEP:
            check_quota(quota, value)
    if all(value is KEEP for value in given.values()):
        raise InvalidInput("nothing to change: give max_queued, runs_per_day or max_running")
    conn.execute(
        queries["tenant_set"],
        {
            "name": name,
            "set_max_queued": max_queued is not KEEP,
            "max_queued": None if max_queued is KEEP else max_queued,
            "set_runs_per_day": runs_per_day is not KEEP,
            "runs_per_day": None if runs_per_day is KEEP else runs_per_day,
            "set_max_running": max_running is not KEEP,
            "max_running": None if max_running is KEEP else max_running,
        },
    )
    return get_tenant(conn, name)


def parse_since(text: str | None) -> date:
    """``--since`` / ``?since=``: a date (YYYY-MM-DD); default the first day of this month (UTC)."""
    if text is None:
        return datetime.now(timezone.utc).date().replace(day=1)
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"since must be a date as YYYY-MM-DD, got {text!r}") from None


def list_usage(conn: psycopg.Connection, *, tenant: str | None = None, since: date) -> list[dict[str, Any]]:
    """Usage per tenant and UTC day from ``since`` (all tenants, or one)."""
    if not isinstance(since, date):
        raise InvalidInput(f"since must be a date, got {since!r}")
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["tenant_usage_list"], {"tenant": check_tenant(tenant), "since": since}).fetchall()


async def fold_usage(conn: psycopg.AsyncConnection, *, lag_s: float = USAGE_LAG_S, now: datetime | None = None) -> int:
    """Fold the created-runs log and the tenant runs finished since the last fold into
    ``pgsched.tenant_usage`` (one transaction), and forget usage past 400 days. Returns the
    (tenant, day) rows written."""
    rows = 0
    async with conn.transaction():
        cursor = await conn.execute(queries["tenant_usage_fold_lock"], {"lag_s": lag_s, "now": now})
        bounds = await cursor.fetchone()
        if bounds is not None:  # None: the watermark row was only just created
            cursor = await conn.execute(queries["tenant_usage_fold"], {"since": bounds[0], "up_to": bounds[1]})
            rows = (await cursor.fetchone())[0]  # type: ignore[index]
        await conn.execute(queries["tenant_usage_prune"], {"now": now})
    return int(rows)

"""Scheduled job definitions (``pgsched.jobs``): create, read, pause, resume, delete, trigger.

One function per operation, called by ``App.schedule``, the CLI's ``jobs`` commands and the
API alike; the beat (``pgsched/beat.py``) fires what these define. Each takes an optional
``tenant``: given, it sees and changes only that tenant's jobs (another tenant's job is "not
found"), and a job it creates belongs to the tenant. Names are unique within a tenant (schema
0012/0013), so a tenant learns nothing of another's; without a tenant, a name means the job
without one, else the only tenant's job of that name (several: JobNameAmbiguous).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import psycopg
from psycopg.rows import dict_row

from pgsched.enqueue import RunOptions, check_no_nul, check_task_name, encode_args
from pgsched.errors import InvalidInput, PgschedError
from pgsched.schedule import Schedule
from pgsched.sql import queries

MISFIRE_POLICIES = ("coalesce", "skip", "all")
MAX_CATCHUP = 100_000  # also a check on pgsched.jobs (schema 0009)
UPCOMING_SHOWN = 5


class JobNotFound(PgschedError):
    """No job with that name."""


class JobNameTaken(PgschedError):
    """A job with that name belongs to another tenant (until migration 0013 makes names
    unique per tenant only)."""


class JobNameAmbiguous(PgschedError):
    """Several tenants have a job of that name, and none was given."""


@dataclass(frozen=True)
class JobSpec:
    """A job definition, validated on creation with messages that name the field."""

    name: str
    task: str
    schedule: Schedule
    args: Mapping[str, Any] = field(default_factory=dict)
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    misfire: str = "coalesce"
    max_catchup: int = 100
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip() or len(self.name) > 200:
            raise InvalidInput(f"a job name is a non-empty string of at most 200 characters, got {self.name!r}")
        check_no_nul("job name", self.name)
        check_task_name(self.task)
        RunOptions(queue=self.queue, priority=self.priority, max_attempts=self.max_attempts)
        encode_args(self.args)
        if self.misfire not in MISFIRE_POLICIES:
            raise InvalidInput(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {self.misfire!r}")
        if (
            isinstance(self.max_catchup, bool)
            or not isinstance(self.max_catchup, int)
            or not 1 <= self.max_catchup <= MAX_CATCHUP
        ):
            raise InvalidInput(f"max_catchup must be an integer from 1 to {MAX_CATCHUP}, got {self.max_catchup!r}")


def upsert_job(
    conn: psycopg.Connection, spec: JobSpec, *, now: datetime | None = None, tenant: str | None = None
) -> bool:
    """Create the job, or replace the definition of the job with that name; True if created.

    An unchanged schedule keeps its next fire time (so a restart that re-syncs definitions
    neither skips nor repeats a run); a changed one starts from ``now``.
    """
    now = now or datetime.now(timezone.utc)
    schedule = spec.schedule
    try:
        with conn.transaction():  # a savepoint in the caller's transaction: a refusal leaves it usable
            row = conn.execute(
                queries["job_upsert"],
                {
                    "name": spec.name,
                    "task": spec.task,
                    "args": encode_args(spec.args),
                    "queue": spec.queue,
                    "priority": spec.priority,
                    "cron": schedule.cron,
                    "every_s": schedule.every_s,
                    "at": schedule.at,
                    "tz": schedule.tz,
                    "misfire": spec.misfire,
                    "max_catchup": spec.max_catchup,
                    "max_attempts": spec.max_attempts,
                    "enabled": spec.enabled,
                    "next_run_at": schedule.next_after(now),
                    "tenant": tenant,
                },
            ).fetchone()
    except psycopg.errors.UniqueViolation as exc:
        # Before 0013 (post-deploy) names are also unique across tenants: another tenant's.
        if exc.diag.constraint_name != "jobs_name_key":
            raise
        raise JobNameTaken(f"the job name {spec.name!r} is taken: choose another name") from None
    assert row is not None
    return bool(row[1])


def find_job(conn: psycopg.Connection, name: str, *, tenant: str | None = None) -> int:
    """The id of the job ``name`` means: the tenant's (given one), else the job without a
    tenant, else the only tenant's job of that name."""
    rows = conn.execute(queries["job_find"], {"name": name, "tenant": tenant}).fetchall()
    if not rows:
        raise JobNotFound(f"no job named {name!r}")
    if len(rows) > 1 and rows[0][1] is not None:
        raise JobNameAmbiguous(f"several tenants have a job named {name!r}: say which tenant")
    return int(rows[0][0])


def schedule_of(job: Mapping[str, Any]) -> Schedule:
    """The Schedule of a jobs row (raises InvalidSchedule for a bad SQL-inserted row)."""
    return Schedule(cron=job["cron"], every_s=job["every_s"], at=job["at"], tz=job["tz"])


def get_job(conn: psycopg.Connection, name: str, *, tenant: str | None = None) -> dict[str, Any]:
    """Every column of one job, plus its next fire times (``upcoming``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        job = cur.execute(queries["job_get"], {"id": find_job(conn, name, tenant=tenant)}).fetchone()
    if job is None:  # deleted since find_job
        raise JobNotFound(f"no job named {name!r}")
    job["upcoming"] = upcoming(job)
    return job


def upcoming(job: Mapping[str, Any]) -> list[datetime]:
    """A jobs row's next fire times (``UPCOMING_SHOWN`` of them; none for an invalid schedule)."""
    try:
        start = job["next_run_at"] or datetime.now(timezone.utc)
        first = [start] if job["next_run_at"] else []
        return (first + schedule_of(job).upcoming(start, UPCOMING_SHOWN))[:UPCOMING_SHOWN]
    except InvalidInput:
        return []


def list_jobs(
    conn: psycopg.Connection,
    *,
    tenant: str | None = None,
    limit: int | None = None,
    after: tuple[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Jobs by name then tenant: every one, or a page of at most ``limit`` after the job
    ``after`` (its name and tenant)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
    after_name, after_tenant = after if after is not None else (None, None)
    params = {"tenant": tenant, "limit": limit, "after_name": after_name, "after_tenant": after_tenant or ""}
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["job_list"], params).fetchall()


def set_enabled(conn: psycopg.Connection, name: str, enabled: bool, *, tenant: str | None = None) -> str | None:
    """Pause (False) or resume (True); returns the job's tenant. On resume the beat applies the
    job's misfire policy to the fire times the pause skipped."""
    return _change(conn, "job_set_enabled", name, tenant, enabled=enabled)[1]  # type: ignore[no-any-return]


def delete_job(conn: psycopg.Connection, name: str, *, tenant: str | None = None) -> str | None:
    """Delete the definition (its past runs stay, their job_id becomes NULL); returns its tenant."""
    return _change(conn, "job_delete", name, tenant)[1]  # type: ignore[no-any-return]


def trigger_job(conn: psycopg.Connection, name: str, *, tenant: str | None = None) -> int:
    """Queue one run of the job now, outside its schedule; returns the run id."""
    return int(_change(conn, "job_trigger", name, tenant)[0])


def _change(conn: psycopg.Connection, query: str, name: str, tenant: str | None, **params: Any) -> tuple[Any, ...]:
    """Run ``query`` on the job ``name`` means; the row it returns."""
    row = conn.execute(queries[query], {"id": find_job(conn, name, tenant=tenant), **params}).fetchone()
    if row is None:  # deleted since find_job
        raise JobNotFound(f"no job named {name!r}")
    return row

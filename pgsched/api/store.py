"""What the API adds around pgsched's core: a tenant's namespace for Idempotency-Keys, the
worker list and the metrics' counts. Enqueueing itself (tenant included) is ``pgsched.app``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import psycopg
from psycopg.rows import dict_row

from pgsched.app import App
from pgsched.errors import PgschedError, RunNotFound
from pgsched.runs import get_run
from pgsched.sql import queries


class IdempotencyKeyConflict(PgschedError):
    """That Idempotency-Key belongs to a run this API key cannot see."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Where and when runs go, as the API received it (the library validates every field)."""

    task: str
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None
    run_at: datetime | None = None
    delay: float | None = None
    concurrency_key: str | None = None


def tenant_unique_key(idempotency_key: str | None, tenant: str | None) -> str | None:
    """The run's unique_key: a tenant's keys live in their own namespace (tenant names have no
    '/'), so two tenants that pick the same Idempotency-Key never meet."""
    if idempotency_key is None or tenant is None:
        return idempotency_key
    return f"{tenant}/{idempotency_key}"


def enqueue_one(
    conn: psycopg.Connection,
    app: App,
    request: RunRequest,
    args: Mapping[str, Any] | None,
    *,
    idempotency_key: str | None = None,
    tenant: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Queue one run for the caller's tenant: ``(run, created)``; ``created`` is False when the
    idempotency key returned an earlier run."""
    run_id, created = app.enqueue_unique(
        request.task,
        args,
        queue=request.queue,
        priority=request.priority,
        max_attempts=request.max_attempts,
        run_at=request.run_at,
        delay=request.delay,
        concurrency_key=request.concurrency_key,
        unique_key=tenant_unique_key(idempotency_key, tenant),
        tenant=tenant,
        conn=conn,
    )
    try:
        return get_run(conn, run_id, tenant=tenant), created
    except RunNotFound:
        raise IdempotencyKeyConflict(
            f"the Idempotency-Key {idempotency_key!r} belongs to a run this API key cannot see"
        ) from None


async def enqueue_returning(
    conn: psycopg.AsyncConnection,
    app: App,
    request: RunRequest,
    args: Mapping[str, Any] | None,
    *,
    tenant: str | None = None,
) -> dict[str, Any]:
    """Queue one run for the caller's tenant (no Idempotency-Key): the new run's row."""
    return await app.enqueue_returning_async(
        request.task,
        args,
        queue=request.queue,
        priority=request.priority,
        max_attempts=request.max_attempts,
        run_at=request.run_at,
        delay=request.delay,
        concurrency_key=request.concurrency_key,
        tenant=tenant,
        conn=conn,
    )


async def enqueue_batch_async(
    conn: psycopg.AsyncConnection,
    app: App,
    request: RunRequest,
    all_args: Sequence[Mapping[str, Any]],
    *,
    tenant: str | None = None,
) -> list[int]:
    """The asyncio twin of :func:`enqueue_batch`."""
    return await app.enqueue_many_async(
        request.task,
        all_args,
        queue=request.queue,
        priority=request.priority,
        max_attempts=request.max_attempts,
        run_at=request.run_at,
        delay=request.delay,
        concurrency_key=request.concurrency_key,
        tenant=tenant,
        conn=conn,
    )


def enqueue_batch(
    conn: psycopg.Connection,
    app: App,
    request: RunRequest,
    all_args: Sequence[Mapping[str, Any]],
    *,
    tenant: str | None = None,
) -> list[int]:
    """Queue one run per args object through ``App.enqueue_many`` (COPY), all or none."""
    return app.enqueue_many(
        request.task,
        all_args,
        queue=request.queue,
        priority=request.priority,
        max_attempts=request.max_attempts,
        run_at=request.run_at,
        delay=request.delay,
        concurrency_key=request.concurrency_key,
        tenant=tenant,
        conn=conn,
    )


def list_workers(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Live workers, oldest first, with the number of runs each holds."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["worker_list"]).fetchall()


def run_counts(conn: psycopg.Connection, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """Runs per queue and status: queued and running now, the others finished in the last hour."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["run_count_by_queue_status"], {"now": now}).fetchall()


def run_duration_buckets(
    conn: psycopg.Connection, bounds: Sequence[float], window_s: float, *, now: datetime | None = None
) -> list[dict[str, Any]]:
    """How long the runs that finished in the last ``window_s`` seconds waited and ran: rows of
    ``(queue, metric 'wait'|'run', bucket, runs, seconds)``, bucket k counting the durations in
    ``(bounds[k-1], bounds[k]]`` (0: at most bounds[0]; len(bounds): above the last bound)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            queries["run_duration_buckets"], {"bounds": list(bounds), "window_s": window_s, "now": now}
        ).fetchall()

"""Queues as a reader sees them: depth, age and throughput per queue, for the CLI, the API
and /metrics (the ``pgsched.queue_stats`` view shows the same numbers at a psql prompt).

Given a ``tenant``, only that tenant's runs count.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.sql import queries


def list_queues(conn: psycopg.Connection, *, tenant: str | None = None, last_hour: bool = True) -> list[dict[str, Any]]:
    """Per queue: queued, due, running, failed, succeeded in the last hour, succeeded and
    failed in the last minute, oldest due age (in seconds). Without ``last_hour`` it reads only
    the last minute's finished runs (succeeded_last_hour is None, and a queue with nothing but
    older successes is left out): the figures a page refreshing every 2 s needs."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["queue_list_stats"], {"tenant": tenant, "last_hour": last_hour}).fetchall()


def queue_throughput(
    conn: psycopg.Connection, *, tenant: str | None = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Succeeded and failed runs per queue and minute over the last hour, from the per-minute
    rollup the beat leader keeps (``pgsched.run_rollup``); minutes without runs are absent."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["rollup_last_hour"], {"tenant": tenant, "now": now}).fetchall()

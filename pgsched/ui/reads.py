"""The dashboard's reads that neither the CLI nor the REST API had: the last run of each job,
a run's worker and job. Everything else comes from pgsched's own modules."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.sql import queries


def last_runs(conn: psycopg.Connection, job_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The newest run of each job, by job id (jobs that never ran are absent)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries["run_last_of_jobs"], {"job_ids": job_ids}).fetchall()
    return {row["job_id"]: row for row in rows}


def job_name(conn: psycopg.Connection, job_id: int | None) -> str | None:
    if job_id is None:
        return None
    row = conn.execute(queries["job_name_of"], {"id": job_id}).fetchone()
    return None if row is None else str(row[0])


def worker(conn: psycopg.Connection, worker_id: int | None) -> dict[str, Any] | None:
    """The worker row, while the worker is alive (a run keeps the id of a worker long gone)."""
    if worker_id is None:
        return None
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["worker_get"], {"id": worker_id}).fetchone()

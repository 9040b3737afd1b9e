"""A deployment's vital signs, read from the database: live workers per queue, runs stuck past
their lease, the oldest open transaction (and what it leaves for vacuum: the runs table's dead
rows, the claim index's size), and how many workers each queue's backlog wants.

One home for each question, so ``/metrics`` (at every scrape) and ``pgsched doctor`` (by hand)
give the same answer. Every query reads only what an index isolates or a small catalog view:
cheap enough for a scrape every few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import psycopg
from psycopg.rows import dict_row

from pgsched.sql import queries
from pgsched.worker import WorkerOptions

# A worker heartbeats every third of its lease (10 s by default): one not seen for two default
# leases has missed six heartbeats and is taken for dead, whatever its row still says.
LIVE_WORKER_S = 2 * WorkerOptions.lease_s
# The runs one worker holds when no live worker of the queue says otherwise.
DEFAULT_RUNS_PER_WORKER = WorkerOptions.concurrency


@dataclass(frozen=True, slots=True)
class OldestTransaction:
    """The oldest open transaction of the database: its age, its xmin's age in transactions
    (how far back it holds vacuum's horizon) and who holds it (None: no transaction open)."""

    age_s: float
    xmin_age: int
    holder: str | None


@dataclass(frozen=True, slots=True)
class RunTableVacuumState:
    """The runs table as vacuum left it: dead and live row versions (the statistics
    collector's estimates) and the claim index's size in bytes."""

    dead_tuples: int
    live_tuples: int
    claim_index_bytes: int


def live_workers_by_queue(conn: psycopg.Connection[Any]) -> dict[str, dict[str, int]]:
    """Per queue: ``{"workers": live workers serving it, "concurrency": the largest of theirs}``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries["worker_live_by_queue"], {"live_s": LIVE_WORKER_S}).fetchall()
    return {row["queue"]: {"workers": row["workers"], "concurrency": row["concurrency"]} for row in rows}


def expired_leases_by_queue(conn: psycopg.Connection[Any]) -> dict[str, dict[str, float]]:
    """Per queue with any: ``{"runs": running runs past their lease, "oldest_s": how long past}``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries["run_lease_expired_by_queue"]).fetchall()
    return {row["queue"]: {"runs": row["runs"], "oldest_s": row["oldest_s"]} for row in rows}


def oldest_transaction(conn: psycopg.Connection[Any]) -> OldestTransaction:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["database_oldest_transaction"]).fetchone()
    assert row is not None  # an aggregate always answers
    return OldestTransaction(row["age_s"], int(row["xmin_age"]), row["holder"])


def run_table_vacuum_state(conn: psycopg.Connection[Any]) -> RunTableVacuumState:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["run_table_vacuum_state"]).fetchone()
    if row is None:  # no statistics row: track_counts is off (pgsched doctor says so)
        return RunTableVacuumState(0, 0, 0)
    return RunTableVacuumState(int(row["dead_tuples"]), int(row["live_tuples"]), int(row["claim_index_bytes"]))


# The DEFAULT partition of runs_history is counted up to this many rows: enough to say how bad
# it is, and a scrape never reads more of it (a stray day holds ~10^5-10^7 runs).
HISTORY_DEFAULT_CAP = 10_000


def history_default_rows(conn: psycopg.Connection[Any]) -> int:
    """Rows in runs_history's DEFAULT partition (schema 0029), up to :data:`HISTORY_DEFAULT_CAP`:
    finished runs of a day without a partition. 0 while the leader creates them ahead."""
    row = conn.execute(queries["history_default_rows"], {"cap": HISTORY_DEFAULT_CAP}).fetchone()
    return int(row[0]) if row else 0


def desired_workers(conn: psycopg.Connection[Any], per_worker: dict[str, int]) -> dict[str, int]:
    """``pgsched.desired_workers(queue, per_worker[queue])`` for each queue given."""
    queues = sorted(per_worker)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            queries["queue_desired_workers"], {"queues": queues, "per_worker": [per_worker[q] for q in queues]}
        ).fetchall()
    return {row["queue"]: int(row["workers"]) for row in rows}


def runs_per_worker(queues: Iterable[str], live: dict[str, dict[str, int]]) -> dict[str, int]:
    """The runs one more worker of a queue would hold: the largest concurrency among the live
    workers serving it (workers like the ones you run), else the worker's default."""
    return {q: live[q]["concurrency"] if q in live else DEFAULT_RUNS_PER_WORKER for q in queues}

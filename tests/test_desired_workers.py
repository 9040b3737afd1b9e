"""pgsched.desired_workers(queue, per_worker) (schema 0014): the workers a queue's backlog wants,
the number KEDA's PostgreSQL scaler and the /metrics gauge read."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.db import scalar


def add_runs(
    conn: psycopg.Connection[Any], queue: str, count: int, *, status: str = "queued", due: bool = True
) -> None:
    """``count`` runs in ``queue``: queued and due (or deferred an hour), or running under a lease."""
    run_at = "now()" if due else "now() + interval '1 hour'"
    ids = [
        row[0]
        for row in conn.execute(
            f"INSERT INTO pgsched.runs (task, queue, run_at) SELECT 't', %s, {run_at} FROM generate_series(1, %s)"
            " RETURNING id".encode(),
            (queue, count),
        ).fetchall()
    ]
    if status == "running":
        conn.execute(
            "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1, started_at = now(),"
            " lease_expires_at = now() + interval '30 seconds' WHERE id = ANY(%s)",
            (ids,),
        )


def desired(conn: psycopg.Connection[Any], queue: str, per_worker: int | None) -> int:
    return int(scalar(conn, "SELECT pgsched.desired_workers(%s, %s)", (queue, per_worker)))


@pytest.mark.parametrize(
    ("due", "running", "per_worker", "workers"),
    [
        (0, 0, 10, 0),  # nothing to do: scale to zero
        (1, 0, 10, 1),  # one run wants a whole worker
        (10, 0, 10, 1),
        (11, 0, 10, 2),  # ceiling, not rounding
        (7, 8, 5, 3),  # running runs count: they hold slots
        (0, 3, 1, 3),
        (25, 0, 100, 1),
    ],
)
def test_desired_workers_is_the_ceiling_of_due_plus_running_over_per_worker(
    conn: psycopg.Connection, due: int, running: int, per_worker: int, workers: int
):
    add_runs(conn, "q", due)
    add_runs(conn, "q", running, status="running")
    assert desired(conn, "q", per_worker) == workers


def test_runs_deferred_to_later_and_other_queues_want_no_worker(conn: psycopg.Connection):
    add_runs(conn, "q", 50, due=False)
    add_runs(conn, "other", 50)
    add_runs(conn, "other", 5, status="running")
    assert desired(conn, "q", 10) == 0
    assert desired(conn, "missing", 10) == 0
    assert desired(conn, "other", 10) == 6


def test_finished_runs_want_no_worker(conn: psycopg.Connection):
    add_runs(conn, "q", 3)
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
        " WHERE queue = 'q'"
    )
    assert desired(conn, "q", 1) == 0


@pytest.mark.parametrize("per_worker", [0, -3, None])
def test_per_worker_below_one_is_refused_with_an_error_naming_it(conn: psycopg.Connection, per_worker: int | None):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="per_worker must be at least 1"):
        desired(conn, "q", per_worker)


def test_a_null_queue_is_refused(conn: psycopg.Connection):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="queue must be a queue name"):
        desired(conn, None, 10)  # type: ignore[arg-type]


def test_runs_that_expired_want_no_worker(conn: psycopg.Connection):
    add_runs(conn, "q", 4)
    conn.execute(  # two of them expired before a worker took them: the claim passes over them
        "UPDATE pgsched.runs SET expires_at = now() - interval '1 second'"
        " WHERE id IN (SELECT id FROM pgsched.runs_all ORDER BY id LIMIT 2)"
    )
    assert desired(conn, "q", 1) == 2

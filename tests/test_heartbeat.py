"""The heartbeat against a real database: it extends the leases of the runs its worker holds
and never waits for a run's row lock, so it cannot deadlock with the completer's batch."""

from __future__ import annotations

import socket

import psycopg

from pgsched.app import App
from pgsched.claim_cursor import FROM_THE_START
from pgsched.sql import number_array, queries


def beat(worker_id: int, held: list[int]) -> dict[str, object]:
    return {"worker_id": worker_id, "lease_s": 300, "ids": number_array(held)}


def claim(conn: psycopg.Connection, worker_id: int, limit: int) -> list[int]:
    rows = conn.execute(
        queries["run_claim"],
        {
            "queues": ["default"],
            "limit": limit,
            "worker_id": worker_id,
            "lease_s": 30,
            "now": None,
            "only_tasks": None,
            "skip_tasks": None,
            **FROM_THE_START,
        },
    )
    return sorted(row[0] for row in rows)


def register(conn: psycopg.Connection) -> int:
    return conn.execute(
        queries["worker_register"], {"host": socket.gethostname(), "pid": 1, "queues": ["default"], "concurrency": 3}
    ).fetchone()[0]  # type: ignore[index,no-any-return]


def test_the_heartbeat_skips_a_run_row_another_transaction_holds_instead_of_waiting(
    conn: psycopg.Connection, dsn: str
) -> None:
    worker_id = register(conn)
    app = App(dsn)
    for n in range(3):
        app.enqueue("tick", {"n": n})
    claimed = claim(conn, worker_id, 3)
    assert len(claimed) == 3
    # Another transaction holds one run's row, as a completion batch in flight does. A heartbeat
    # that waited for it could close a lock cycle with that batch; this one must not wait.
    with psycopg.connect(dsn) as completing:
        completing.execute("SELECT id FROM pgsched.runs WHERE id = %s FOR UPDATE", (claimed[0],))
        conn.execute("SET lock_timeout = '3s'")
        extended = conn.execute(queries["worker_heartbeat"], beat(worker_id, claimed)).fetchall()
        completing.rollback()
    assert sorted(run_id for run_id, _ in extended) == claimed[1:]
    leases = dict(conn.execute("SELECT id, lease_expires_at - now() > interval '60 seconds' FROM pgsched.runs_all"))
    assert leases == {claimed[0]: False, claimed[1]: True, claimed[2]: True}
    # Once the row is free again, the next heartbeat extends it too.
    assert len(conn.execute(queries["worker_heartbeat"], beat(worker_id, claimed)).fetchall()) == 3


def test_the_heartbeat_leaves_a_run_its_worker_does_not_know_it_holds_to_expire(
    conn: psycopg.Connection, dsn: str
) -> None:
    """A claim whose answer never reached the worker (the connection lost after the commit)
    leaves a run that is the worker's in the table and runs nowhere: the heartbeat must not
    keep it 'running' for as long as the worker lives."""
    worker_id = register(conn)
    app = App(dsn)
    for n in range(3):
        app.enqueue("tick", {"n": n})
    claimed = claim(conn, worker_id, 3)
    known, lost = claimed[:2], claimed[2]
    extended = conn.execute(queries["worker_heartbeat"], beat(worker_id, known)).fetchall()
    assert sorted(run_id for run_id, _ in extended) == known
    leases = dict(conn.execute("SELECT id, lease_expires_at - now() > interval '60 seconds' FROM pgsched.runs_all"))
    assert leases == {known[0]: True, known[1]: True, lost: False}

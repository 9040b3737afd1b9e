"""The heartbeat against a real database: it extends the leases of the runs its worker holds
and never waits for a run's row lock, so it cannot deadlock with the completer's batch."""

from __future__ import annotations

import socket

import psycopg

from pgsched.app import App
from pgsched.claim_cursor import FROM_THE_START
from pgsched.sql import queries


def test_the_heartbeat_skips_a_run_row_another_transaction_holds_instead_of_waiting(
    conn: psycopg.Connection, dsn: str
) -> None:
    worker_id = conn.execute(
        queries["worker_register"], {"host": socket.gethostname(), "pid": 1, "queues": ["default"], "concurrency": 3}
    ).fetchone()[0]  # type: ignore[index]
    app = App(dsn)
    for n in range(3):
        app.enqueue("tick", {"n": n})
    claimed = sorted(
        row[0]
        for row in conn.execute(
            queries["run_claim"],
            {
                "queues": ["default"],
                "limit": 3,
                "worker_id": worker_id,
                "lease_s": 30,
                "now": None,
                "only_tasks": None,
                "skip_tasks": None,
                **FROM_THE_START,
            },
        )
    )
    assert len(claimed) == 3
    # Another transaction holds one run's row, as a completion batch in flight does. A heartbeat
    # that waited for it could close a lock cycle with that batch; this one must not wait.
    with psycopg.connect(dsn) as completing:
        completing.execute("SELECT id FROM pgsched.runs WHERE id = %s FOR UPDATE", (claimed[0],))
        conn.execute("SET lock_timeout = '3s'")
        extended = conn.execute(queries["worker_heartbeat"], {"worker_id": worker_id, "lease_s": 300}).fetchall()
        completing.rollback()
    assert sorted(run_id for run_id, _ in extended) == claimed[1:]
    leases = dict(conn.execute("SELECT id, lease_expires_at - now() > interval '60 seconds' FROM pgsched.runs_all"))
    assert leases == {claimed[0]: False, claimed[1]: True, claimed[2]: True}
    # Once the row is free again, the next heartbeat extends it too.
    assert len(conn.execute(queries["worker_heartbeat"], {"worker_id": worker_id, "lease_s": 300}).fetchall()) == 3

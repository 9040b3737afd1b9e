"""Wake-ups with real `pgsched worker` processes (schema 0027): the insert trigger notifies a
queue only while a worker waits on it, and a worker that goes to sleep says so first.

Every worker here polls every 60 s, so a run started within the 10 s these tests wait was
started by a notification or by the worker's own look before sleeping, never by the poll: a
trigger that skipped the NOTIFY of a queue a worker waits on fails them.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgsched import App
from tests.support.db import scalar
from tests.support.workers import Workers, insert_run, status_of

pytestmark = pytest.mark.slow

POLL = ("--poll-interval", "60")
WAITING_LOCK = 1885827959  # the 'pgsw' class of schema 0027


def waiting_on(conn: psycopg.Connection[Any], queue: str) -> int:
    """How many sessions hold ``queue``'s waiting lock (workers asleep on it)."""
    return int(
        scalar(
            conn,
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s"
            " AND objsubid = 2 AND objid::bigint = (hashtext(%s)::bigint + 4294967296) %% 4294967296",
            (WAITING_LOCK, queue),
        )
    )


def executed_by(conn: psycopg.Connection[Any], key: str) -> int | None:
    return scalar(conn, "SELECT pid FROM executions WHERE key = %s AND event = 'run'", (key,))


def test_an_idle_worker_says_it_waits_and_a_plain_insert_wakes_it(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start(*POLL)
    workers.wait_until(lambda: waiting_on(conn, "default") == 1, 15, "the idle worker to say it waits on default")
    for i in range(3):
        run_id = insert_run(conn, "record", {"key": f"wake-{i}"})
        workers.wait_until(
            lambda run_id=run_id: status_of(conn, run_id) == "succeeded",
            10,
            f"run wake-{i} to succeed (the poll is 60 s: only the NOTIFY wakes the worker)",
        )
        workers.wait_until(lambda: waiting_on(conn, "default") == 1, 10, "the worker to wait again")
    assert executed_by(conn, "wake-2") == worker.pid


def test_a_busy_worker_drains_a_backlog_and_then_waits_again(
    workers: Workers, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    workers.start("--concurrency", "4", *POLL)
    workers.wait_until(lambda: waiting_on(conn, "default") == 1, 15, "the idle worker to say it waits")
    app = App(dsn)
    try:
        app.enqueue_many("record", [{"key": f"b{i}"} for i in range(400)])
        # Single enqueues while it is busy: it claims again after each batch, woken or not.
        for i in range(50):
            app.enqueue("record", {"key": f"s{i}"})
    finally:
        app.close()
    workers.wait_until(
        lambda: scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'") == 450,
        60,
        "the 450 runs to succeed",
    )
    workers.wait_until(lambda: waiting_on(conn, "default") == 1, 10, "the drained worker to wait again")


def test_two_workers_on_different_queues_each_wake_for_their_own(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    alpha = workers.start("--queues", "alpha", *POLL)
    beta = workers.start("--queues", "beta", *POLL)
    workers.wait_until(
        lambda: waiting_on(conn, "alpha") == 1 and waiting_on(conn, "beta") == 1, 15, "both workers to wait"
    )
    for queue, worker in (("alpha", alpha), ("beta", beta), ("alpha", alpha)):
        key = f"{queue}-{scalar(conn, 'SELECT count(*) FROM pgsched.runs_all')}"
        run_id = insert_run(conn, "record", {"key": key}, queue=queue)
        workers.wait_until(lambda run_id=run_id: status_of(conn, run_id) == "succeeded", 10, f"{key} to succeed")
        assert executed_by(conn, key) == worker.pid


def test_an_insert_that_looked_before_the_worker_said_it_waits_is_claimed_when_it_commits(
    workers: Workers, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # The race: the insert's trigger looks for waiters (none yet) and its transaction stays open
    # while the worker claims (it cannot see the run), says it waits, and would sleep. Its
    # NOTIFY is skipped, so only the worker's wait for inserts in flight, then its look again,
    # finds the run once it commits.
    with psycopg.connect(dsn) as inserting:
        run_id = insert_run(inserting, "record", {"key": "in-flight"})
        workers.start(*POLL)
        workers.wait_until(lambda: waiting_on(conn, "default") == 1, 15, "the worker to say it waits")
        assert status_of(conn, run_id) is None  # not committed: nobody sees it
        inserting.commit()
    workers.wait_until(
        lambda: status_of(conn, run_id) == "succeeded",
        10,
        "the run committed after the worker said it waits to succeed (its insert sent no NOTIFY)",
    )


def test_a_worker_whose_listen_session_dies_says_again_that_it_waits_and_is_woken(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    # The waiting lock lives on the LISTEN session: when that session goes, so does the lock,
    # and the reconnected listener wakes the fetcher, which claims and advertises again.
    workers.start(*POLL)
    workers.wait_until(lambda: waiting_on(conn, "default") == 1, 15, "the worker to say it waits")
    first = scalar(
        conn,
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s",
        (WAITING_LOCK,),
    )
    conn.execute("SELECT pg_terminate_backend(%s)", (first,))
    workers.wait_until(
        lambda: scalar(
            conn,
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND pid <> %s",
            (WAITING_LOCK, first),
        ),
        15,
        "the worker to say it waits on a new LISTEN session",
    )
    run_id = insert_run(conn, "record", {"key": "after-reconnect"})
    workers.wait_until(lambda: status_of(conn, run_id) == "succeeded", 10, "the run to succeed after the reconnect")

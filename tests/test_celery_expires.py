"""Expiring runs (issue #16): a run not started by its ``expires_at`` is never started and ends
``cancelled`` with the reason ``expired`` — from ``enqueue``, ``apply_async`` and the SQL function
``pgsched.enqueue_v2`` alike, and visible in the API, the CLI and ``pgsched.recent_cancellations``.
The clock is moved through the statements' ``now`` instead of waited for."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from pgsched.claim_cursor import FROM_THE_START
from pgsched.errors import InvalidInput, RunCancelled
from pgsched.maintenance import cancel_expired
from pgsched.sql import queries
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import scalar, scalar_async
from tests.support.waiting import wait_until_async

LATER = timedelta(minutes=5)


def claim(conn: psycopg.Connection, now: datetime) -> list[int]:
    rows = conn.execute(
        queries["run_claim"],
        {
            "queues": ["default"],
            "limit": 10,
            "worker_id": 1,
            "lease_s": 30.0,
            "now": now,
            "only_tasks": None,
            "skip_tasks": None,
            **FROM_THE_START,
        },
    ).fetchall()
    return [row[0] for row in rows]


def sweep(dsn: str, now: datetime) -> int:
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await cancel_expired(conn, now=now)

    return asyncio.run(main())


def status_of(conn: psycopg.Connection, run_id: int) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT status::text, errors -> -1 ->> 'type', attempt, started_at FROM pgsched.runs_all WHERE id = %s",
        (run_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def test_an_expired_run_is_passed_over_by_the_claim_and_cancelled_by_the_sweep(app, dsn, conn):
    expiring = app.enqueue("t", expires=60)
    lasting = app.enqueue("t")
    later = datetime.now(timezone.utc) + LATER
    assert claim(conn, later) == [lasting]
    assert status_of(conn, expiring)[0] == "queued"
    assert sweep(dsn, later) == 1
    assert status_of(conn, expiring) == ("cancelled", "Expired", 0, None)  # never started
    assert sweep(dsn, later) == 0


def test_a_run_not_yet_expired_is_claimed_and_left_alone_by_the_sweep(app, dsn, conn):
    run_id = app.enqueue("t", expires=datetime.now(timezone.utc) + LATER)
    assert sweep(dsn, datetime.now(timezone.utc)) == 0
    assert claim(conn, datetime.now(timezone.utc)) == [run_id]


def test_expires_in_seconds_counts_from_the_enqueue_and_an_instant_is_kept_as_given(app, conn):
    relative = app.enqueue("t", expires=90)
    instant = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=-3)))
    absolute = app.enqueue("t", expires=instant)
    gap = scalar(conn, "SELECT expires_at - created_at FROM pgsched.runs_all WHERE id = %s", (relative,))
    assert timedelta(seconds=89) < gap <= timedelta(seconds=91)
    assert scalar(conn, "SELECT expires_at FROM pgsched.runs_all WHERE id = %s", (absolute,)) == instant


def test_an_expired_deferred_run_does_not_wake_the_fetcher(app, conn):
    expired = app.enqueue("t", delay=30, expires=60)
    conn.execute(  # deferred (run_at after created_at), due a minute ago, expired now
        "UPDATE pgsched.runs SET created_at = now() - interval '2 minutes', run_at = now() - interval '1 minute',"
        " expires_at = now() WHERE id = %s",
        (expired,),
    )
    assert scalar(conn, queries["run_next_due"], {"queues": ["default"]}) is None
    app.enqueue("t", delay=30, expires=60)
    assert 25 < scalar(conn, queries["run_next_due"], {"queues": ["default"]}) <= 30


def test_a_retry_due_after_the_expiry_is_not_started_again(app, dsn, conn):
    run_id = app.enqueue("t", expires=60)
    conn.execute(
        "UPDATE pgsched.runs SET attempt = 1, run_at = expires_at + interval '1 minute' WHERE id = %s", (run_id,)
    )
    much_later = datetime.now(timezone.utc) + timedelta(minutes=10)
    assert claim(conn, much_later) == []
    assert sweep(dsn, much_later) == 1
    assert status_of(conn, run_id)[:3] == ("cancelled", "Expired", 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"expires": 30, "delay": 60}, "is not after the run is due"),
        ({"expires": datetime(2020, 1, 1, tzinfo=timezone.utc)}, "is not after the run is due"),
        ({"expires": datetime(2031, 1, 1)}, "expires must be a timezone-aware datetime"),
        ({"expires": "soon"}, "expires must be a timezone-aware datetime or seconds from now"),
        ({"expires": True}, "expires must be a timezone-aware datetime or seconds from now"),
    ],
)
def test_enqueue_refuses_an_expiry_that_could_never_let_the_run_start(app, conn, options, message):
    with pytest.raises(InvalidInput, match=message):
        app.enqueue("t", **options)
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 0


def test_the_sql_function_enqueue_v2_takes_expires_at_and_refuses_one_before_run_at(dsn, conn):
    run_id = scalar(conn, "SELECT pgsched.enqueue_v2('t', expires_at => now() + interval '1 minute')")
    assert scalar(conn, "SELECT expires_at > now() FROM pgsched.runs_all WHERE id = %s", (run_id,)) is True
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"expires_at .* must be after run_at"):
        conn.execute(
            "SELECT pgsched.enqueue_v2('t', run_at => now() + interval '1 hour',"
            " expires_at => now() + interval '1 minute')"
        )
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 1
    # The previous release's function is still there, unchanged.
    assert scalar(conn, "SELECT pgsched.enqueue('t')") == run_id + 1


def test_an_expired_run_shows_its_reason_in_the_api_the_cli_and_the_view(app, dsn, conn, api):
    @app.task
    def report() -> None: ...

    handle = report.apply_async(expires=60)
    sweep(dsn, datetime.now(timezone.utc) + LATER)

    body = api.get(f"/runs/{handle.id}").json()
    assert body["status"] == "cancelled" and body["expires_at"] is not None
    assert body["errors"][-1]["type"] == "Expired" and "before a worker started it" in body["errors"][-1]["message"]

    shown = run_cli(dsn, "runs", "show", str(handle.id))
    assert shown.returncode == 0 and "expires_at" in shown.stdout and "Expired: expired at" in shown.stdout

    view = conn.execute("SELECT id, reason, message FROM pgsched.recent_cancellations").fetchall()
    assert [(row[0], row[1]) for row in view] == [(handle.id, "expired")] and "before a worker" in view[0][2]

    with pytest.raises(RunCancelled) as cancelled:
        handle.get(timeout=5)
    assert cancelled.value.reason == "expired" and cancelled.value.remote_traceback is None


def test_a_waiter_on_a_run_that_expires_is_woken_by_the_sweep(app, dsn):
    handle = app.run(app.enqueue("t", expires=60))

    async def main() -> Any:
        waiting = asyncio.create_task(handle.wait(timeout=20, propagate=False))
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            awaited = "SELECT awaited IS TRUE FROM pgsched.runs_all"
            await wait_until_async(lambda: scalar_async(conn, awaited), 10, "the waiter to mark the run", poll=0.01)
            await cancel_expired(conn, now=datetime.now(timezone.utc) + LATER)
        return await waiting

    outcome = asyncio.run(main())
    assert isinstance(outcome, RunCancelled) and outcome.reason == "expired"


def test_the_cli_refuses_a_bad_run_id_with_one_line(dsn):
    assert_one_error_line(run_cli(dsn, "runs", "show", "0"), "a run id is a positive integer")

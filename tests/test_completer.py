"""The completer's two statements: a batch whose outcomes all succeeded is written by the lean
run_complete_succeeded, any other by run_complete_many. Both are fenced the same way, and a run
written by either ends as it would have by the other."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from pgsched import App
from pgsched.claim_cursor import FROM_THE_START
from pgsched.completer import Completer
from pgsched.run_types import Outcome
from pgsched.sql import queries
from pgsched.worker import Worker
from tests.support.inprocess import run_async

COLUMNS = "status::text, result, errors, finished_at IS NOT NULL, lease_expires_at, run_at = created_at"


def running(conn: psycopg.Connection[Any], n: int, worker_id: int) -> list[tuple[int, int]]:
    """``n`` runs claimed by ``worker_id``: (id, attempt) each."""
    conn.execute(
        "INSERT INTO pgsched.runs (task, run_at, created_at) SELECT 't', now(), now() FROM generate_series(1, %s)", (n,)
    )
    rows = conn.execute(
        queries["run_claim"],
        {"queues": ["default"], "limit": n, "worker_id": worker_id, "lease_s": 30.0, "now": None}
        | {"only_tasks": None, "skip_tasks": None, **FROM_THE_START},
    ).fetchall()
    assert len(rows) == n
    return sorted((row[0], row[3]) for row in rows)


def register(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        queries["worker_register"], {"host": "test-host", "pid": 1, "queues": ["default"], "concurrency": 10}
    ).fetchone()
    assert row is not None
    return int(row[0])


def write(dsn: str, worker_id: int, outcomes: list[Outcome]) -> list[set[int]]:
    """The outcomes through a Completer; the ids each batch wrote."""

    async def main() -> list[set[int]]:
        written: list[set[int]] = []
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open(wait=True)
            completer = Completer(pool, worker_id, lambda batch, ids: written.append(ids))
            writer = asyncio.create_task(completer.run())
            for outcome in outcomes:
                completer.add(outcome)
            await asyncio.wait_for(completer.drain(), 10)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        return written

    return run_async(main())  # type: ignore[no-any-return]


def row(conn: psycopg.Connection[Any], run_id: int) -> tuple[Any, ...]:
    found = conn.execute(f"SELECT {COLUMNS} FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()
    assert found is not None
    return tuple(found)


def test_a_batch_of_successes_ends_its_runs_and_honours_a_cancel_request(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    worker = register(conn)
    (plain, attempt), (cancelled, attempt_c), (valued, attempt_v) = running(conn, 3, worker)
    conn.execute("UPDATE pgsched.runs SET cancel_requested_at = now() WHERE id = %s", (cancelled,))

    written = write(
        dsn,
        worker,
        [
            Outcome(plain, attempt, "succeeded", result="null"),
            Outcome(cancelled, attempt_c, "succeeded", result='"late"'),
            Outcome(valued, attempt_v, "succeeded", result='{"quote": "a \\"b\\" \\\\ c", "n": [1, null]}'),
        ],
    )

    assert written == [{plain, cancelled, valued}]
    assert row(conn, plain) == ("succeeded", None, [], True, None, True)
    assert row(conn, cancelled) == ("cancelled", "late", [], True, None, True)
    assert row(conn, valued) == ("succeeded", {"quote": 'a "b" \\ c', "n": [1, None]}, [], True, None, True)


def test_a_success_is_fenced_like_any_outcome(dsn: str, conn: psycopg.Connection[Any]) -> None:
    worker = register(conn)
    [(run_id, attempt)] = running(conn, 1, worker)

    assert write(dsn, worker, [Outcome(run_id, attempt + 1, "succeeded", result="1")]) == [set()]
    assert write(dsn, worker + 1, [Outcome(run_id, attempt, "succeeded", result="1")]) == [set()]
    assert row(conn, run_id)[0] == "running"


def test_a_mixed_batch_writes_each_outcome(dsn: str, conn: psycopg.Connection[Any]) -> None:
    worker = register(conn)
    (ok, a_ok), (retry, a_retry), (failed, a_failed) = running(conn, 3, worker)
    error = '{"type": "Boom", "message": "it said \\"no\\""}'

    written = write(
        dsn,
        worker,
        [
            Outcome(ok, a_ok, "succeeded", result="[1]"),
            Outcome(retry, a_retry, "queued", error=error, retry_delay_s=60),
            Outcome(failed, a_failed, "failed", error=error),
        ],
    )

    assert written == [{ok, retry, failed}]
    assert row(conn, ok) == ("succeeded", [1], [], True, None, True)
    status, result, errors, finished, lease, due_now = row(conn, retry)
    assert (status, result, finished, lease, due_now) == ("queued", None, False, None, False)
    assert [(e["type"], e["message"]) for e in errors] == [("Boom", 'it said "no"')]
    status, result, errors, finished, lease, _ = row(conn, failed)
    assert (status, result, finished, lease) == ("failed", None, True, None)
    assert errors[0]["message"] == 'it said "no"' and "started_at" in errors[0]


def test_both_statements_leave_a_success_alike(conn: psycopg.Connection[Any]) -> None:
    """The lean statement is run_complete_many with the parts a success does not use left out."""
    worker = register(conn)
    (first, a_first), (second, a_second) = running(conn, 2, worker)
    conn.execute(
        queries["run_complete_many"],
        {
            "worker_id": worker,
            "ids": [first],
            "attempts": [a_first],
            "statuses": ["succeeded"],
            "results": ['{"a": 1}'],
            "errors": [None],
            "retry_delays_s": [0.0],
        },
    )
    conn.execute(
        queries["run_complete_succeeded"],
        {"worker_id": worker, "ids": [second], "attempts": [a_second], "results": ['{"a": 1}']},
    )
    assert row(conn, first) == row(conn, second)


def test_the_worker_names_each_outcome_its_lease_no_longer_covered(app: App, caplog: Any) -> None:
    """The completer reports what the fenced UPDATE wrote; the worker warns for the rest only."""
    worker = Worker(app)
    batch = [Outcome(1, 1, "succeeded", result="null"), Outcome(2, 3, "succeeded", result="null")]

    with caplog.at_level(logging.WARNING, logger="pgsched.worker"):
        worker._on_written(batch, {1, 2})
        assert caplog.messages == []
        worker._on_written(batch, {1})

    assert caplog.messages == ["run 2: outcome discarded, this worker no longer held attempt 3 (lease lost)"]


REFUSE_ONCE = """
CREATE SEQUENCE public.refusals;
CREATE FUNCTION public.refuse_first_success() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('public.refusals') = 1 THEN  -- a sequence: counted even though the error rolls back
        RAISE EXCEPTION 'new row for relation "runs_history_default" violates %', %L USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER refuse_first_success BEFORE UPDATE ON pgsched.runs
    FOR EACH ROW WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION public.refuse_first_success();
"""


def test_a_completion_refused_while_its_day_partition_was_attached_is_written_again(
    dsn: str, conn: psycopg.Connection[Any], caplog: Any
) -> None:
    # PostgreSQL's refusal of a run the move routed to DEFAULT while the leader attached that
    # day (schema 0032's known race, when the leader was down for days): the first write only.
    conn.execute(REFUSE_ONCE.replace("%L", "'partition constraint'").encode())
    worker = register(conn)
    [(run_id, attempt)] = running(conn, 1, worker)
    with caplog.at_level(logging.WARNING, logger="pgsched.worker"):
        assert write(dsn, worker, [Outcome(run_id, attempt, "succeeded", result="1")]) == [{run_id}]
    assert row(conn, run_id)[:2] == ("succeeded", 1)
    assert "violates partition constraint" in caplog.text and "retrying" in caplog.text


def test_a_completion_refused_by_another_check_is_not_retried(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute(REFUSE_ONCE.replace("%L", "'check constraint \"some_rule\"'").encode())
    worker = register(conn)
    [(run_id, attempt)] = running(conn, 1, worker)

    async def main() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open(wait=True)
            completer = Completer(pool, worker, lambda batch, ids: None)
            completer.add(Outcome(run_id, attempt, "succeeded", result="1"))
            await asyncio.wait_for(completer.run(), 10)

    with pytest.raises(psycopg.errors.CheckViolation, match="some_rule"):
        run_async(main())
    assert row(conn, run_id)[0] == "running"

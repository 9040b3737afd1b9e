"""The worker, driven in-process: a ``Worker`` runs as a task in the test's event loop against the
real database and is stopped with ``request_stop()``. Every wait polls the database with a deadline.

Also the pieces a dead worker leaves behind: the lease sweep (``rescue_expired``, with the clock
moved forward through its ``now``) and the fencing of outcome writes (``run_complete_many``)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from pgsched import App
from pgsched.claim_cursor import FROM_THE_START
from pgsched.completer import Completer
from pgsched.errors import Cancel, Retry
from pgsched.run_types import Outcome
from pgsched.sql import queries
from pgsched.ui.pages import timeline
from pgsched.worker import MIN_UNWRITTEN, rescue_expired
from tests.support.db import empty_tables
from tests.support.inprocess import RunningWorker, finish, run_async
from tests.support.waiting import wait_until_async

try:  # the sweep's advisory-lock key lives with the sweep
    from pgsched.maintenance import SWEEP_LOCK_KEY
except ImportError:
    from pgsched.worker import SWEEP_LOCK_KEY  # type: ignore[attr-defined,no-redef]

# One database for the module, emptied before each test: much cheaper than a fresh clone per test,
# and every test here starts from empty tables just the same (conftest's ``app`` is on it too).


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


# ---- claim order and results


def test_runs_are_claimed_by_priority_then_run_at_then_id(app, dsn):
    ran: list[str] = []

    @app.task
    async def record(label: str) -> None:
        ran.append(label)

    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    # Enqueued out of claim order, across two queues.
    plan = [
        ("p5 oldest", 5, base, "default"),
        ("p0 at +2 first id", 0, base + timedelta(minutes=2), "default"),
        ("p-5 at +3", -5, base + timedelta(minutes=3), "other"),
        ("p0 at +2 second id", 0, base + timedelta(minutes=2), "other"),
        ("p0 at +1", 0, base + timedelta(minutes=1), "other"),
        ("p-5 at +4", -5, base + timedelta(minutes=4), "default"),
        ("p0 at +2 third id", 0, base + timedelta(minutes=2), "default"),
    ]
    ids = [
        app.enqueue("record", {"label": label}, priority=priority, run_at=at, queue=queue)
        for label, priority, at, queue in plan
    ]
    expected = [
        "p-5 at +3",
        "p-5 at +4",
        "p0 at +1",
        "p0 at +2 first id",
        "p0 at +2 second id",
        "p0 at +2 third id",
        "p5 oldest",
    ]

    async def main() -> list[dict]:
        async with RunningWorker(app, dsn, concurrency=1, queues=["default", "other"]) as w:
            return [await w.finished(run_id) for run_id in ids]

    rows = run_async(main())
    assert {row["status"] for row in rows} == {"succeeded"}
    assert ran == expected
    by_start = sorted(rows, key=lambda row: row["started_at"])
    assert [row["args"]["label"] for row in by_start] == expected


def test_a_task_result_is_stored_as_jsonb(app, dsn, conn):
    @app.task
    def compute(kind: str) -> Any:
        return {
            "object": {"n": 3, "items": [1, "two", None], "ok": True, "pi": 3.5},
            "string": "done",
            "none": None,
            "list": [1, [2]],
        }[kind]

    ids = {kind: app.enqueue("compute", {"kind": kind}) for kind in ("object", "string", "none", "list")}

    async def main() -> None:
        async with RunningWorker(app, dsn, concurrency=4) as w:
            for run_id in ids.values():
                row = await w.finished(run_id)
                assert row["status"] == "succeeded", row["errors"]

    run_async(main())
    types = dict(conn.execute("SELECT args->>'kind', jsonb_typeof(result) FROM pgsched.runs_all").fetchall())
    assert types == {"object": "object", "string": "string", "none": "null", "list": "array"}
    assert conn.execute("SELECT result FROM pgsched.runs_all WHERE id = %s", (ids["object"],)).fetchone()[0] == {
        "n": 3,
        "items": [1, "two", None],
        "ok": True,
        "pi": 3.5,
    }
    assert conn.execute(
        "SELECT result->'items'->>1, (result->>'n')::int FROM pgsched.runs_all WHERE id = %s", (ids["object"],)
    ).fetchone() == ("two", 3)
    row = conn.execute(
        "SELECT attempt, errors, finished_at IS NOT NULL, lease_expires_at FROM pgsched.runs_all WHERE id = %s",
        (ids["string"],),
    ).fetchone()
    assert row == (1, [], True, None)


def test_a_small_worker_claims_on_while_its_completions_wait_for_the_database(app, dsn, conn):
    """A worker may hold MIN_UNWRITTEN outcomes unwritten, not only twice its concurrency: one of
    concurrency 2 whose completions are held up (the history they move into is locked) still
    claims and runs all 40 queued runs, where it used to stop at 4 unwritten; once the lock goes,
    every outcome is written, each run once."""

    @app.task
    async def noop() -> None:
        return None

    ids = app.enqueue_many("noop", [{}] * 40)
    assert MIN_UNWRITTEN >= len(ids)

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as blocker:  # holds the lock until it rolls back
            await blocker.execute("LOCK TABLE pgsched.runs_history IN SHARE MODE")
            async with RunningWorker(app, dsn, concurrency=2) as w:

                async def all_claimed() -> bool:
                    cursor = await w.db.execute("SELECT count(*) FROM pgsched.runs WHERE status = 'running'")
                    row = await cursor.fetchone()
                    return row is not None and row["count"] == len(ids)

                await wait_until_async(all_claimed, 15, "all 40 runs claimed", check=w.still_running)
                await blocker.rollback()
                for run_id in ids:
                    assert (await w.finished(run_id))["status"] == "succeeded"

    run_async(main())
    assert conn.execute("SELECT count(*), max(attempt) FROM pgsched.runs_history").fetchone() == (40, 1)


# ---- failures and retries


def test_a_failing_task_is_retried_with_backoff_until_max_attempts_then_fails(app, dsn):
    calls: list[float] = []

    @app.task(max_attempts=3, retry_backoff=0.01)
    def flaky_upload(name: str) -> None:
        calls.append(time.monotonic())
        raise ValueError(f"boom on call {len(calls)} for {name}")

    run_id = app.tasks["flaky_upload"].enqueue(name="report.pdf")

    [row] = finish(app, dsn, run_id, concurrency=2)
    assert (row["status"], row["attempt"], row["max_attempts"], row["result"]) == ("failed", 3, 3, None)
    assert row["finished_at"] is not None and row["lease_expires_at"] is None
    assert len(calls) == 3
    assert [entry["attempt"] for entry in row["errors"]] == [1, 2, 3]
    for number, entry in enumerate(row["errors"], start=1):
        assert entry["type"] == "ValueError"
        assert entry["message"] == f"boom on call {number} for report.pdf"
        assert entry["traceback"].startswith("Traceback (most recent call last):")
        assert "in flaky_upload" in entry["traceback"]
        assert f"ValueError: boom on call {number} for report.pdf" in entry["traceback"]
        assert entry["worker_id"] == row["worker_id"]
    ats = [datetime.fromisoformat(entry["at"]) for entry in row["errors"]]
    assert ats == sorted(ats)


def test_a_task_that_fails_then_succeeds_keeps_the_errors_of_its_failed_attempts(app, dsn):
    calls = []

    @app.task(max_attempts=5, retry_backoff=0.01)
    async def sometimes() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("the service is down")
        return "finally"

    run_id = app.enqueue("sometimes")

    [row] = finish(app, dsn, run_id)
    assert (row["status"], row["attempt"], row["result"]) == ("succeeded", 3, "finally")
    assert [(e["attempt"], e["type"], e["message"]) for e in row["errors"]] == [
        (1, "ConnectionError", "the service is down"),
        (2, "ConnectionError", "the service is down"),
    ]


def back_in_the_queue_after_attempt_1(app: App, dsn: str, run_id: int) -> dict:
    """Run a worker until the run's first attempt has failed and the run is queued again: its row."""

    async def main() -> dict:
        async with RunningWorker(app, dsn) as w:
            return await w.until(run_id, lambda r: r["status"] == "queued" and r["attempt"] == 1, "the retry")

    return run_async(main())


def test_a_failed_attempt_goes_back_to_the_queue_after_the_backoff(app, dsn):
    @app.task(max_attempts=3, retry_backoff=60)
    def fails() -> None:
        raise RuntimeError("nope")

    row = back_in_the_queue_after_attempt_1(app, dsn, app.enqueue("fails"))
    # Attempt 1 backs off base * 2^0 * jitter(0.5..1.5): 30 to 90 seconds.
    assert timedelta(seconds=25) < row["run_at"] - row["db_now"] <= timedelta(seconds=90)
    assert (row["finished_at"], row["lease_expires_at"], len(row["errors"])) == (None, None, 1)


def test_retry_after_puts_the_run_back_at_the_given_delay(app, dsn):
    @app.task(max_attempts=3)
    def rate_limited() -> None:
        raise Retry(after=120, reason="rate limited: come back in 2 minutes")

    row = back_in_the_queue_after_attempt_1(app, dsn, app.enqueue("rate_limited"))
    assert timedelta(seconds=110) < row["run_at"] - row["db_now"] <= timedelta(seconds=120)
    [entry] = row["errors"]
    assert (entry["type"], entry["message"], entry["attempt"]) == ("Retry", "rate limited: come back in 2 minutes", 1)


def test_retry_runs_the_task_again_and_counts_as_an_attempt(app, dsn):
    calls = []

    @app.task(max_attempts=3)
    async def poll_export() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise Retry(after=0.01, reason="not ready")
        return "exported"

    @app.task(max_attempts=1)
    async def always_retry() -> None:
        raise Retry(after=0.01)

    again = app.enqueue("poll_export")
    used_up = app.enqueue("always_retry")

    again_row, used_up_row = finish(app, dsn, again, used_up)
    assert (again_row["status"], again_row["attempt"], again_row["result"]) == ("succeeded", 2, "exported")
    assert [e["type"] for e in again_row["errors"]] == ["Retry"]
    assert (used_up_row["status"], used_up_row["attempt"]) == ("failed", 1)
    assert used_up_row["errors"][-1]["message"] == "retry requested by the task"


def test_each_failed_attempt_records_when_it_started_for_the_runs_timeline(app, dsn):
    calls = []

    @app.task(max_attempts=3, retry_backoff=0.01)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError(f"attempt {len(calls)} breaks")
        return "done"

    [row] = finish(app, dsn, app.enqueue("flaky", {}))
    assert (row["status"], row["attempt"]) == ("succeeded", 3)
    first, second = row["errors"]
    starts = [datetime.fromisoformat(error["started_at"]) for error in (first, second)]
    assert row["created_at"] <= starts[0] < datetime.fromisoformat(first["at"]) <= starts[1] < row["started_at"]
    assert [what for _, what in timeline(row)] == [
        "created",
        "attempt 1 started",
        "attempt 1 failed: ValueError",
        "attempt 2 started",
        "attempt 2 failed: ValueError",
        "attempt 3 started",
        "succeeded",
    ]


def test_cancel_ends_the_run_as_cancelled_without_retries(app, dsn):
    calls = []

    @app.task(max_attempts=5)
    def maybe_send(order: int) -> None:
        calls.append(order)
        raise Cancel(f"order {order} was refunded")

    run_id = app.tasks["maybe_send"].enqueue(order=7)

    [row] = finish(app, dsn, run_id)
    assert (row["status"], row["attempt"], row["result"]) == ("cancelled", 1, None)
    assert row["finished_at"] is not None
    assert calls == [7]
    [entry] = row["errors"]
    assert (entry["type"], entry["message"]) == ("Cancel", "order 7 was refunded")


def test_an_async_task_is_cancelled_at_its_timeout(app, dsn):
    cancelled = []

    @app.task(timeout=0.2, max_attempts=2, retry_backoff=0.01)
    async def hangs() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    run_id = app.enqueue("hangs")

    async def main() -> dict:
        async with RunningWorker(app, dsn) as w:
            started = time.monotonic()
            row = await w.finished(run_id)
            assert time.monotonic() - started < 10
            return row

    row = run_async(main())
    assert (row["status"], row["attempt"]) == ("failed", 2)
    assert [(e["type"], e["message"]) for e in row["errors"]] == [
        ("Timeout", "timed out after 0.2s"),
        ("Timeout", "timed out after 0.2s"),
    ]
    assert len(cancelled) == 2


# ---- runs the worker cannot execute


def test_an_unknown_task_fails_its_run_and_the_worker_keeps_working(app, dsn):
    @app.task
    def known() -> str:
        return "fine"

    ghost = app.enqueue("ghost", {"x": 1}, max_attempts=3)

    async def main() -> tuple[dict, dict]:
        async with RunningWorker(app, dsn) as w:
            ghost_row = await w.finished(ghost)
            later = await app.enqueue_async("known")
            return ghost_row, await w.finished(later)

    ghost_row, later_row = run_async(main())
    assert (ghost_row["status"], ghost_row["attempt"]) == ("failed", 1), "an unknown task is not retried"
    [entry] = ghost_row["errors"]
    assert entry["type"] == "TaskNotFound"
    assert "unknown task 'ghost'" in entry["message"] and "known" in entry["message"]
    assert (later_row["status"], later_row["result"]) == ("succeeded", "fine")


def test_args_that_do_not_fit_the_task_fail_the_run_with_a_clear_error(app, dsn, conn):
    called = []

    @app.task(max_attempts=3)
    def add(a: int, b: int) -> int:
        called.append((a, b))
        return a + b

    # Queued behind the Python API's back (another service, plain SQL): nothing checked them.
    bad = conn.execute("INSERT INTO pgsched.runs (task, args) VALUES ('add', '{\"x\": 1}') RETURNING id").fetchone()[0]
    good = app.enqueue("add", {"a": 2, "b": 3})

    bad_row, good_row = finish(app, dsn, bad, good)
    assert (bad_row["status"], bad_row["attempt"]) == ("failed", 1)
    [entry] = bad_row["errors"]
    assert entry["type"] == "InvalidArgs"
    assert "args do not fit add(" in entry["message"] and "missing a required argument: 'a'" in entry["message"]
    assert (good_row["status"], good_row["result"]) == ("succeeded", 5)
    assert called == [(2, 3)]


def test_a_result_that_is_not_json_serialisable_fails_the_run(app, dsn):
    @app.task(max_attempts=3)
    def returns_a_set() -> set[int]:
        return {1, 2}

    run_id = app.enqueue("returns_a_set")

    [row] = finish(app, dsn, run_id)
    assert (row["status"], row["attempt"], row["result"]) == ("failed", 1, None)
    [entry] = row["errors"]
    assert entry["type"] == "ResultNotSerialisable"
    assert "not JSON-serialisable" in entry["message"] and "set" in entry["message"]


# ---- threads and time


def test_sync_tasks_run_in_worker_threads_concurrently(app, dsn):
    both_running = threading.Barrier(2, timeout=5)

    @app.task
    def blocking(n: int) -> str:
        both_running.wait()  # breaks (and fails the run) unless the other run is in a thread at the same time
        return threading.current_thread().name

    ids = [app.enqueue("blocking", {"n": n}) for n in range(2)]

    async def main() -> list[dict]:
        async with RunningWorker(app, dsn, concurrency=2) as w:
            return [await w.finished(run_id) for run_id in ids]

    rows = run_async(main())
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], [row["errors"] for row in rows]
    names = [row["result"] for row in rows]
    assert len(set(names)) == 2
    assert all(name.startswith("pgsched-task") for name in names)
    assert threading.main_thread().name not in names


def test_a_blocking_sync_task_does_not_block_async_tasks(app, dsn):
    released = threading.Event()

    @app.task
    def waits_for_release() -> bool:
        return released.wait(timeout=5)

    @app.task
    async def releases() -> None:
        released.set()

    first = app.enqueue("waits_for_release", priority=-1)
    second = app.enqueue("releases")

    async def main() -> list[dict]:
        async with RunningWorker(app, dsn, concurrency=2) as w:
            return [await w.finished(first), await w.finished(second)]

    rows = run_async(main())
    assert [(row["status"], row["result"]) for row in rows] == [("succeeded", True), ("succeeded", None)]


def test_a_run_with_a_future_run_at_is_not_claimed_before_it_is_due(app, dsn):
    @app.task
    async def tick() -> None: ...

    soon = app.enqueue("tick", delay=0.8)
    much_later = app.enqueue("tick", delay=3600)
    now = app.enqueue("tick")

    async def main() -> tuple[dict, dict, dict, dict]:
        # A poll interval far longer than the test: the fetcher must wake by itself when the run is due.
        async with RunningWorker(app, dsn, poll_interval_s=60) as w:
            now_row = await w.finished(now)
            soon_before = await w.row(soon)
            soon_row = await w.finished(soon, timeout=10)
            return now_row, soon_before, soon_row, await w.row(much_later)

    now_row, soon_before, soon_row, much_later_row = run_async(main())
    assert now_row["status"] == "succeeded"
    if soon_before["db_now"] < soon_before["run_at"]:
        assert (soon_before["status"], soon_before["attempt"]) == ("queued", 0)
    assert soon_row["status"] == "succeeded"
    assert soon_row["started_at"] >= soon_row["run_at"]
    assert (much_later_row["status"], much_later_row["attempt"], much_later_row["worker_id"]) == ("queued", 0, None)


def test_a_worker_registers_itself_while_running_and_deregisters_at_stop(app, dsn, conn):
    @app.task(queue="mail")
    async def send() -> None: ...

    async def main() -> int:
        async with RunningWorker(app, dsn, concurrency=3) as w:

            async def registered() -> Any:
                cursor = await w.db.execute("SELECT * FROM pgsched.workers")
                return await cursor.fetchall()

            [row] = await wait_until_async(registered, 10, "the worker to register", check=w.still_running)
            assert (row["host"], row["pid"], row["queues"], row["concurrency"]) == (
                socket.gethostname(),
                os.getpid(),
                ["default", "mail"],
                3,
            )
            assert row["id"] == w.worker.worker_id
            return row["id"]

    run_async(main())
    assert conn.execute("SELECT count(*) FROM pgsched.workers").fetchone()[0] == 0


# ---- the lease sweep


async def register_worker(conn: psycopg.AsyncConnection, pid: int = 4242) -> int:
    cursor = await conn.execute(
        queries["worker_register"], {"host": "test-host", "pid": pid, "queues": ["default"], "concurrency": 1}
    )
    return (await cursor.fetchone())[0]  # type: ignore[index]


async def claim(
    conn: psycopg.AsyncConnection, worker_id: int, queues: list[str], now: object = None, limit: int = 10
) -> list[tuple]:
    cursor = await conn.execute(
        queries["run_claim"],
        {
            "queues": queues,
            "limit": limit,
            "worker_id": worker_id,
            "lease_s": 30.0,
            "now": now,
            "only_tasks": None,
            "skip_tasks": None,
            **FROM_THE_START,
        },
    )
    return await cursor.fetchall()


def test_the_lease_sweep_requeues_an_expired_run_and_fails_one_with_no_attempts_left(app, dsn, conn):
    retryable = app.enqueue("t", {}, queue="qa", max_attempts=3)
    used_up = app.enqueue("t", {}, queue="qb", max_attempts=1)
    healthy = app.enqueue("t", {}, queue="qc", max_attempts=3)

    async def main() -> tuple:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open(wait=True)
            async with pool.connection() as c:
                dead = await register_worker(c)
                alive = await register_worker(c, pid=4343)
                assert len(await claim(c, dead, ["qa", "qb"])) == 2
                assert len(await claim(c, alive, ["qc"])) == 1
                cursor = await c.execute("SELECT now() + interval '1 hour'")
                later = (await cursor.fetchone())[0]
                # The living worker heartbeats into the future; the dead one does not.
                await c.execute(
                    "UPDATE pgsched.runs SET lease_expires_at = %s + interval '30 seconds' WHERE worker_id = %s",
                    (later, alive),
                )
                await c.execute("UPDATE pgsched.workers SET last_seen_at = %s WHERE id = %s", (later, alive))
            not_yet = await rescue_expired(pool, stale_worker_s=120)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listening:
                await listening.execute("LISTEN pgsched")
                swept = await rescue_expired(pool, stale_worker_s=120, now=later)
                sentinel = f"sentinel-{uuid.uuid4()}"
                async with pool.connection() as c:
                    await c.execute("SELECT pg_notify('pgsched', %s)", (sentinel,))
                woken = []
                async for notify in listening.notifies(timeout=10):
                    if notify.payload == sentinel:
                        break
                    woken.append(notify.payload)
            async with pool.connection() as c:
                reclaimed = await claim(c, alive, ["qa"], now=later)
            return not_yet, swept, woken, dead, alive, later, reclaimed

    not_yet, swept, woken, dead, alive, later, reclaimed = run_async(main())
    assert not_yet == (0, 0), "a lease that has not expired is left alone"
    assert swept == (1, 1)
    assert woken == ["qa"], "only the queue of the requeued run is woken"

    def row(run_id: int) -> dict:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute("SELECT * FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()

    failed, running = row(used_up), row(healthy)
    assert (failed["status"], failed["attempt"], failed["finished_at"], failed["lease_expires_at"]) == (
        "failed",
        1,
        later,
        None,
    )
    [entry] = failed["errors"]
    assert entry["type"] == "LeaseExpired" and entry["attempt"] == 1 and entry["worker_id"] == dead
    assert f"worker {dead} stopped heartbeating: lease expired at" in entry["message"]
    assert (running["status"], running["worker_id"], running["errors"]) == ("running", alive, [])
    # The requeued run was due again at the sweep's "now", and the next claim is its attempt 2.
    assert [(r[0], r[3]) for r in reclaimed] == [(retryable, 2)]
    assert [e["type"] for e in row(retryable)["errors"]] == ["LeaseExpired"]
    workers = conn.execute("SELECT id FROM pgsched.workers ORDER BY id").fetchall()
    assert workers == [(alive,)], "the worker not seen for longer than stale_worker_s is forgotten"


def test_the_lease_sweep_skips_while_another_sweeper_holds_the_lock(app, dsn, conn):
    run_id = app.enqueue("t", {})

    async def main() -> tuple:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open(wait=True)
            async with pool.connection() as c:
                worker_id = await register_worker(c)
                await claim(c, worker_id, ["default"])
            far = datetime.now(timezone.utc) + timedelta(days=1)
            async with await psycopg.AsyncConnection.connect(dsn) as other:
                await other.execute("SELECT pg_advisory_xact_lock(%s)", (SWEEP_LOCK_KEY,))
                while_locked = await rescue_expired(pool, stale_worker_s=60, now=far)
                await other.rollback()
            return while_locked, await rescue_expired(pool, stale_worker_s=60, now=far)

    while_locked, after = run_async(main())
    assert while_locked == (0, 0)
    assert after == (1, 0)
    assert conn.execute("SELECT status::text FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()[0] == "queued"


# ---- fencing


def test_an_outcome_from_a_worker_that_lost_its_lease_changes_nothing(app, dsn, conn):
    run_id = app.enqueue("t", {}, max_attempts=3)

    async def main() -> tuple:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False) as pool:
            await pool.open(wait=True)
            async with pool.connection() as c:
                first = await register_worker(c, pid=1)
                second = await register_worker(c, pid=2)
                [(_, _, _, attempt_1, *_)] = await claim(c, first, ["default"])
                later = datetime.now(timezone.utc) + timedelta(hours=1)
                assert await rescue_expired(pool, stale_worker_s=3600 * 24, now=later) == (1, 0)
                [(_, _, _, attempt_2, *_)] = await claim(c, second, ["default"], now=later)

            # The first worker finishes late, through its completer: the write is fenced off.
            written: list[set[int]] = []
            completer = Completer(pool, first, lambda batch, ids: written.append(ids))
            writer = asyncio.create_task(completer.run())
            completer.add(Outcome(run_id, attempt_1, "succeeded", result='"stale"'))
            await asyncio.wait_for(completer.drain(), 10)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

            async def complete(worker_id: int, attempt: int, status: str) -> list:
                async with pool.connection() as c:
                    cursor = await c.execute(
                        queries["run_complete_many"],
                        {
                            "worker_id": worker_id,
                            "ids": [run_id],
                            "attempts": [attempt],
                            "statuses": [status],
                            "results": ['"x"'],
                            "errors": [None],
                            "retry_delays_s": [0.0],
                        },
                    )
                    return await cursor.fetchall()

            mismatched = [
                await complete(second, attempt_1, "failed"),  # right worker, old attempt
                await complete(first, attempt_2, "failed"),
            ]  # right attempt, old worker
            async with pool.connection() as c:
                cursor = await c.execute(
                    "SELECT status::text, worker_id, attempt, result FROM pgsched.runs_all WHERE id = %s", (run_id,)
                )
                untouched = await cursor.fetchone()
            holder = await complete(second, attempt_2, "succeeded")
            return first, second, attempt_1, attempt_2, written, mismatched, untouched, holder

    _first, second, attempt_1, attempt_2, written, mismatched, untouched, holder = run_async(main())
    assert (attempt_1, attempt_2) == (1, 2)
    assert written == [set()], "the completer reports the stale outcome as not written"
    assert mismatched == [[], []]
    assert untouched == ("running", second, 2, None)
    assert holder == [(run_id,)]
    assert conn.execute("SELECT status::text, result FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone() == (
        "succeeded",
        "x",
    )

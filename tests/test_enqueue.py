"""Every enqueue path against the real database: the Python API (sync and asyncio, one run and
COPY batches), the caller's transaction, idempotency keys, timing, the SQL function and a plain
INSERT, and the NOTIFY the runs table's trigger sends (one per queue per statement)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgsched import App
from pgsched.sql import queries
from tests.support.db import empty_tables

CHANNEL = "pgsched"


# One database for the module, emptied before each test: much cheaper than a fresh clone per test,
# and every test here starts from empty tables just the same.


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


@pytest.fixture
def app(dsn: str) -> Iterator[App]:
    application = App(dsn=dsn)

    @application.task(queue="mail", priority=-5, max_attempts=7)
    def send(to: str, subject: str = "hi") -> None: ...

    yield application
    application.close()


def runs(conn: psycopg.Connection) -> list[dict]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute("SELECT * FROM pgsched.runs_all ORDER BY id").fetchall()


def run_row(conn: psycopg.Connection, run_id: int) -> dict:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()
    assert row is not None, f"run {run_id} does not exist"
    return row


def fields(row: dict, *names: str) -> tuple:
    """The values of ``names`` in ``row``, in that order: many columns compared in one assert."""
    return tuple(row[name] for name in names)


# ---- NOTIFY observation, without sleeping: after the statement under test, a sentinel NOTIFY is
# sent from another session; notifications reach a listener in commit order, so everything the
# statement under test delivered arrives before the sentinel.


# The queues the listener below waits on, as a sleeping worker does (schema 0027: the trigger
# notifies a queue only while someone waits on it).
WAITED_ON = ["alpha", "beta", "bulkq", "default", "mail", "q1", "sqlq"]


@pytest.fixture
def listener(dsn: str) -> Iterator[psycopg.Connection]:
    """A sleeping worker's session: it LISTENs and says it waits on WAITED_ON."""
    with psycopg.connect(dsn, autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")
        listening.execute(queries["worker_advertise_waiting"], {"queues": WAITED_ON})
        yield listening


def delivered(listening: psycopg.Connection, dsn: str) -> list[str]:
    """Payloads delivered on the channel since the last call, up to a sentinel sent now."""
    sentinel = f"sentinel-{uuid.uuid4()}"
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_notify(%s, %s)", (CHANNEL, sentinel))
    payloads = []
    for notify in listening.notifies(timeout=10):
        if notify.payload == sentinel:
            return payloads
        payloads.append(notify.payload)
    raise AssertionError(f"the sentinel notification never arrived; got {payloads}")


# ---- Python, sync


def test_app_enqueue_inserts_a_queued_run_with_its_args_and_returns_its_id(app, conn):
    run_id = app.enqueue("resize", {"path": "/tmp/a.png", "sizes": [1, 2]}, queue="images", priority=3, max_attempts=4)
    [row] = runs(conn)
    assert row["id"] == run_id
    assert (row["task"], row["args"], row["queue"], row["priority"], row["max_attempts"]) == (
        "resize",
        {"path": "/tmp/a.png", "sizes": [1, 2]},
        "images",
        3,
        4,
    )
    assert (row["status"], row["attempt"], row["errors"], row["result"]) == ("queued", 0, [], None)


def test_app_enqueue_without_args_stores_an_empty_object(app, conn):
    run_id = app.enqueue("ping")
    assert run_row(conn, run_id)["args"] == {}


def test_task_enqueue_passes_kwargs_as_args_and_uses_the_task_defaults(app, conn):
    send = app.tasks["send"]
    run_id = send.enqueue(to="a@b.c", subject="yo")
    row = run_row(conn, run_id)
    assert (row["task"], row["args"]) == ("send", {"to": "a@b.c", "subject": "yo"})
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("mail", -5, 7)


def test_explicit_options_override_the_registered_task_defaults(app, conn):
    run_id = app.enqueue("send", {"to": "x"}, queue="urgent", priority=9, max_attempts=1)
    row = run_row(conn, run_id)
    assert (row["queue"], row["priority"], row["max_attempts"]) == ("urgent", 9, 1)


def test_each_enqueue_returns_a_new_increasing_id(app, conn):
    ids = [app.enqueue("t", {"i": i}) for i in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [row["args"]["i"] for row in runs(conn)] == [0, 1, 2, 3, 4]


def test_one_enqueue_after_another_holds_one_pooled_connection(app, conn):
    # Opened without waiting, the pool grew to two at the first call and took turns between
    # them: each statement ran on the backend that had sat idle (benchmarks.enqueue_costs).
    for i in range(20):
        app.enqueue("t", {"i": i})
    assert app.pool.get_stats()["pool_size"] == 1
    assert len(runs(conn)) == 20


# ---- Python, asyncio


def test_one_async_enqueue_after_another_holds_one_pooled_connection(app, conn):
    async def main() -> int:
        try:
            for i in range(20):
                await app.enqueue_async("t", {"i": i})
            return int((await app.async_pool()).get_stats()["pool_size"])
        finally:
            await app.aclose()

    assert asyncio.run(main()) == 1
    assert len(runs(conn)) == 20


def test_enqueue_async_and_task_enqueue_async_insert_runs(app, conn):
    async def main() -> tuple[int, int]:
        try:
            first = await app.enqueue_async("resize", {"path": "x"}, queue="images", priority=2)
            second = await app.tasks["send"].enqueue_async(to="a@b.c")
            return first, second
        finally:
            await app.aclose()

    first, second = asyncio.run(main())
    one, two = run_row(conn, first), run_row(conn, second)
    assert (one["task"], one["args"], one["queue"], one["priority"]) == ("resize", {"path": "x"}, "images", 2)
    assert (two["task"], two["args"], two["queue"], two["priority"]) == ("send", {"to": "a@b.c"}, "mail", -5)


def test_enqueue_async_joins_the_callers_transaction(app, dsn, conn):
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn) as tx:
            run_id = await app.enqueue_async("t", {"n": 1}, conn=tx)
            assert conn.execute("SELECT count(*) FROM pgsched.runs_all").fetchone()[0] == 0
            await tx.rollback()
            return run_id

    asyncio.run(main())
    assert runs(conn) == []


# ---- bulk (COPY)


def test_enqueue_many_returns_ids_in_order_of_the_args(app, conn):
    all_args = [{"i": i, "name": f"n{i}"} for i in range(50)]
    ids = app.enqueue_many("bulk", all_args, queue="batch", priority=-7, max_attempts=2)
    assert len(ids) == 50 and len(set(ids)) == 50
    by_id = {row["id"]: row for row in runs(conn)}
    assert set(by_id) == set(ids)
    for run_id, args in zip(ids, all_args):
        row = by_id[run_id]
        assert (row["task"], row["args"], row["queue"], row["priority"], row["max_attempts"], row["status"]) == (
            "bulk",
            args,
            "batch",
            -7,
            2,
            "queued",
        )


def test_enqueue_many_of_a_registered_task_uses_its_defaults(app, conn):
    ids = app.enqueue_many("send", [{"to": "a"}, {"to": "b", "subject": "s"}])
    rows = [run_row(conn, run_id) for run_id in ids]
    assert [row["args"] for row in rows] == [{"to": "a"}, {"to": "b", "subject": "s"}]
    assert {(row["queue"], row["priority"], row["max_attempts"]) for row in rows} == {("mail", -5, 7)}


def test_enqueue_many_of_nothing_inserts_nothing(app, conn):
    assert app.enqueue_many("bulk", []) == []
    assert runs(conn) == []


def test_enqueue_many_async_returns_ids_in_order(app, conn):
    all_args = [{"i": i} for i in range(30)]

    async def main() -> list[int]:
        try:
            return await app.enqueue_many_async("bulk", all_args, queue="batch", priority=4)
        finally:
            await app.aclose()

    ids = asyncio.run(main())
    assert [run_row(conn, run_id)["args"] for run_id in ids] == all_args
    assert {(row["queue"], row["priority"]) for row in runs(conn)} == {("batch", 4)}


def test_enqueue_many_in_a_rolled_back_transaction_leaves_no_runs(app, dsn, conn):
    with psycopg.connect(dsn) as tx:
        app.enqueue_many("bulk", [{"i": i} for i in range(10)], conn=tx)
        tx.rollback()
    assert runs(conn) == []


def test_enqueue_many_in_the_callers_transaction_appears_only_at_its_commit(app, dsn, conn):
    with psycopg.connect(dsn) as tx:
        ids = app.enqueue_many("bulk", [{"i": i} for i in range(10)], conn=tx)
        assert runs(conn) == [], "visible to others before the caller committed"
        tx.commit()
    assert [row["id"] for row in runs(conn)] == ids


def test_enqueue_many_async_in_a_rolled_back_transaction_leaves_no_runs(app, dsn, conn):
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as tx:
            await app.enqueue_many_async("bulk", [{"i": i} for i in range(10)], conn=tx)
            await tx.rollback()

    asyncio.run(main())
    assert runs(conn) == []


def test_enqueue_many_with_a_delay_gives_every_run_the_same_run_at(app, conn):
    app.enqueue_many("bulk", [{"i": i} for i in range(3)], delay=120)
    rows = runs(conn)
    assert len({row["run_at"] for row in rows}) == 1
    [(ahead,)] = conn.execute("SELECT DISTINCT run_at - now() FROM pgsched.runs_all").fetchall()
    assert timedelta(seconds=100) < ahead <= timedelta(seconds=120)


# ---- the caller's transaction


def test_enqueue_in_a_committed_transaction_creates_the_run_and_wakes_its_queue(app, dsn, conn, listener):
    with psycopg.connect(dsn) as tx:
        tx.execute("CREATE TEMP TABLE orders (id int)")
        run_id = app.enqueue("send", {"to": "a@b.c"}, conn=tx)
        assert runs(conn) == [], "visible to others before the caller committed"
        tx.commit()
    assert run_row(conn, run_id)["task"] == "send"
    assert delivered(listener, dsn) == ["mail"]


def test_rolled_back_enqueue_leaves_no_run_and_wakes_nobody(app, dsn, conn, listener):
    with psycopg.connect(dsn) as tx:
        app.enqueue("send", {"to": "a@b.c"}, conn=tx)
        app.enqueue("t", {}, queue="other", conn=tx)
        tx.rollback()
    assert runs(conn) == []
    assert delivered(listener, dsn) == []


def test_enqueue_inside_a_transaction_block_follows_its_outcome(app, dsn, conn):
    with psycopg.connect(dsn) as tx:
        with pytest.raises(RuntimeError):
            with tx.transaction():
                app.enqueue("t", {"n": 1}, conn=tx)
                raise RuntimeError("the caller's work failed")
        with tx.transaction():
            kept = app.enqueue("t", {"n": 2}, conn=tx)
    assert [(row["id"], row["args"]) for row in runs(conn)] == [(kept, {"n": 2})]


# ---- idempotency


def test_second_enqueue_with_the_same_unique_key_returns_the_same_run(app, conn):
    first = app.enqueue("charge", {"order": 1}, unique_key="order-1")
    second = app.enqueue("charge", {"order": 1, "retry": True}, unique_key="order-1")
    other = app.enqueue("charge", {"order": 2}, unique_key="order-2")
    assert first == second != other
    rows = runs(conn)
    assert [(row["id"], row["args"], row["unique_key"]) for row in rows] == [
        (first, {"order": 1}, "order-1"),
        (other, {"order": 2}, "order-2"),
    ]


def test_unique_key_holds_across_sync_async_and_task_enqueue(app, conn):
    first = app.tasks["send"].enqueue(to="a", unique_key="welcome-a")

    async def main() -> tuple[int, int]:
        try:
            return (
                await app.enqueue_async("send", {"to": "a"}, unique_key="welcome-a"),
                await app.tasks["send"].enqueue_async(to="a", unique_key="welcome-a"),
            )
        finally:
            await app.aclose()

    assert asyncio.run(main()) == (first, first)
    assert len(runs(conn)) == 1


def test_enqueue_unique_says_whether_it_created_the_run_sync_and_async(app, conn):
    assert app.enqueue_unique("charge", {"order": 1}, unique_key="order-1")[1] is True

    async def main() -> list[tuple[int, bool]]:
        try:
            return [
                await app.enqueue_unique_async("charge", {"order": 1}, unique_key="order-1"),
                await app.enqueue_unique_async("charge", {"order": 2}, unique_key="order-2"),
            ]
        finally:
            await app.aclose()

    (again, again_created), (other, other_created) = asyncio.run(main())
    assert (again_created, other_created) == (False, True)
    assert [row["id"] for row in runs(conn)] == [again, other]


def test_unique_key_taken_in_the_callers_own_transaction_returns_that_run(app, dsn, conn):
    with psycopg.connect(dsn) as tx:
        first = app.enqueue("t", {}, unique_key="k", conn=tx)
        assert app.enqueue("t", {}, unique_key="k", conn=tx) == first
        tx.commit()
    assert [row["id"] for row in runs(conn)] == [first]


def test_sql_enqueue_with_a_taken_unique_key_returns_the_existing_run(app, conn):
    first = app.enqueue("t", {"a": 1}, unique_key="same")
    again = conn.execute("SELECT pgsched.enqueue('t', '{\"a\": 2}', unique_key => 'same')").fetchone()[0]
    assert again == first
    assert [row["args"] for row in runs(conn)] == [{"a": 1}]


# ---- timing


def test_delay_puts_run_at_that_many_seconds_after_the_enqueue(app, conn):
    run_id = app.enqueue("t", {}, delay=90)
    row = run_row(conn, run_id)
    # run_at and created_at both come from the inserting transaction's now().
    assert row["run_at"] - row["created_at"] == timedelta(seconds=90)


def test_fractional_delay_is_kept(app, conn):
    run_id = app.enqueue("t", {}, delay=1.25)
    row = run_row(conn, run_id)
    assert row["run_at"] - row["created_at"] == timedelta(seconds=1.25)


def test_without_delay_or_run_at_the_run_is_due_at_enqueue_time(app, conn):
    run_id = app.enqueue("t", {})
    row = run_row(conn, run_id)
    assert row["run_at"] == row["created_at"]


def test_run_at_is_stored_as_given_in_any_timezone(app, conn):
    at = datetime(2031, 5, 4, 12, 30, 15, 250000, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    run_id = app.enqueue("t", {}, run_at=at)
    assert run_row(conn, run_id)["run_at"] == at


def test_run_at_in_the_past_is_kept_and_due(app, conn):
    at = datetime(2020, 1, 1, tzinfo=timezone.utc)
    run_id = app.enqueue("t", {}, run_at=at)
    assert run_row(conn, run_id)["run_at"] == at
    assert conn.execute("SELECT due FROM pgsched.queue_stats WHERE queue = 'default'").fetchone()[0] == 1


def test_async_enqueue_honours_delay_and_run_at(app, conn):
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)

    async def main() -> tuple[int, int]:
        try:
            return (await app.enqueue_async("t", {}, delay=30), await app.enqueue_async("t", {}, run_at=at))
        finally:
            await app.aclose()

    delayed, scheduled = asyncio.run(main())
    row = run_row(conn, delayed)
    assert row["run_at"] - row["created_at"] == timedelta(seconds=30)
    assert run_row(conn, scheduled)["run_at"] == at


def test_enqueue_many_with_run_at_gives_every_run_that_time(app, conn):
    at = datetime(2032, 2, 29, 23, 59, tzinfo=timezone.utc)
    ids = app.enqueue_many("bulk", [{"i": 1}, {"i": 2}], run_at=at)
    assert [run_row(conn, run_id)["run_at"] for run_id in ids] == [at, at]


# ---- SQL


def test_sql_enqueue_with_every_named_argument_returns_the_new_run_id(conn):
    at = datetime(2030, 6, 1, 8, 0, tzinfo=timezone.utc)
    run_id = conn.execute(
        "SELECT pgsched.enqueue(task => %s, args => %s, queue => %s, priority => %s, run_at => %s,"
        " max_attempts => %s, unique_key => %s)",
        ("invoice", Jsonb({"customer": 42}), "billing", -10, at, 9, "invoice-42"),
    ).fetchone()[0]
    assert isinstance(run_id, int)
    row = run_row(conn, run_id)
    assert fields(
        row, "task", "args", "queue", "priority", "run_at", "max_attempts", "unique_key", "status", "attempt"
    ) == ("invoice", {"customer": 42}, "billing", -10, at, 9, "invoice-42", "queued", 0)


def test_sql_enqueue_with_only_a_task_uses_the_defaults(conn):
    run_id = conn.execute("SELECT pgsched.enqueue('cleanup')").fetchone()[0]
    row = run_row(conn, run_id)
    assert (row["args"], row["queue"], row["priority"], row["max_attempts"], row["unique_key"]) == (
        {},
        "default",
        0,
        3,
        None,
    )
    assert row["run_at"] == row["created_at"]


def test_sql_enqueue_wakes_the_queue_and_a_rollback_does_not(dsn, conn, listener):
    conn.execute("SELECT pgsched.enqueue('t', queue => 'sqlq')")
    assert delivered(listener, dsn) == ["sqlq"]
    with psycopg.connect(dsn) as tx:
        tx.execute("SELECT pgsched.enqueue('t', queue => 'sqlq')")
        tx.rollback()
    assert delivered(listener, dsn) == []
    assert len(runs(conn)) == 1


def test_plain_insert_gets_every_default(conn):
    run_id = conn.execute(
        "INSERT INTO pgsched.runs (task, args) VALUES ('report', '{\"day\": 1}') RETURNING id"
    ).fetchone()[0]
    row = run_row(conn, run_id)
    assert fields(row, "task", "args", "queue", "priority") == ("report", {"day": 1}, "default", 0)
    assert fields(row, "status", "attempt", "max_attempts", "errors", "result") == ("queued", 0, 3, [], None)
    assert fields(row, "unique_key", "worker_id") == (None, None)
    assert row["run_at"] == row["created_at"]


def test_plain_insert_with_only_a_task_gets_empty_args(conn):
    run_id = conn.execute("INSERT INTO pgsched.runs (task) VALUES ('report') RETURNING id").fetchone()[0]
    assert run_row(conn, run_id)["args"] == {}


# ---- NOTIFY: one per queue per statement


def test_app_enqueue_notifies_the_runs_queue(app, dsn, listener):
    app.enqueue("t", {}, queue="q1")
    app.tasks["send"].enqueue(to="x")
    assert delivered(listener, dsn) == ["q1", "mail"]


def test_multi_row_insert_into_two_queues_notifies_each_queue_once(dsn, conn, listener):
    conn.execute(
        "INSERT INTO pgsched.runs (task, queue) VALUES"
        " ('t', 'alpha'), ('t', 'beta'), ('t', 'alpha'), ('t', 'beta'), ('t', 'alpha')"
    )
    assert sorted(delivered(listener, dsn)) == ["alpha", "beta"]
    conn.execute("DELETE FROM pgsched.workers")


def test_copy_of_a_thousand_runs_notifies_once(app, dsn, conn, listener):
    ids = app.enqueue_many("bulk", [{"i": i} for i in range(1000)], queue="bulkq")
    assert len(ids) == 1000
    assert conn.execute("SELECT count(*) FROM pgsched.runs_all").fetchone()[0] == 1000
    assert delivered(listener, dsn) == ["bulkq"]


def test_insert_select_of_many_rows_notifies_once(dsn, conn, listener):
    conn.execute(
        "INSERT INTO pgsched.runs (task, args) SELECT 't', jsonb_build_object('i', i) FROM generate_series(1, 500) AS i"
    )
    assert delivered(listener, dsn) == ["default"]


def test_each_statement_notifies_separately(dsn, conn, listener):
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'alpha')")
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'alpha')")
    assert delivered(listener, dsn) == ["alpha", "alpha"]


def test_the_wake_up_trigger_fires_once_per_statement_not_per_row(conn):
    # PostgreSQL folds identical notifications within one transaction, so the deliveries above
    # cannot tell a per-row trigger from a per-statement one; the catalog can.
    [(for_each_row,)] = conn.execute(
        "SELECT (tgtype & 1) = 1 FROM pg_trigger WHERE tgname = 'runs_inserted'"
    ).fetchall()
    assert for_each_row is False


# ---- NOTIFY only while a worker waits on the queue (0027)


def test_an_insert_into_a_queue_nobody_waits_on_sends_no_notify(dsn, conn, listener):
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'unwatched'), ('t', 'alpha')")
    assert delivered(listener, dsn) == ["alpha"]  # LISTENing on the channel is not waiting


def test_a_session_that_says_it_waits_hears_its_queue_until_it_withdraws(dsn, conn, listener):
    listener.execute(queries["worker_advertise_waiting"], {"queues": ["later"]})
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'later')")
    assert delivered(listener, dsn) == ["later"]
    listener.execute(queries["worker_withdraw_waiting"])
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'later'), ('t', 'alpha')")
    assert delivered(listener, dsn) == []


def test_while_a_worker_of_an_older_release_is_registered_every_queue_is_notified(dsn, conn, listener):
    # As the previous release registers: no advertises_waits, so it never says it waits.
    conn.execute("INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('old', 1, '{x}', 1)")
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'unwatched')")
    assert delivered(listener, dsn) == ["unwatched"]
    conn.execute("DELETE FROM pgsched.workers")
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'unwatched')")
    assert delivered(listener, dsn) == []


def test_with_a_worker_of_an_older_release_a_statement_into_two_queues_notifies_both(dsn, conn, listener):
    conn.execute("INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('old', 1, '{x}', 1)")
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'beta'), ('t', 'alpha'), ('t', 'beta')")
    assert sorted(delivered(listener, dsn)) == ["alpha", "beta"]


def test_many_inserts_into_one_queue_in_one_transaction_notify_once(dsn, conn, listener):
    with conn.transaction():
        for _ in range(5):
            conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'alpha')")
        conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'beta')")
    assert delivered(listener, dsn) == ["alpha", "beta"]


def test_a_worker_about_to_sleep_waits_for_an_insert_in_flight_that_found_no_waiter(dsn, conn):
    await_enqueuers = queries["worker_await_enqueuers"]
    params = {"queues": ["inflight"], "timeout": "50ms"}
    with psycopg.connect(dsn) as inserting, psycopg.connect(dsn, autocommit=True) as fetching:
        inserting.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'inflight')")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            fetching.execute(await_enqueuers, params)
        inserting.commit()
        fetching.execute(await_enqueuers, params)  # nothing in flight: returns at once
        # The lock_timeout was the statement's own.
        assert fetching.execute("SHOW lock_timeout").fetchone()[0] == "0"


# ---- CLI


def test_cli_enqueue_prints_the_new_run_id_and_inserts_the_run(dsn, conn, listener):
    env = {**os.environ, "PGSCHED_DSN": dsn}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgsched.cli.main",
            "enqueue",
            "send",
            "--args",
            '{"to": "a@b.c"}',
            "--queue",
            "mail",
            "--priority",
            "-3",
            "--delay",
            "45",
            "--max-attempts",
            "2",
            "--unique-key",
            "cli-1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    run_id = int(result.stdout.strip())
    row = run_row(conn, run_id)
    assert (row["task"], row["args"], row["queue"], row["priority"], row["max_attempts"], row["unique_key"]) == (
        "send",
        {"to": "a@b.c"},
        "mail",
        -3,
        2,
        "cli-1",
    )
    assert row["run_at"] - row["created_at"] == timedelta(seconds=45)
    assert delivered(listener, dsn) == ["mail"]
    again = subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", "enqueue", "send", "--unique-key", "cli-1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (again.returncode, again.stdout.strip()) == (0, str(run_id))
    assert len(runs(conn)) == 1

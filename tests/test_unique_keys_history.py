"""Runs with a unique_key move to the history too (schemas 0037, 0049; issue 13 part 1): one run
per key over runs and runs_history, held in pgsched.run_unique_keys, so a key repeated after its
run finished and moved, within retention, returns that run at every entry point; racing
enqueues of one key make one run; the key goes with its run's retention."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, Callable

import psycopg
import pytest

from pgsched.app import App
from pgsched.maintenance import HistoryMover, maintain_history, prune_finished
from pgsched.runs import retry_run
from tests.support.api import Api
from tests.support.cli import run_cli
from tests.support.db import insert_restored, scalar
from tests.support.history import ended_before_0030, move_round, move_steps, where
from tests.support.inprocess import finish


def keyed(conn: psycopg.Connection[Any], key: str) -> list[tuple[int, str]]:
    """Every run that holds ``key``, wherever it is (id, table), and the key row's run."""
    rows = conn.execute(
        "SELECT id, 'runs' FROM pgsched.runs WHERE unique_key = %(k)s"
        " UNION ALL SELECT id, 'history' FROM pgsched.runs_history WHERE unique_key = %(k)s"
        " UNION ALL SELECT run_id, 'key' FROM pgsched.run_unique_keys WHERE unique_key = %(k)s ORDER BY 2",
        {"k": key},
    )
    return [(int(row[0]), str(row[1])) for row in rows]


def ended_with_key(app: App, dsn: str, conn: psycopg.Connection[Any], key: str) -> int:
    """A run with ``key``, run to success by a worker: it is in the history, its key held."""

    @app.task(name="inc")
    def inc(n: int) -> int:
        return n + 1

    run_id = app.enqueue("inc", {"n": 1}, unique_key=key)
    assert finish(app, dsn, run_id)[0]["status"] == "succeeded"
    assert keyed(conn, key) == [(run_id, "history"), (run_id, "key")]
    return run_id


def test_a_key_repeated_after_its_run_moved_returns_that_run_at_every_entry_point(
    app: App, dsn: str, conn: psycopg.Connection[Any], api: Api
) -> None:
    run_id = ended_with_key(app, dsn, conn, "order-1")
    assert app.enqueue("inc", {"n": 2}, unique_key="order-1") == run_id
    assert app.enqueue_unique("inc", {"n": 2}, unique_key="order-1") == (run_id, False)
    assert app.tasks["inc"].enqueue(n=2, unique_key="order-1") == run_id

    async def asynchronous() -> list[Any]:
        return [
            await app.enqueue_async("inc", {"n": 2}, unique_key="order-1"),
            await app.enqueue_unique_async("inc", {"n": 2}, unique_key="order-1"),
        ]

    assert asyncio.run(asynchronous()) == [run_id, (run_id, False)]
    for call in (
        "SELECT pgsched.enqueue('inc', unique_key => 'order-1')",
        "SELECT pgsched.enqueue_v2('inc', unique_key => 'order-1')",
        "SELECT pgsched.enqueue_v3('inc', unique_key => 'order-1')",
        f"SELECT pgsched.enqueue_v3('inc', unique_key => 'order-1', depends_on => ARRAY[{run_id}]::bigint[])",
    ):
        assert scalar(conn, call) == run_id, call
    again = api.post("/runs", json={"task": "inc"}, headers={"Idempotency-Key": "order-1"})
    assert (again.status_code, again.json()["id"], again.json()["status"]) == (200, run_id, "succeeded")
    cli = run_cli(dsn, "enqueue", "inc", "--unique-key", "order-1")
    assert (cli.returncode, cli.stdout.strip()) == (0, str(run_id)), cli.stderr
    # Another service's plain INSERT is refused as runs' own unique index refuses it.
    with pytest.raises(psycopg.errors.UniqueViolation, match="run_unique_keys_pkey") as refused:
        conn.execute("INSERT INTO pgsched.runs (task, unique_key) VALUES ('inc', 'order-1')")
    assert f"belongs to run {run_id}" in str(refused.value.diag.message_detail)
    assert keyed(conn, "order-1") == [(run_id, "history"), (run_id, "key")]
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs") == 0


def test_a_key_taken_in_the_callers_transaction_and_a_new_key_make_one_run_each(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn) as tx:
        first = app.enqueue("t", {}, unique_key="k", conn=tx)
        assert app.enqueue_unique("t", {}, unique_key="k", conn=tx) == (first, False)
        assert scalar(tx, "SELECT pgsched.enqueue('t', unique_key => 'k')") == first
        tx.rollback()
    assert keyed(conn, "k") == []  # rolled back: the key went with the run
    second = app.enqueue("t", {}, unique_key="k")
    assert keyed(conn, "k") == [(second, "key"), (second, "runs")]


def racing(threads: int, enqueue: Callable[[psycopg.Connection[Any], int], int], dsn: str) -> list[int]:
    """``enqueue(conn, i)`` from ``threads`` threads with a connection each, released together;
    a thread's error is raised here."""
    start = threading.Barrier(threads)

    def one(i: int) -> int:
        with psycopg.connect(dsn, autocommit=True) as own:
            own.execute("SELECT 1")
            start.wait(timeout=30)
            return enqueue(own, i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(threads), timeout=60))


@pytest.mark.parametrize("held", ["new key", "key of a moved run"])
def test_racing_enqueues_of_one_key_from_many_connections_make_exactly_one_run(
    app: App, dsn: str, conn: psycopg.Connection[Any], held: str
) -> None:
    before = ended_with_key(app, dsn, conn, "race-0") if held != "new key" else None

    def enqueue(own: psycopg.Connection[Any], i: int) -> int:
        if i % 2:
            return scalar(own, "SELECT pgsched.enqueue_v2('inc', unique_key => %s)", [key])
        return app.enqueue("inc", {"n": i}, unique_key=key, conn=own)

    for round_ in range(5):
        key = "race-0" if before is not None else f"race-{round_}"
        got = racing(8, enqueue, dsn)
        holders = [run_id for run_id, _ in keyed(conn, key)]
        assert len(set(holders)) == 1 and set(got) == set(holders), (got, keyed(conn, key))
        if before is not None:
            assert got == [before] * 8


def test_keys_go_with_their_runs_retention_and_a_dangling_key_is_free(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    moved = ended_with_key(app, dsn, conn, "old")
    kept = app.enqueue("inc", {"n": 1}, unique_key="queued")
    now = datetime.now(UTC)

    async def retention(days: float) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            await prune_finished(own, retention_s=days * 86400, now=now + timedelta(days=10))
            await maintain_history(own, retention_s=days * 86400, now=now + timedelta(days=10))

    asyncio.run(retention(1))  # the day partition of "old" is dropped with its key
    assert keyed(conn, "old") == [] and where(conn, moved) == []
    assert keyed(conn, "queued") == [(kept, "key"), (kept, "runs")]
    renewed = app.enqueue("inc", {"n": 1}, unique_key="old")
    assert renewed != moved and keyed(conn, "old") == [(renewed, "key"), (renewed, "runs")]
    # A run deleted without its key (by hand, or by the previous release's prune) frees it.
    conn.execute("DELETE FROM pgsched.runs WHERE id = %s", [renewed])
    third = scalar(conn, "SELECT pgsched.enqueue('inc', unique_key => 'old')")
    assert third not in (moved, renewed) and keyed(conn, "old") == [(third, "key"), (third, "runs")]
    conn.execute("DELETE FROM pgsched.runs WHERE id = %s", [third])
    conn.execute("INSERT INTO pgsched.runs (task, unique_key) VALUES ('inc', 'old')")
    assert [table for _, table in keyed(conn, "old")] == ["key", "runs"]


def test_a_pruned_run_in_runs_takes_its_key_along(app: App, dsn: str, conn: psycopg.Connection[Any]) -> None:
    parent = scalar(conn, "SELECT pgsched.enqueue('a')")
    step = scalar(
        conn, "SELECT pgsched.enqueue_v3('inc', unique_key => 'step', depends_on => ARRAY[%s]::bigint[])", [parent]
    )
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() - interval '2 days'")
    conn.execute("UPDATE pgsched.workflows SET status = 'cancelled', finished_at = now() - interval '2 days'")
    assert where(conn, step) == ["runs"]  # a workflow step stays in runs

    async def prune() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await prune_finished(own, retention_s=86400)

    assert asyncio.run(prune()) == 2
    assert keyed(conn, "step") == []


def test_a_failed_run_with_a_key_retried_from_the_history_keeps_its_key(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task(max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    run_id = boom.enqueue(unique_key="retry-me")
    assert finish(app, dsn, run_id)[0]["status"] == "failed"
    assert keyed(conn, "retry-me") == [(run_id, "history"), (run_id, "key")]
    retry_run(conn, run_id)
    assert keyed(conn, "retry-me") == [(run_id, "key"), (run_id, "runs")]
    assert boom.enqueue(unique_key="retry-me") == run_id


def test_runs_with_keys_from_before_0037_move_with_their_keys_registered(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # Written with triggers off: no key row, as a run inserted before schema 0037.
    old = ended_before_0030(conn, 3, unique_key="'pre-' || generate_series")
    assert scalar(conn, "SELECT count(*) FROM pgsched.run_unique_keys") == 0
    # Still in runs: runs' unique index and run_unique_key_holder find them.
    assert app.enqueue("t", {}, unique_key=f"pre-{1}") in old
    insert_restored(conn, "INSERT INTO pgsched.runs (task, unique_key) VALUES ('t', 'pre-queued') RETURNING id")
    queued = scalar(conn, "SELECT id FROM pgsched.runs WHERE unique_key = 'pre-queued'")
    mover = HistoryMover()
    assert move_round(dsn, mover) == 3 and mover.done and mover.version == 2
    for i, run_id in enumerate(old, start=1):
        assert keyed(conn, f"pre-{i}") == [(run_id, "history"), (run_id, "key")]
        assert app.enqueue("t", {}, unique_key=f"pre-{i}") == run_id
    # A run from before 0037 that ends now registers its key as it moves.
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE id = %s", [queued])
    assert keyed(conn, "pre-queued") == [(queued, "history"), (queued, "key")]
    assert scalar(conn, "SELECT pgsched.enqueue('t', unique_key => 'pre-queued')") == queued


def test_one_statement_that_ends_keyed_and_unkeyed_runs_moves_them_in_one_batch_with_their_keys(
    conn: psycopg.Connection[Any],
) -> None:
    # 0049 folds keyed runs into runs_to_history's batch (v3): no row trigger of their own.
    assert (
        scalar(conn, "SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgname = 'runs_to_history'")
        == "pgsched.runs_to_history_v3"
    )
    assert scalar(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'runs_to_history_keyed'") == 0
    plain = [scalar(conn, "SELECT pgsched.enqueue('t')") for _ in range(2)]
    keys = [scalar(conn, "SELECT pgsched.enqueue('t', unique_key => %s)", [f"b-{i}"]) for i in range(2)]
    # One from before 0037: no key row until it moves.
    insert_restored(conn, "INSERT INTO pgsched.runs (task, unique_key) VALUES ('t', 'b-old') RETURNING id")
    old = scalar(conn, "SELECT id FROM pgsched.runs WHERE unique_key = 'b-old'")
    assert keyed(conn, "b-old") == [(old, "runs")]
    stays = scalar(conn, "SELECT pgsched.enqueue('t')")
    ended = [*plain, *keys, old]
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE id = ANY(%s)", [ended])
    assert [where(conn, run_id) for run_id in (*ended, stays)] == [["history"]] * 5 + [["runs"]]
    for key, run_id in (("b-0", keys[0]), ("b-1", keys[1]), ("b-old", old)):
        assert keyed(conn, key) == [(run_id, "history"), (run_id, "key")]
        assert scalar(conn, "SELECT pgsched.enqueue('t', unique_key => %s)", [key]) == run_id


def test_keyed_steps_of_a_workflow_that_succeeded_move_and_keep_their_keys(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task(name="inc")
    def inc(n: int = 0) -> int:
        return n + 1

    parent = scalar(conn, "SELECT pgsched.enqueue('inc')")
    step = scalar(
        conn, "SELECT pgsched.enqueue_v3('inc', unique_key => 'step', depends_on => ARRAY[%s]::bigint[])", [parent]
    )
    assert [row["status"] for row in finish(app, dsn, parent, step)] == ["succeeded"] * 2
    assert where(conn, step) == ["runs"]  # a step waits for the leader (0047)

    assert move_steps(dsn) >= 1  # 0047's move left keyed steps in runs; 0049's v2 takes them
    assert keyed(conn, "step") == [(step, "history"), (step, "key")]
    assert app.enqueue("inc", {}, unique_key="step") == step
    assert scalar(conn, "SELECT pgsched.enqueue('inc', unique_key => 'step')") == step


def test_the_keyed_move_functions_refuse_bad_input_and_move_nothing(conn: psycopg.Connection[Any]) -> None:
    ended_before_0030(conn, 1, unique_key="'bad-input'")
    for after_id, batch in ((None, 10), (0, 0), (0, None)):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch at least 1"):
            conn.execute("SELECT * FROM pgsched.history_move_finished_v2(%s, %s)", [after_id, batch])
    for batch in (0, -1, None):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch must be at least 1"):
            conn.execute("SELECT pgsched.history_move_workflow_steps_v2(%s)", [batch])
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_history") == 0
    assert scalar(conn, "SELECT count(*) FROM pgsched.run_unique_keys") == 0

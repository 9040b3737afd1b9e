"""The move (schema 0030, post-deploy; issue 13 part 1): a run that ends for good leaves
pgsched.runs for pgsched.runs_history in the statement that ended it, and the beat leader moves
the runs that had ended before, a batch at a time, while workers go on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgsched import chain
from pgsched.app import App
from pgsched.maintenance import HistoryMover, maintain_history
from pgsched.sql import queries
from tests.support.db import scalar
from tests.support.history import drop_day_partitions, ended_before_0030, move_round, move_steps, where
from tests.support.inprocess import RunningWorker, finish
from tests.support.waiting import wait_until_async


def test_runs_that_end_for_good_move_and_a_retry_to_come_stays(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    @app.task(max_attempts=2, retry_backoff=3600)
    def flaky() -> None:
        raise ValueError("not yet")

    done, failed, again = add.enqueue(a=2, b=3), boom.enqueue(), flaky.enqueue()
    cancelled = add.enqueue(a=1, b=1, delay=3600)
    finish(app, dsn, done, failed)

    async def first_attempt_failed() -> None:
        async with RunningWorker(app, dsn) as w:
            await w.until(again, lambda r: r["attempt"] == 1 and r["status"] == "queued", "its retry queued")

    asyncio.run(first_attempt_failed())
    conn.execute("SELECT pgsched.cancel(%s)", [cancelled])
    assert where(conn, done) == where(conn, failed) == where(conn, cancelled) == ["history"]
    assert where(conn, again) == ["runs"]  # failed, one attempt left: queued again, not final
    assert app.run(done).get(timeout=5) == 5
    assert app.run(cancelled).status == "cancelled"
    statuses = conn.execute("SELECT id, status::text FROM pgsched.runs_history ORDER BY id").fetchall()
    assert statuses == [(done, "succeeded"), (failed, "failed"), (cancelled, "cancelled")]


def test_an_end_written_by_plain_sql_moves_too(conn: psycopg.Connection[Any]) -> None:
    ended = scalar(conn, "SELECT pgsched.enqueue('t')")
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE id = %s", [ended])
    assert where(conn, ended) == ["history"]


def test_a_fenced_out_completion_neither_changes_nor_moves_anything(conn: psycopg.Connection[Any]) -> None:
    run_id = scalar(conn, "SELECT pgsched.enqueue('t')")
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE id = %s", [run_id])
    late = conn.execute(
        queries["run_complete_many"],
        {
            "ids": [run_id],
            "attempts": [0],
            "statuses": ["succeeded"],
            "results": ["1"],
            "errors": [None],
            "retry_delays_s": [0.0],
            "worker_id": 1,
        },
    )
    assert late.fetchall() == []
    assert conn.execute("SELECT status::text, result FROM pgsched.runs_all WHERE id = %s", [run_id]).fetchall() == [
        ("cancelled", None)
    ]


def test_workflow_steps_stay_and_unique_key_runs_move_and_a_repeated_key_returns_the_ended_run(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task
    def inc(n: int) -> int:
        return n + 1

    keyed = inc.enqueue(n=1, unique_key="once")
    steps = chain(inc.s(n=1), inc.s()).enqueue().run_ids
    assert [row["status"] for row in finish(app, dsn, keyed, *steps)] == ["succeeded"] * 3
    # Runs with a key move since 0049 (tests/test_unique_keys_history.py); steps stay.
    assert [where(conn, run_id) for run_id in (keyed, *steps)] == [["history"]] + [["runs"]] * 2
    assert inc.enqueue(n=1, unique_key="once") == keyed
    assert scalar(conn, "SELECT pgsched.enqueue('inc', unique_key => 'once')") == keyed
    assert app.run(keyed).get(timeout=5) == 2


def test_the_steps_of_a_workflow_that_succeeded_move_and_those_of_one_that_failed_stay(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task
    def inc(n: int) -> int:
        return n + 1

    @app.task(max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    succeeded = chain(inc.s(n=1), inc.s(), inc.s()).enqueue()
    failed = chain(inc.s(n=1), boom.si()).enqueue()
    running = chain(inc.s(n=1), inc.s().set(queue="no-worker-here")).enqueue()
    finish(app, dsn, *succeeded.run_ids, *failed.run_ids, *running.run_ids[:1])
    steps = [*succeeded.run_ids, *failed.run_ids, running.run_ids[0]]
    assert [where(conn, run_id) for run_id in steps] == [["runs"]] * 6  # each waits for the leader

    # Two batches of two: the succeeded workflow's three steps, and only those.
    assert move_steps(dsn, batch=2) == 3
    assert [where(conn, run_id) for run_id in succeeded.run_ids] == [["history"]] * 3
    assert [where(conn, run_id) for run_id in (*failed.run_ids, running.run_ids[0])] == [["runs"]] * 3
    assert move_steps(dsn, batch=2) == 0
    # What readers show is unchanged: the workflow's steps, their results as parents' results.
    steps_shown = conn.execute(queries["workflow_steps"], {"id": succeeded.id, "limit": 10}).fetchall()
    assert [(row[0], row[2]) for row in steps_shown] == [(run_id, "succeeded") for run_id in succeeded.run_ids]
    assert app.run(succeeded.run_ids[-1]).get(timeout=5) == 4
    results = conn.execute(queries["run_parent_results"], {"id": succeeded.run_ids[-1]}).fetchall()
    assert results == [(3,)]


def test_a_fire_time_whose_run_ended_and_moved_is_not_fired_again(conn: psycopg.Connection[Any]) -> None:
    at = datetime(2026, 1, 5, 10, tzinfo=UTC)
    job = scalar(
        conn, "INSERT INTO pgsched.jobs (name, task, every_s, next_run_at) VALUES ('j', 't', 60, %s) RETURNING id", [at]
    )

    def fire_at() -> tuple[bool, int]:
        params = {
            "id": job,
            "next_run_at": at + timedelta(minutes=1),
            "last_scheduled_for": at,
            "seen_next_run_at": at,
            "times": [at],
        }
        row = conn.execute(queries["job_fire"], params).fetchone()
        assert row is not None
        return bool(row[0]), int(row[1])

    assert fire_at() == (True, 1)
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
        " WHERE job_id = %s",
        [job],
    )
    # A beat that read the job before the first firing (its compare-and-set passes: the row is
    # put back as it saw it) finds the fire time in the history.
    conn.execute("UPDATE pgsched.jobs SET next_run_at = %s WHERE id = %s", [at, job])
    assert fire_at() == (True, 0)
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE job_id = %s", [job]) == 1


def test_the_leader_moves_runs_that_ended_before_0030_a_batch_at_a_time_and_resumes(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    old = ended_before_0030(conn, 5)
    stays = ended_before_0030(conn, 1, unique_key="'kept'") + ended_before_0030(conn, 1, workflow_id="1")
    queued = scalar(conn, "SELECT pgsched.enqueue('t')")
    mover = HistoryMover()
    assert move_round(dsn, mover, batch=2, batches=2) == 4 and not mover.done
    assert [where(conn, run_id) for run_id in old] == [["history"]] * 4 + [["runs"]]
    # With 0049 the run with a key moves too (its key registered): the workflow step stays.
    assert move_round(dsn, mover, batch=2, batches=2) == 2 and mover.done
    assert move_round(dsn, mover, batch=2, batches=2) == 0
    assert [where(conn, run_id) for run_id in (*old, *stays, queued)] == [["history"]] * 6 + [["runs"]] * 2


def test_both_moves_act_on_the_version_their_maintenance_round_read(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # The leader reads history_mover_ready once a round and hands the answer to both moves
    # (beat.py _maintain): each moves what that answer allows, whatever the database says since.
    @app.task
    def inc(n: int) -> int:
        return n + 1

    plain = ended_before_0030(conn, 2)
    keyed = ended_before_0030(conn, 1, unique_key="'kept'")
    workflow = chain(inc.s(n=1), inc.s()).enqueue()
    finish(app, dsn, *workflow.run_ids)

    mover = HistoryMover()
    # 0: as before 0030's post-deploy file, nothing moves (this database has 0049).
    assert (move_round(dsn, mover, version=0), move_steps(dsn, version=0)) == (0, 0)
    assert [where(conn, run_id) for run_id in (*plain, *keyed, *workflow.run_ids)] == [["runs"]] * 5
    # 1: the runs without a key, and the pass is over for that version.
    assert move_round(dsn, mover, version=1) == 2 and mover.done
    assert move_steps(dsn, version=1) == 2
    assert [where(conn, run_id) for run_id in (*plain, *keyed)] == [["history"]] * 2 + [["runs"]]
    # 2: a new pass, which moves the keyed run.
    assert move_round(dsn, mover, version=2) == 1 and mover.version == 2
    assert where(conn, keyed[0]) == ["history"]


def test_the_move_function_refuses_bad_input_and_moves_nothing(dsn: str, conn: psycopg.Connection[Any]) -> None:
    ended_before_0030(conn, 1)
    for after_id, batch in ((None, 10), (0, 0), (0, None)):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="batch at least 1"):
            conn.execute("SELECT * FROM pgsched.history_move_finished(%s, %s)", [after_id, batch])
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_history") == 0


@pytest.mark.slow
def test_moving_a_large_history_while_a_worker_drains_loses_and_doubles_nothing(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # 30,000 runs that ended before 0030 (issue 13 asked for 10^6: docs/operations/history.md
    # has that figure) moved 5,000 a statement while a worker runs 500 more to their end.
    old = 30_000
    ended_before_0030(conn, old)
    conn.execute("VACUUM ANALYZE pgsched.runs")

    @app.task
    def noop() -> None:
        return None

    fresh = [noop.delay().id for _ in range(500)]

    async def drain_while_moving() -> int:
        moved = 0
        mover = HistoryMover()
        async with RunningWorker(app, dsn, concurrency=4) as w:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
                await maintain_history(own, retention_s=7 * 86400, days_ahead=0)
                while not mover.done:
                    moved += await mover.round(own, batches=1)

            async def drained() -> bool:
                cursor = await w.db.execute("SELECT count(*) FROM pgsched.runs WHERE status IN ('queued', 'running')")
                return (await cursor.fetchone())["count"] == 0  # type: ignore[index]

            await wait_until_async(drained, 120, "the worker to drain its 500 runs", check=w.still_running)
        return moved

    assert asyncio.run(drain_while_moving()) == old
    total = old + len(fresh)
    counts = conn.execute(
        "SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE status = 'succeeded') FROM pgsched.runs_all"
    ).fetchone()
    assert counts == (total, total, total)
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs") == 0
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_history_default") == 0


def test_a_day_partition_waits_for_a_run_landing_in_default_and_then_takes_it_in(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    drop_day_partitions(conn)  # as an installation whose leader was down for days
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)

    def history_round(**kwargs: Any) -> Any:
        async def main() -> Any:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
                return await maintain_history(own, retention_s=7 * 86400, now=now, days_ahead=0, **kwargs)

        return asyncio.run(main())

    with psycopg.connect(dsn) as mover:  # a run of that day moving into DEFAULT, not committed yet
        mover.execute(
            "INSERT INTO pgsched.runs_history (id, task, finished_at, status, created_at, run_at, args, queue,"
            " priority, attempt, max_attempts, errors)"
            " VALUES (7, 't', '2026-12-07 11:00+00', 'succeeded', now(), now(), '{}', 'default', 0, 1, 1, '[]')"
        )
        assert history_round(lock_timeout="50ms").timed_out == ["runs_history_20261207"]
        mover.commit()
    assert history_round().created == ["runs_history_20261207"]
    assert scalar(conn, "SELECT tableoid::regclass::text FROM pgsched.runs_history WHERE id = 7") == (
        "pgsched.runs_history_20261207"
    )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="day must be a date"):
        conn.execute("SELECT pgsched.history_partition_create_v2(NULL)")


def test_the_history_has_the_columns_of_runs_in_their_order(conn: psycopg.Connection[Any]) -> None:
    """The move copies a row with ``SELECT *`` (0030's trigger and mover): a column added to runs
    alone would fail every completion that moves, so a migration adds it to both."""
    columns = """
        SELECT array_agg(attname || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
        FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped
    """
    assert scalar(conn, columns, ("pgsched.runs_history",)) == scalar(conn, columns, ("pgsched.runs",))


CLAIM_BY_SQL = (
    "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1, started_at = now(),"
    " lease_expires_at = now() + interval '30 s'"
    " WHERE id IN (SELECT id FROM pgsched.runs WHERE status = 'queued' ORDER BY id LIMIT %s)"
)
END_BY_SQL = (
    "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL"
    " WHERE id IN (SELECT id FROM pgsched.runs WHERE status = 'running' ORDER BY id LIMIT %s)"
)


def test_an_update_reads_no_entry_of_the_runs_that_moved_before_it(conn: psycopg.Connection[Any]) -> None:
    """Each run that ended and moved leaves a dead entry in runs_finished_idx until vacuum, and
    the statistics say the index is empty (ended runs leave at once). 0030's trigger was planned
    through that index and walked every such entry on every UPDATE of runs, claims and
    heartbeats too (1.08 ms a call in a drain of 10,000 runs at concurrency 10); 0045's finds
    the rows to move by primary key and reads none of them (0030's read 200 here)."""
    conn.execute("INSERT INTO pgsched.runs (task) SELECT 't' FROM generate_series(1, 2000)")
    conn.execute(CLAIM_BY_SQL, [300])
    conn.execute(END_BY_SQL, [200])
    conn.execute("ANALYZE pgsched.runs")  # as autovacuum sees runs mid-drain: no finished run
    for statement in (CLAIM_BY_SQL, END_BY_SQL):
        with conn.transaction():
            conn.execute(statement, [10])
            read = scalar(conn, "SELECT pg_stat_get_xact_tuples_returned('pgsched.runs_finished_idx'::regclass)")
        assert read == 0
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_history") == 210
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE finished_at IS NOT NULL") == 0

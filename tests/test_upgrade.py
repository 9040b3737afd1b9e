"""Upgrades of a running system: a database at the previous release's schema, a worker draining
a backlog through it, and the migration applied while it works. Nothing fails, nothing stops,
and what the migration fixes works afterwards; what the previous release still uses goes only
with `migrate --post-deploy`.

The draining worker claims with the previous release's statement (tests/support/previous_release.sql):
the current claim reads columns the migrations being applied add, as a worker of the new release,
deployed after the migration, does."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psycopg
import pytest

from pgsched import fetcher, worker
from pgsched.app import App
from pgsched.doctor import diagnose
from pgsched.errors import RunCancelled
from pgsched.instants import READER_ADAPTERS
from pgsched.jobs import JobNameTaken, JobSpec, list_jobs, upsert_job
from pgsched.maintenance import HistoryMover, cancel_expired, maintain_history
from pgsched.migrate import migrate, pending
from pgsched.queues import list_queues
from pgsched.runs import get_run, list_runs
from pgsched.schedule import Schedule
from pgsched.sql import parse_queries, queries
from tests.support.cli import run_cli
from tests.support.db import scalar
from tests.support.inprocess import RunningWorker
from tests.support.waiting import wait_until_async

PREVIOUS_RELEASE = "0008"
BACKLOG = 3000
PREVIOUS_STATEMENTS = parse_queries((Path(__file__).parent / "support" / "previous_release.sql").read_text())


@pytest.fixture
def previous_release_claims(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers started in this test claim and register as the previous release did."""
    previous = MappingProxyType({**queries, **PREVIOUS_STATEMENTS})
    monkeypatch.setattr(fetcher, "queries", previous)
    monkeypatch.setattr(worker, "queries", previous)


def drain_through_the_upgrade(dsn: str, conn: psycopg.Connection) -> list[str]:
    """Queue a backlog, start a worker on it, apply every pending migration while it drains, and
    wait until the whole backlog succeeded: the versions applied."""
    app = App(dsn)

    @app.task()
    async def noop() -> None:
        await asyncio.sleep(0)

    # As the previous release queued them: this release's enqueue writes columns (0015's) that
    # only the migrations applied below add.
    conn.execute("INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, %s)", (BACKLOG,))

    def succeeded() -> int:
        return int(scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE queue = 'default' AND status = 'succeeded'"))

    async def drain() -> list[str]:
        async with RunningWorker(app, dsn, concurrency=20) as w:

            async def started() -> bool:
                w.still_running()
                return succeeded() > 0

            await wait_until_async(started, 20, "the worker to drain its first runs")
            # The migration runs in another thread, on its own connection, while the worker claims.
            applied: list[str] = []

            def upgrade() -> None:
                with psycopg.connect(dsn, autocommit=True) as migrator:
                    applied.extend(m.version for m in migrate(migrator))

            upgrading = threading.Thread(target=upgrade)
            upgrading.start()
            await asyncio.to_thread(upgrading.join, 30)

            async def drained() -> bool:
                w.still_running()
                return succeeded() == BACKLOG

            await wait_until_async(drained, 60, f"all {BACKLOG} runs to succeed")
            return applied

    try:
        return asyncio.run(drain())
    finally:
        app.close()


# Rows the previous release let plain SQL write, none of which 0009 accepts any more.
LEGACY_ROWS = (
    "INSERT INTO pgsched.runs (task, queue, run_at) VALUES ('t', 'legacy', 'infinity'), ('t', 'legacy', '-infinity')",
    "INSERT INTO pgsched.runs (task, queue, created_at) VALUES ('t', 'legacy', '4000-01-01 BC')",
    "INSERT INTO pgsched.runs (task, queue, status) VALUES ('t', 'legacy', 'running'), ('t', 'legacy', 'succeeded')",
    "INSERT INTO pgsched.runs (task, queue, attempt, errors, tenant) VALUES ('t', 'legacy', -5, '{}', 'bad tenant!')",
    "INSERT INTO pgsched.jobs (name, task, at) VALUES ('never', 't', 'infinity')",
    "INSERT INTO pgsched.jobs (name, task, every_s, tz) VALUES ('flood', 't', 1e-300, repeat('x', 300))",
)


def test_a_worker_drains_through_the_upgrade_from_the_previous_release_which_repairs_rows_and_adds_expiry(
    empty_dsn: str, previous_release_claims: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True, context=READER_ADAPTERS) as conn:
        migrate(conn, up_to=PREVIOUS_RELEASE)
        for statement in LEGACY_ROWS:
            conn.execute(statement.encode())
        expected = [m.version for m in pending(conn)]
        assert expected[0] == "0009" and "0013" not in expected and "0030" not in expected  # --post-deploy's
        assert drain_through_the_upgrade(empty_dsn, conn) == expected
        monkeypatch.undo()  # from here on, the new release

        # 0009: every legacy row was repaired and recorded with its original values; the readers read them.
        repaired = conn.execute("SELECT table_name, count(*) FROM pgsched.repaired_rows GROUP BY 1 ORDER BY 1")
        assert repaired.fetchall() == [("jobs", 2), ("runs", 6)]
        assert scalar(conn, "SELECT original->>'run_at' FROM pgsched.repaired_rows WHERE row_id = 1") == "infinity"
        for run in list_runs(conn, queue="legacy", limit=10):
            get_run(conn, run["id"])
        assert next(q for q in list_queues(conn) if q["queue"] == "legacy")["queued"] == 4
        assert [job["enabled"] for job in list_jobs(conn)] == [False, False]
        # doctor: nothing breaks the rules; --fix validates the constraints added NOT VALID.
        assert diagnose(conn).healthy and diagnose(conn).unvalidated
        assert diagnose(conn, fix=True).validated and not diagnose(conn).unvalidated

    # 0011: runs expire, and a waiter is woken when its run finishes.
    app = App(empty_dsn)

    @app.task
    async def square(x: int) -> int:
        return x * x

    expiring = square.apply_async((2,), expires=60)
    asyncio.run(cancel_expired_later(empty_dsn, minutes=2))
    with pytest.raises(RunCancelled) as cancelled:
        expiring.get(timeout=5)
    assert cancelled.value.reason == "expired"

    async def wait_on_a_run() -> int:
        async with RunningWorker(app, empty_dsn):
            result: int = await square.delay(7).wait(timeout=10)
            return result

    assert asyncio.run(wait_on_a_run()) == 49
    app.close()


def test_job_names_are_unique_per_tenant_once_the_post_deploy_migration_ran(empty_dsn: str) -> None:
    every_minute = JobSpec(name="sync", task="t", schedule=Schedule(every_s=60))
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to=PREVIOUS_RELEASE)
        migrate(conn)
        assert [m.version for m in pending(conn, post_deploy=True)] == ["0013", "0030", "0046", "0049"]
        assert upsert_job(conn, every_minute, tenant="acme") is True
        # Until then the previous release's upsert (ON CONFLICT (name)) works, and so names stay
        # unique across tenants.
        conn.execute(
            "INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('old', 't', 60) ON CONFLICT (name) DO NOTHING"
        )
        with pytest.raises(JobNameTaken):
            upsert_job(conn, every_minute, tenant="beta")
        assert [m.version for m in migrate(conn, post_deploy=True)] == ["0013", "0030", "0046", "0049"]
        assert upsert_job(conn, every_minute, tenant="beta") is True
        assert upsert_job(conn, every_minute) is True  # the admin's own, without a tenant
        assert [(job["name"], job["tenant"]) for job in list_jobs(conn) if job["name"] == "sync"] == [
            ("sync", None),
            ("sync", "acme"),
            ("sync", "beta"),
        ]


def test_migrate_says_what_it_repaired_and_what_waits_and_doctor_fixes_the_rest(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to=PREVIOUS_RELEASE)
        for statement in LEGACY_ROWS:
            conn.execute(statement.encode())
    migrated = run_cli(empty_dsn, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    said = " ".join(migrated.stdout.split())  # rich wraps long lines
    assert "migration 0009 repaired 6 runs row(s)" in said and "migration 0009 repaired 2 jobs row(s)" in said
    assert "waiting for `pgsched migrate --post-deploy`" in said and "0013_job_names_per_tenant" in said
    # Healthy (exit 0): nothing breaks the rules; the repairs and the unvalidated constraints are listed.
    doctor = run_cli(empty_dsn, "doctor", "--json")
    assert doctor.returncode == 0, doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["healthy"] and report["waiting_post_deploy"] == [
        "0013_job_names_per_tenant",
        "0030_runs_move_to_history",
        "0046_history_move_by_id",
        "0049_unique_key_runs_move",
    ]
    assert {(r["table_name"], r["rows"]) for r in report["repaired"]} == {("runs", 6), ("jobs", 2)}
    assert len(report["unvalidated"]) >= 10  # 0009's, and later migrations' for new columns
    fixed = run_cli(empty_dsn, "doctor", "--fix")
    assert fixed.returncode == 0 and "validated run_status_must_agree_with_its_times_and_lease" in fixed.stdout
    assert json.loads(run_cli(empty_dsn, "doctor", "--json").stdout)["unvalidated"] == []
    # A pending migration is something to act on: exit 1.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgsched.schema_migrations WHERE version = '0012'")
    assert run_cli(empty_dsn, "doctor").returncode == 1


async def cancel_expired_later(dsn: str, *, minutes: int) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await cancel_expired(conn, now=datetime.now(timezone.utc) + timedelta(minutes=minutes))


def test_the_move_is_switched_on_while_a_worker_drains_and_the_leader_moves_what_had_ended(empty_dsn: str) -> None:
    # The release before the move (0029's runs_history and readers, 0031): its finished runs are
    # in runs. As a rolling upgrade goes: `migrate` applies this release's expand files (0032 and
    # later) before its processes start; a worker of this release drains a backlog while
    # `migrate --post-deploy` (0030) runs; then the leader moves what had ended before.
    ended_before, backlog = 2000, 1500
    app = App(empty_dsn)

    @app.task()
    async def noop() -> None:
        await asyncio.sleep(0)

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to="0029")
        migrate(conn, up_to="0031")
        expand = [m.version for m in pending(conn)]  # this release's own (0032, and later ones)
        assert "0032" in expand and "0030" not in expand
        assert [m.version for m in pending(conn, post_deploy=True) if m.post_deploy] == ["0030", "0046", "0049"]
        with conn.transaction():  # as its workers left them (schema 0009 lets SQL insert only queued runs)
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, result)"
                " SELECT 'noop', 'succeeded', 1, now(), now(), 'null' FROM generate_series(1, %s)",
                (ended_before,),
            )
        conn.execute("INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, %s)", (backlog,))
        assert [m.version for m in migrate(conn)] == expand

        def finished() -> int:
            return int(scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'"))

        async def drain() -> tuple[list[str], int]:
            async with RunningWorker(app, empty_dsn, concurrency=20) as w:

                async def started() -> bool:
                    w.still_running()
                    return finished() > ended_before

                await wait_until_async(started, 20, "the worker to drain its first runs")
                applied: list[str] = []

                def upgrade() -> None:
                    with psycopg.connect(empty_dsn, autocommit=True) as migrator:
                        applied.extend(m.version for m in migrate(migrator, post_deploy=True))

                await asyncio.to_thread(upgrade)
                mover, moved = HistoryMover(), 0
                async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as leader:
                    await maintain_history(leader, retention_s=7 * 86400, days_ahead=0)
                    while not mover.done:
                        moved += await mover.round(leader, batch=500, batches=1)

                async def drained() -> bool:
                    w.still_running()
                    return finished() == ended_before + backlog

                await wait_until_async(drained, 60, f"all {backlog} queued runs to succeed")
                return applied, moved

        applied, moved = asyncio.run(drain())
        app.close()
        assert applied == ["0030", "0046", "0049"]
        # Every run once, all of them succeeded, and none left ended in runs: each either moved
        # by the leader (ended before 0030) or on its own (ended after).
        total = ended_before + backlog
        counts = conn.execute("SELECT count(*), count(DISTINCT id) FROM pgsched.runs_all").fetchone()
        assert counts == (total, total)
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs") == 0
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs_history") == total
        assert moved >= ended_before
        assert get_run(conn, 1)["status"] == "succeeded"


def trigger_function(conn: psycopg.Connection[Any], trigger: str) -> str:
    return str(
        scalar(
            conn,
            "SELECT tgfoid::regproc::text FROM pg_trigger WHERE tgrelid = 'pgsched.runs'::regclass AND tgname = %s",
            (trigger,),
        )
    )


def test_the_move_goes_by_primary_key_whether_0030_came_before_or_after_0045(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to="0036", post_deploy=True)  # an installation that switched the move on
        assert trigger_function(conn, "runs_to_history") == "pgsched.runs_to_history"
        assert "0045" in [m.version for m in migrate(conn)]  # the expand step re-points it at once
        assert trigger_function(conn, "runs_to_history") == "pgsched.runs_to_history_v2"
        # 0046 points it at v2 again, then 0049 (post-deploy, after it) at v3: keyed runs in the batch.
        assert [m.version for m in migrate(conn, post_deploy=True)] == ["0046", "0049"]
        assert trigger_function(conn, "runs_to_history") == "pgsched.runs_to_history_v3"
        # A statement that ends runs of every kind moves exactly those that end for good.
        ids = [
            row[0]
            for row in conn.execute(
                "INSERT INTO pgsched.runs (task) SELECT 't' FROM generate_series(1, 4) RETURNING id"
            )
        ]
        conn.execute(
            "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
            " lease_expires_at = now() + interval '1 minute' WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute(
            "UPDATE pgsched.runs SET status = (CASE WHEN id = %s THEN 'queued' ELSE 'succeeded' END)"
            "::pgsched.run_status, finished_at = CASE WHEN id = %s THEN NULL ELSE now() END, lease_expires_at = NULL"
            " WHERE id = ANY(%s)",
            (ids[0], ids[0], ids),
        )
        assert scalar(conn, "SELECT array_agg(id ORDER BY id) FROM pgsched.runs") == [ids[0]]
        assert scalar(conn, "SELECT array_agg(id ORDER BY id) FROM pgsched.runs_history") == ids[1:]


def test_runs_with_keys_start_moving_while_a_worker_drains_and_enqueues_repeat_their_keys(empty_dsn: str) -> None:
    # The release before 0037 with the move on: its runs with a key stay in runs, ended or not,
    # and hold their keys in runs' index alone. `migrate` applies this release's expand files
    # (0037 and later); a worker of this release drains a keyed backlog while a client repeats
    # every key, old and new, and `migrate --post-deploy` (0049) switches the keyed move on; the
    # leader then moves those that had ended. Each key ends with one run, and every repeat got it.
    ended_before, backlog = 300, 1500
    app = App(empty_dsn)

    @app.task()
    async def noop() -> None:
        await asyncio.sleep(0)

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to="0036", post_deploy=True)
        with conn.transaction():  # as its workers left them (schema 0009 lets SQL insert only queued runs)
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, result, unique_key)"
                " SELECT 'noop', 'succeeded', 1, now(), now(), 'null', 'old-' || g FROM generate_series(1, %s) AS g",
                (ended_before,),
            )
        conn.execute(
            "INSERT INTO pgsched.runs (task, unique_key) SELECT 'noop', 'new-' || g FROM generate_series(1, %s) AS g",
            (backlog,),
        )
        holders = dict(conn.execute("SELECT unique_key, id FROM pgsched.runs").fetchall())
        assert "0037" in [m.version for m in migrate(conn)]

        def finished() -> int:
            return int(scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'"))

        keys = sorted(holders)
        answers: dict[str, set[int]] = {key: set() for key in keys}
        stop, passes = threading.Event(), [0]

        def repeat_keys() -> None:
            with psycopg.connect(empty_dsn, autocommit=True) as client:
                while not stop.is_set():
                    passes[0] += 1
                    for key in keys[::7]:
                        answers[key].add(app.enqueue("noop", {}, unique_key=key, conn=client))
                        answers[key].add(scalar(client, "SELECT pgsched.enqueue('noop', unique_key => %s)", (key,)))

        async def drain() -> tuple[list[str], int]:
            async with RunningWorker(app, empty_dsn, concurrency=20) as w:

                async def started() -> bool:
                    w.still_running()
                    return finished() > ended_before + 50

                await wait_until_async(started, 30, "the worker to drain its first runs")
                applied: list[str] = []

                def upgrade() -> None:
                    with psycopg.connect(empty_dsn, autocommit=True) as migrator:
                        applied.extend(m.version for m in migrate(migrator, post_deploy=True))

                await asyncio.to_thread(upgrade)
                mover, moved = HistoryMover(), 0
                async with await psycopg.AsyncConnection.connect(empty_dsn, autocommit=True) as leader:
                    while not mover.done:
                        moved += await mover.round(leader, batch=100, batches=1)
                repeated = passes[0]

                async def repeated_since() -> bool:  # a whole pass over the keys after the switch
                    return passes[0] > repeated + 1

                await wait_until_async(repeated_since, 30, "the client to repeat every key again")

                async def drained() -> bool:
                    w.still_running()
                    return finished() == ended_before + backlog

                await wait_until_async(drained, 60, f"all {backlog} queued runs to succeed")
                return applied, moved

        repeater = threading.Thread(target=repeat_keys)
        repeater.start()
        try:
            applied, moved = asyncio.run(drain())
        finally:
            stop.set()
            repeater.join(timeout=60)
        app.close()
        assert applied == ["0046", "0049"] and moved >= ended_before
        total = ended_before + backlog
        assert conn.execute("SELECT count(*), count(DISTINCT unique_key) FROM pgsched.runs_all").fetchone() == (
            total,
            total,
        )
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs") == 0
        assert dict(conn.execute("SELECT unique_key, run_id FROM pgsched.run_unique_keys").fetchall()) == holders
        assert all(answers[key] == {holders[key]} for key in keys[::7]), "a repeated key got another run"

"""The beat against a real database: ``fire_due_jobs`` driven with an injected clock (no
sleeping), job definitions through ``pgsched.jobs``, ``App.schedule`` / ``@app.periodic``,
SQL, and the ``pgsched jobs`` / ``pgsched beat status`` commands."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import psycopg
import pytest
from psycopg.rows import dict_row

from pgsched import jobs
from pgsched.app import App
from pgsched.beat import _due_jobs, fire_due_jobs, plan_firings, write_firing
from pgsched.errors import InvalidArgs, InvalidInput
from pgsched.jobs import JobNotFound, JobSpec
from pgsched.schedule import InvalidSchedule, Schedule
from tests.support.beat import GRACE, fire, fire_each, job_row
from tests.support.db import scratch_database

UTC = timezone.utc
T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


# ---- one database for the module, emptied before each test (a fresh clone per test costs
# more than most of these tests)


@pytest.fixture
def dsn(module_dsn: str) -> Iterator[str]:
    """The module's database with no jobs, runs, workers or beat leader: as fresh as a new one."""
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE pgsched.jobs, pgsched.runs, pgsched.workers, pgsched.beat_leader RESTART IDENTITY CASCADE"
        )
    yield module_dsn


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def minute(n: int) -> datetime:
    return T0 + s(60 * n)


# ---- helpers


def add_job(conn: psycopg.Connection, name: str, *, now: datetime = T0, task: str = "tick", **kwargs: Any) -> None:
    schedule_keys = {"cron", "every_s", "at", "tz"}
    schedule = Schedule(**{k: v for k, v in kwargs.items() if k in schedule_keys})
    spec = JobSpec(
        name=name, task=task, schedule=schedule, **{k: v for k, v in kwargs.items() if k not in schedule_keys}
    )
    jobs.upsert_job(conn, spec, now=now)


def scheduled(conn: psycopg.Connection, name: str) -> list[datetime]:
    """The scheduled_for of every run of job ``name``, oldest first (duplicates kept)."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT r.scheduled_for FROM pgsched.runs_all r JOIN pgsched.jobs j ON j.id = r.job_id"
            " WHERE j.name = %s ORDER BY r.scheduled_for, r.id",
            (name,),
        )
    ]


def snapshot(conn: psycopg.Connection) -> tuple[list[tuple], list[tuple]]:
    """Every job and run, to check that a refused input changed nothing."""
    return (
        conn.execute("SELECT * FROM pgsched.jobs ORDER BY id").fetchall(),
        conn.execute("SELECT * FROM pgsched.runs_all ORDER BY id").fetchall(),
    )


# ---- firing on schedule


@pytest.mark.parametrize("schedule", [{"every_s": 1}, {"cron": "* * * * * *"}], ids=["every-1s", "cron-seconds"])
def test_every_second_job_over_ten_simulated_seconds_makes_one_run_per_second(
    conn: psycopg.Connection, dsn: str, schedule: dict
) -> None:
    add_job(conn, "heartbeat", **schedule)
    # uneven steps: some rounds early, some exactly on a fire time, some with two due
    steps = [0.4, 1.0, 1.0, 1.7, 2.0, 2.9, 3.0, 3.2, 5.1, 5.1, 6.0, 6.5, 7.999999, 8.0, 9.3, 10.0, 10.4]
    created = fire_each(dsn, [T0 + s(step) for step in steps])
    assert scheduled(conn, "heartbeat") == [T0 + s(k) for k in range(1, 11)]
    assert sum(created) == 10
    row = job_row(conn, "heartbeat")
    assert row["next_run_at"] == T0 + s(11)
    assert row["last_scheduled_for"] == T0 + s(10)


def test_runs_carry_the_job_definition_and_run_at_their_fire_time(conn: psycopg.Connection, dsn: str) -> None:
    add_job(conn, "report", cron="*/5 * * * *", args={"kind": "daily"}, queue="reports", priority=7, max_attempts=9)
    assert fire(dsn, minute(5)) == 1
    with conn.cursor(row_factory=dict_row) as cur:
        run = cur.execute("SELECT * FROM pgsched.runs_all").fetchone()
    assert run is not None
    assert (run["task"], run["args"], run["queue"], run["priority"], run["max_attempts"], run["status"]) == (
        "tick",
        {"kind": "daily"},
        "reports",
        7,
        9,
        "queued",
    )
    assert run["scheduled_for"] == run["run_at"] == minute(5)
    assert run["job_id"] == job_row(conn, "report")["id"]


def test_a_job_not_yet_due_makes_no_run(conn: psycopg.Connection, dsn: str) -> None:
    add_job(conn, "later", cron="0 * * * *")
    assert fire_each(dsn, [T0, minute(30), minute(60) - s(0.000001)]) == [0, 0, 0]
    assert scheduled(conn, "later") == []
    assert fire(dsn, minute(60)) == 1


def test_firing_twice_for_the_same_now_does_not_duplicate_runs(conn: psycopg.Connection, dsn: str) -> None:
    add_job(conn, "twice", every_s=1)
    assert fire_each(dsn, [T0 + s(3), T0 + s(3)]) == [3, 0]
    assert scheduled(conn, "twice") == [T0 + s(1), T0 + s(2), T0 + s(3)]


def test_a_fire_time_reached_again_from_a_stale_next_run_at_makes_no_second_run(
    conn: psycopg.Connection, dsn: str
) -> None:
    # A beat that acts on an old view of the job (a brief split brain) reaches the same fire
    # times again: the (job, scheduled_for) uniqueness keeps one run each.
    add_job(conn, "stale", every_s=1)
    assert fire(dsn, T0 + s(3)) == 3
    conn.execute("UPDATE pgsched.jobs SET next_run_at = %s WHERE name = 'stale'", (T0 + s(1),))
    assert fire(dsn, T0 + s(4)) == 1
    assert scheduled(conn, "stale") == [T0 + s(k) for k in range(1, 5)]


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE pgsched.jobs SET enabled = false WHERE name = 'racy'",  # paused
        "UPDATE pgsched.jobs SET next_run_at = next_run_at + interval '1 hour' WHERE name = 'racy'",  # rescheduled
    ],
)
def test_a_job_changed_between_the_read_and_the_firing_is_left_alone(
    conn: psycopg.Connection, dsn: str, change: str
) -> None:
    # The leader reads due jobs without locks; the firing applies only if next_run_at (and
    # enabled) are still what it read.
    add_job(conn, "racy", every_s=1)
    before = conn.execute("SELECT next_run_at, enabled FROM pgsched.jobs WHERE name = 'racy'").fetchone()

    async def read_change_fire() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            firings = plan_firings(await _due_jobs(aconn, T0 + s(2)), GRACE)
            conn.execute(change)
            return sum([await write_firing(aconn, firing) for firing in firings])

    assert asyncio.run(read_change_fire()) == 0
    assert scheduled(conn, "racy") == []
    after = conn.execute("SELECT next_run_at, enabled FROM pgsched.jobs WHERE name = 'racy'").fetchone()
    assert after != before  # the change stands, not overwritten by the stale firing


def test_concurrent_beats_on_two_connections_never_duplicate_a_fire_time(conn: psycopg.Connection, dsn: str) -> None:
    for n in range(20):
        add_job(conn, f"job{n:02}", every_s=1)

    async def race(now: datetime) -> list[int]:
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as a,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as b,
        ):
            return list(
                await asyncio.gather(
                    fire_due_jobs(a, misfire_grace_s=60, now=now), fire_due_jobs(b, misfire_grace_s=60, now=now)
                )
            )

    created = [asyncio.run(race(T0 + s(t))) for t in (5, 10)]
    assert sum(map(sum, created)) == 20 * 10
    for n in range(20):
        assert scheduled(conn, f"job{n:02}") == [T0 + s(k) for k in range(1, 11)]


def test_concurrent_beats_in_two_threads_never_duplicate_a_fire_time(conn: psycopg.Connection, dsn: str) -> None:
    for n in range(20):
        add_job(conn, f"job{n:02}", cron="* * * * *")
    barrier = threading.Barrier(2, timeout=30)
    nows = [minute(k) for k in range(1, 6)]

    def beat() -> list[int]:
        async def rounds() -> list[int]:
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
                created = []
                for now in nows:
                    await asyncio.to_thread(barrier.wait)
                    created.append(await fire_due_jobs(aconn, misfire_grace_s=GRACE, now=now))
                return created

        return asyncio.run(rounds())

    with ThreadPoolExecutor(2) as pool:
        results = [f.result(timeout=60) for f in [pool.submit(beat), pool.submit(beat)]]
    assert [a + b for a, b in zip(*results)] == [20] * 5
    duplicates = conn.execute(
        "SELECT job_id, scheduled_for FROM pgsched.runs_all GROUP BY 1, 2 HAVING count(*) > 1"
    ).fetchall()
    assert duplicates == []
    for n in range(20):
        assert scheduled(conn, f"job{n:02}") == nows


# ---- misfires


@pytest.mark.parametrize(
    "misfire, expected",
    [
        ("coalesce", [minute(61)]),
        ("skip", []),
        ("all", [minute(k) for k in range(52, 62)]),
    ],
)
def test_after_an_hour_of_downtime_the_misfire_policy_decides_the_missed_runs(
    conn: psycopg.Connection, dsn: str, misfire: str, expected: list[datetime]
) -> None:
    add_job(conn, "per-minute", cron="* * * * *", misfire=misfire, max_catchup=10)
    assert fire(dsn, minute(1)) == 1  # up and on time
    # down from 10:01 to 11:01:30: the fire times 10:02 .. 11:01 are all older than the grace
    assert fire(dsn, minute(61) + s(30)) == len(expected)
    assert scheduled(conn, "per-minute") == [minute(1), *expected]
    assert job_row(conn, "per-minute")["next_run_at"] == minute(62)
    # and back to normal afterwards
    assert fire(dsn, minute(62)) == 1


@pytest.mark.parametrize(
    "misfire, missed",
    [
        ("coalesce", [T0 + s(3595)]),
        ("skip", []),
        ("all", [T0 + s(k) for k in range(3586, 3596)]),
    ],
)
def test_fire_times_within_the_grace_always_fire_one_run_each_under_every_policy(
    conn: psycopg.Connection, dsn: str, misfire: str, missed: list[datetime]
) -> None:
    add_job(conn, "per-second", every_s=1, misfire=misfire, max_catchup=10)
    # an hour late: 3600 fire times due, the last 5 (3596..3600) within the 5 s grace
    fire(dsn, T0 + s(3600))
    on_time = [T0 + s(k) for k in range(3596, 3601)]
    assert scheduled(conn, "per-second") == missed + on_time


@pytest.mark.parametrize("misfire", ["coalesce", "skip", "all"])
def test_a_beat_a_few_seconds_late_loses_no_fire_time(conn: psycopg.Connection, dsn: str, misfire: str) -> None:
    add_job(conn, "failover", every_s=1, misfire=misfire, max_catchup=1)
    assert fire(dsn, T0 + s(4.5)) == 4  # 1..4 are late but within the grace
    assert scheduled(conn, "failover") == [T0 + s(k) for k in range(1, 5)]


@pytest.mark.parametrize(
    "misfire, after_resume",
    [
        ("coalesce", [minute(30)]),
        ("skip", []),
        ("all", [minute(k) for k in range(2, 31)]),
    ],
)
def test_no_runs_while_paused_then_the_misfire_policy_covers_the_pause(
    conn: psycopg.Connection, dsn: str, misfire: str, after_resume: list[datetime]
) -> None:
    add_job(conn, "pausable", cron="* * * * *", misfire=misfire)
    assert fire(dsn, minute(1)) == 1
    jobs.set_enabled(conn, "pausable", False)
    assert job_row(conn, "pausable")["enabled"] is False
    assert fire_each(dsn, [minute(k) for k in range(2, 31)]) == [0] * 29
    assert scheduled(conn, "pausable") == [minute(1)]
    jobs.set_enabled(conn, "pausable", True)
    fire(dsn, minute(30) + s(30))
    assert scheduled(conn, "pausable") == [minute(1), *after_resume]
    assert fire(dsn, minute(31)) == 1


# ---- one-offs, rows written by SQL


def test_a_one_off_fires_once_and_is_then_disabled(conn: psycopg.Connection, dsn: str) -> None:
    at = minute(10)
    add_job(conn, "once", at=at)
    assert job_row(conn, "once")["next_run_at"] == at
    assert fire_each(dsn, [minute(5), at, at + s(1), minute(60)]) == [0, 1, 0, 0]
    assert scheduled(conn, "once") == [at]
    row = job_row(conn, "once")
    assert row["enabled"] is False
    assert row["next_run_at"] is None
    assert row["last_scheduled_for"] == at
    assert jobs.get_job(conn, "once")["upcoming"] == []


def test_scheduling_an_already_fired_one_off_again_does_not_run_it_twice(conn: psycopg.Connection, dsn: str) -> None:
    at = minute(10)
    add_job(conn, "once", at=at)
    assert fire(dsn, at) == 1
    add_job(conn, "once", at=at, now=minute(20))  # a deploy script re-applies its definitions
    fire_each(dsn, [minute(21), minute(22)])
    assert scheduled(conn, "once") == [at]
    # Not merely deduplicated by the unique index (which pruning would defeat): it stays done.
    assert job_row(conn, "once")["enabled"] is False


def test_a_job_inserted_by_sql_gets_a_next_run_at_on_the_first_round_then_fires(
    conn: psycopg.Connection, dsn: str
) -> None:
    conn.execute("INSERT INTO pgsched.jobs (name, task, cron) VALUES ('from-sql', 'tick', '*/5 * * * *')")
    conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('from-sql-every', 'tick', 30)")
    assert job_row(conn, "from-sql")["next_run_at"] is None
    assert fire(dsn, minute(2)) == 0
    assert job_row(conn, "from-sql")["next_run_at"] == minute(5)
    assert job_row(conn, "from-sql-every")["next_run_at"] == minute(2) + s(30)
    half_minutes = [minute(2) + s(30 * k) for k in range(1, 7)]
    assert fire_each(dsn, half_minutes) == [1, 1, 1, 1, 1, 2]  # from-sql fires at 10:05 too
    assert scheduled(conn, "from-sql") == [minute(5)]
    assert scheduled(conn, "from-sql-every") == half_minutes


@pytest.mark.parametrize(
    "columns, values, error_fragments",
    [
        ("cron", "'61 * * * *'", ["invalid cron expression", "61 * * * *"]),
        ("cron", "'* * *'", ["invalid cron expression", "5 fields"]),
        ("cron, tz", "'* * * * *', 'Mars/Olympus_Mons'", ["unknown timezone", "Mars/Olympus_Mons"]),
    ],
    ids=["cron-61-minutes", "cron-3-fields", "unknown-tz"],
)
def test_a_sql_row_with_an_invalid_schedule_is_disabled_with_the_reason_and_others_still_fire(
    conn: psycopg.Connection, dsn: str, columns: str, values: str, error_fragments: list[str]
) -> None:
    add_job(conn, "healthy", cron="* * * * *")
    conn.execute(f"INSERT INTO pgsched.jobs (name, task, {columns}) VALUES ('broken', 'tick', {values})")
    assert fire(dsn, minute(1)) == 1
    broken = job_row(conn, "broken")
    assert broken["enabled"] is False
    for fragment in error_fragments:
        assert fragment in broken["last_error"]
    assert fire(dsn, minute(2)) == 1
    assert scheduled(conn, "healthy") == [minute(1), minute(2)]
    assert scheduled(conn, "broken") == []
    assert jobs.get_job(conn, "broken")["upcoming"] == []


# ---- definitions: App.schedule, @app.periodic, pgsched.jobs


def test_app_schedule_creates_the_job_and_a_second_call_updates_it_by_name(conn: psycopg.Connection, dsn: str) -> None:
    app = App(dsn=dsn)
    assert app.schedule("digest", task="send_digest", every=3600, args={"to": "a"}, conn=conn) is True
    first = job_row(conn, "digest")
    assert first["every_s"] == 3600 and first["args"] == {"to": "a"} and first["enabled"] is True
    # the beat moves it on by one fire time
    assert fire(dsn, first["next_run_at"], grace=3600) == 1
    advanced = job_row(conn, "digest")["next_run_at"]
    assert advanced == first["next_run_at"] + s(3600)

    # same schedule, other details: updated in place, its place in the schedule kept
    assert (
        app.schedule(
            "digest",
            task="send_digest",
            every=3600,
            args={"to": "b"},
            queue="mail",
            priority=-5,
            misfire="all",
            conn=conn,
        )
        is False
    )
    updated = job_row(conn, "digest")
    assert (updated["id"], updated["args"], updated["queue"], updated["priority"], updated["misfire"]) == (
        first["id"],
        {"to": "b"},
        "mail",
        -5,
        "all",
    )
    assert updated["next_run_at"] == advanced

    # a new schedule starts afresh from now
    before = datetime.now(UTC)
    assert app.schedule("digest", task="send_digest", every=60, conn=conn) is False
    reset = job_row(conn, "digest")["next_run_at"]
    assert before + s(60) <= reset <= datetime.now(UTC) + s(60)
    assert conn.execute("SELECT count(*) FROM pgsched.jobs").fetchone()[0] == 1
    app.close()


def test_app_schedule_clears_the_last_error_of_a_job_it_redefines(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute("INSERT INTO pgsched.jobs (name, task, cron) VALUES ('fixme', 'tick', '61 * * * *')")
    fire(dsn, T0)
    assert job_row(conn, "fixme")["last_error"]
    App(dsn=dsn).schedule("fixme", task="tick", cron="1 * * * *", conn=conn)
    fixed = job_row(conn, "fixme")
    assert fixed["last_error"] is None and fixed["enabled"] is True and fixed["cron"] == "1 * * * *"


def test_periodic_decorator_registers_the_task_and_sync_upserts_its_schedule(
    conn: psycopg.Connection, dsn: str
) -> None:
    app = App(dsn=dsn)

    @app.periodic(cron="*/5 * * * *", tz="Europe/Berlin", args={"days": 30}, queue="maintenance")
    def purge(days: int) -> int:
        return days

    @app.periodic(every=90, name="ping-every-90s")
    def ping() -> None:
        pass

    assert purge(days=3) == 3
    assert set(app.tasks) == {"purge", "ping"}
    assert jobs.list_jobs(conn) == []  # nothing written until synced
    app.sync_periodic_jobs(conn)
    purge_row, ping_row = job_row(conn, "purge"), job_row(conn, "ping-every-90s")
    assert (purge_row["task"], purge_row["cron"], purge_row["tz"], purge_row["args"], purge_row["queue"]) == (
        "purge",
        "*/5 * * * *",
        "Europe/Berlin",
        {"days": 30},
        "maintenance",
    )
    assert (ping_row["task"], ping_row["every_s"]) == ("ping", 90)

    # a restart syncs again: the same rows, their next fire times kept
    conn.execute("UPDATE pgsched.jobs SET next_run_at = '2030-01-01T00:00Z'")
    app.sync_periodic_jobs(conn)
    assert [(j["name"], j["next_run_at"]) for j in jobs.list_jobs(conn)] == [
        ("ping-every-90s", datetime(2030, 1, 1, tzinfo=UTC)),
        ("purge", datetime(2030, 1, 1, tzinfo=UTC)),
    ]


def test_trigger_job_queues_one_run_now_outside_the_schedule(conn: psycopg.Connection, dsn: str) -> None:
    add_job(conn, "nightly", cron="0 3 * * *", args={"full": True}, queue="batch")
    next_before = job_row(conn, "nightly")["next_run_at"]
    run_id = jobs.trigger_job(conn, "nightly")
    with conn.cursor(row_factory=dict_row) as cur:
        runs = cur.execute("SELECT * FROM pgsched.runs_all").fetchall()
    assert [r["id"] for r in runs] == [run_id]
    run, db_now = runs[0], conn.execute("SELECT now()").fetchone()[0]
    assert (run["task"], run["args"], run["queue"], run["status"]) == ("tick", {"full": True}, "batch", "queued")
    assert run["job_id"] == job_row(conn, "nightly")["id"]
    assert db_now - s(60) < run["scheduled_for"] <= db_now and run["run_at"] <= db_now
    assert job_row(conn, "nightly")["next_run_at"] == next_before
    with pytest.raises(JobNotFound, match="nosuch"):
        jobs.trigger_job(conn, "nosuch")


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"cron": "* * * * *"}, [minute(k) for k in range(1, 6)]),
        ({"every_s": 90}, [T0 + s(90 * k) for k in range(1, 6)]),
        (
            {"cron": "30 2 * * *", "tz": "Europe/Berlin"},
            [datetime(2026, 1, d, 1, 30, tzinfo=UTC) for d in range(6, 11)],
        ),
    ],
    ids=["cron", "every", "cron-tz"],
)
def test_get_job_shows_the_next_five_fire_times(
    conn: psycopg.Connection, schedule: dict, expected: list[datetime]
) -> None:
    add_job(conn, "shown", **schedule)
    job = jobs.get_job(conn, "shown")
    assert job["upcoming"] == expected
    assert job["next_run_at"] == expected[0]


def test_list_pause_resume_delete_and_unknown_names(conn: psycopg.Connection, dsn: str) -> None:
    add_job(conn, "b-job", every_s=60)
    add_job(conn, "a-job", cron="0 * * * *")
    assert [j["name"] for j in jobs.list_jobs(conn)] == ["a-job", "b-job"]
    jobs.set_enabled(conn, "a-job", False)
    assert jobs.get_job(conn, "a-job")["enabled"] is False
    jobs.set_enabled(conn, "a-job", True)
    assert jobs.get_job(conn, "a-job")["enabled"] is True
    assert fire(dsn, minute(1)) == 1  # b-job's first minute
    jobs.delete_job(conn, "b-job")
    assert [j["name"] for j in jobs.list_jobs(conn)] == ["a-job"]
    assert conn.execute("SELECT count(*), count(job_id) FROM pgsched.runs_all").fetchone() == (1, 0)  # history kept
    for call in (
        lambda: jobs.get_job(conn, "b-job"),
        lambda: jobs.set_enabled(conn, "b-job", True),
        lambda: jobs.delete_job(conn, "b-job"),
    ):
        with pytest.raises(JobNotFound, match="no job named 'b-job'"):
            call()


# ---- bad input: Python, SQL


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        ({"cron": "61 * * * *"}, InvalidSchedule, "invalid cron expression"),
        ({"cron": "* * *"}, InvalidSchedule, "5 fields"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus_Mons"}, InvalidSchedule, "unknown timezone"),
        ({"cron": "* * * * *", "every": 60}, InvalidSchedule, "exactly one of cron, every or at"),
        ({}, InvalidSchedule, "exactly one of cron, every or at"),
        ({"every": 0}, InvalidSchedule, "every must be"),
        ({"at": datetime(2026, 1, 1)}, InvalidSchedule, "timezone-aware"),
        ({"cron": "* * * * *", "misfire": "sometimes"}, InvalidInput, "misfire must be one of coalesce, skip, all"),
        ({"cron": "* * * * *", "max_catchup": 0}, InvalidInput, "max_catchup"),
        ({"cron": "* * * * *", "queue": "no spaces allowed"}, InvalidInput, "queue 'no spaces allowed'"),
        ({"cron": "* * * * *", "priority": 101}, InvalidInput, "priority must be an integer between -100 and 100"),
        ({"cron": "* * * * *", "max_attempts": 0}, InvalidInput, "max_attempts"),
        ({"cron": "* * * * *", "args": ["not", "a", "dict"]}, InvalidInput, "args must be a JSON object"),
        ({"cron": "* * * * *", "args": {"limit": datetime(2026, 1, 1)}}, InvalidInput, "not JSON-serialisable"),
        ({"cron": "* * * * *", "args": {"nope": 1}}, InvalidArgs, "args do not fit"),
    ],
    ids=[
        "cron-61",
        "cron-3-fields",
        "unknown-tz",
        "cron-and-every",
        "no-schedule",
        "every-0",
        "naive-at",
        "misfire",
        "max-catchup",
        "queue",
        "priority",
        "max-attempts",
        "args-list",
        "args-not-json",
        "args-not-fitting-the-task",
    ],
)
def test_app_schedule_refuses_bad_input_and_writes_nothing(
    conn: psycopg.Connection, dsn: str, kwargs: dict, error: type[Exception], fragment: str
) -> None:
    app = App(dsn=dsn)

    @app.task
    def known(limit: int = 1) -> None:
        pass

    app.schedule("existing", task="known", every=60, conn=conn)
    before = snapshot(conn)
    with pytest.raises(error) as caught:
        app.schedule("existing", task="known", conn=conn, **kwargs)
    assert fragment in str(caught.value)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    "columns, values, constraint",
    [
        ("cron, every_s", "'* * * * *', 60", "job_needs_exactly_one_of_cron_every_s_at"),
        ("every_s, at", "60, now()", "job_needs_exactly_one_of_cron_every_s_at"),
        ("tz", "'UTC'", "job_needs_exactly_one_of_cron_every_s_at"),
        ("cron, misfire", "'* * * * *', 'sometimes'", "job_misfire_must_be_coalesce_skip_or_all"),
        ("every_s", "0", "job_every_s_must_be_1_s_to_366_days"),
        ("every_s", "-1", "job_every_s_must_be_1_s_to_366_days"),
        ("every_s", "'NaN'", "job_every_s_must_be_1_s_to_366_days"),
        ("every_s", "0.5", "job_every_s_must_be_1_s_to_366_days"),
        ("every_s", "31622401", "job_every_s_must_be_1_s_to_366_days"),
        ("cron, tz", "'* * * * *', repeat('x', 65)", "job_tz_must_be_at_most_64_characters"),
        ("at", "'infinity'", "job_instants_must_be_within_years_1_to_9999"),
        ("at", "'4000-01-01 BC'", "job_instants_must_be_within_years_1_to_9999"),
        ("every_s, next_run_at", "60, '-infinity'", "job_instants_must_be_within_years_1_to_9999"),
        ("cron, misfire, max_catchup", "'* * * * *', 'all', 1000000000", "job_max_catchup_must_be_at_most_100000"),
        (
            "cron, tenant",
            "'* * * * *', 'bad tenant!'",
            "job_tenant_must_match_a_z_0_9_dot_dash_underscore_colon_max_63",
        ),
    ],
    ids=[
        "cron-and-every",
        "every-and-at",
        "none",
        "misfire",
        "every-0",
        "every-negative",
        "every-nan",
        "every-half-second",
        "every-over-366-days",
        "tz-65-characters",
        "at-infinity",
        "at-4000-bc",
        "next-run-at-minus-infinity",
        "max-catchup-1e9",
        "tenant-bad",
    ],
)
def test_sql_insert_violating_a_job_constraint_is_refused_naming_it(
    conn: psycopg.Connection, columns: str, values: str, constraint: str
) -> None:
    before = snapshot(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.execute(f"INSERT INTO pgsched.jobs (name, task, {columns}) VALUES ('bad', 'tick', {values})")
    assert caught.value.diag.constraint_name == constraint
    assert constraint in str(caught.value)
    assert snapshot(conn) == before


# ---- CLI


def cli(dsn: str, *args: str) -> subprocess.Popen[str]:
    """Start `pgsched ARGS` (python -m pgsched.cli.main) against ``dsn``."""
    env = {**os.environ, "PGSCHED_DSN": dsn, "COLUMNS": "200"}
    return subprocess.Popen(
        [sys.executable, "-m", "pgsched.cli.main", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_cli(dsn: str, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run the commands side by side (each CLI start costs about a second)."""
    return [finish(p) for p in [cli(dsn, *command) for command in commands]]


BAD_CLI = {
    "add-bad-cron": (
        ["jobs", "add", "existing", "--task", "t", "--cron", "61 * * * *"],
        ["invalid cron expression", "61 * * * *"],
    ),
    "add-unknown-tz": (
        ["jobs", "add", "existing", "--task", "t", "--cron", "* * * * *", "--tz", "Mars/Olympus_Mons"],
        ["unknown timezone", "Mars/Olympus_Mons"],
    ),
    "add-cron-and-every": (
        ["jobs", "add", "existing", "--task", "t", "--cron", "* * * * *", "--every", "60"],
        ["exactly one of cron, every or at"],
    ),
    "add-bad-args": (
        ["jobs", "add", "existing", "--task", "t", "--every", "60", "--args", "{not json"],
        ["--args is not valid JSON"],
    ),
    "add-bad-misfire": (
        ["jobs", "add", "existing", "--task", "t", "--every", "60", "--misfire", "sometimes"],
        ["misfire must be one of coalesce, skip, all", "sometimes"],
    ),
    "show-nosuch": (["jobs", "show", "nosuch"], ["no job named 'nosuch'"]),
    "pause-nosuch": (["jobs", "pause", "nosuch"], ["no job named 'nosuch'"]),
}


class CliBatch:
    """Commands started together; their results once all have finished, and whether the
    database still holds exactly what it held before they started."""

    def __init__(self, conn: psycopg.Connection, commands: dict[str, list[str]]) -> None:
        self.conn, self.before = conn, snapshot(conn)
        dsn = conn.info.dsn
        self.processes = {case: cli(dsn, *command) for case, command in commands.items()}
        self._results: tuple[dict[str, subprocess.CompletedProcess[str]], bool] | None = None

    def results(self) -> tuple[dict[str, subprocess.CompletedProcess[str]], bool]:
        if self._results is None:
            finished = {case: finish(process) for case, process in self.processes.items()}
            self._results = finished, snapshot(self.conn) == self.before
        return self._results


@pytest.fixture(scope="module", autouse=True)
def cli_on_a_fresh_database(postgresql_proc: Any) -> Iterator[CliBatch]:
    """Every bad command plus `beat status`, on a new database holding only the job 'existing'
    the bad commands try to redefine. Started with the module's first test (each CLI start
    costs about a second of CPU), so they run while the other tests do."""
    with (
        scratch_database(postgresql_proc, "pgsched_test_beat_cli") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        add_job(conn, "existing", cron="0 * * * *")
        commands = {**{case: command for case, (command, _) in BAD_CLI.items()}, "beat-status": ["beat", "status"]}
        batch = CliBatch(conn, commands)
        try:
            yield batch
        finally:
            batch.results()


@pytest.mark.parametrize("case", list(BAD_CLI))
def test_cli_bad_input_prints_one_error_line_exits_non_zero_and_changes_nothing(
    cli_on_a_fresh_database: CliBatch, case: str
) -> None:
    results, unchanged = cli_on_a_fresh_database.results()
    result = results[case]
    assert result.returncode != 0, result
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in BAD_CLI[case][1]:
        assert fragment in lines[0]
    assert unchanged


def test_beat_status_says_no_beat_leads_on_a_fresh_database(cli_on_a_fresh_database: CliBatch) -> None:
    result = cli_on_a_fresh_database.results()[0]["beat-status"]
    assert result.returncode == 0, result.stderr
    assert "no beat leads" in result.stdout


def test_cli_jobs_add_list_show_pause_resume_trigger_delete(conn: psycopg.Connection, dsn: str) -> None:
    added = run_cli(
        dsn,
        [
            "jobs",
            "add",
            "nightly",
            "--task",
            "backup",
            "--cron",
            "30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--args",
            '{"full": true}',
            "--queue",
            "batch",
            "--misfire",
            "all",
            "--max-catchup",
            "3",
        ],
        ["jobs", "add", "ticker", "--task", "tick", "--every", "90", "--paused"],
        ["jobs", "add", "once", "--task", "tick", "--at", "2099-01-01T00:00:00+00:00"],
    )
    for result in added:
        assert result.returncode == 0, result.stderr
    assert "job 'nightly' created; next runs:" in added[0].stdout
    upcoming = [datetime.fromisoformat(line.strip()) for line in added[0].stdout.splitlines()[1:] if line.strip()]
    assert len(upcoming) == 5
    assert all(t.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "02:30" for t in upcoming)
    assert "2099-01-01T00:00:00+00:00" in added[2].stdout
    nightly = job_row(conn, "nightly")
    assert (
        nightly["task"],
        nightly["cron"],
        nightly["tz"],
        nightly["args"],
        nightly["queue"],
        nightly["misfire"],
        nightly["max_catchup"],
        nightly["enabled"],
    ) == ("backup", "30 2 * * *", "Europe/Berlin", {"full": True}, "batch", "all", 3, True)
    assert job_row(conn, "ticker")["enabled"] is False

    listed, shown, paused, resumed, triggered = run_cli(
        dsn,
        ["jobs", "list"],
        ["jobs", "show", "nightly"],
        ["jobs", "pause", "nightly"],
        ["jobs", "resume", "ticker"],
        ["jobs", "trigger", "once"],
    )
    for result in (listed, shown, paused, resumed, triggered):
        assert result.returncode == 0, result.stderr
    assert all(name in listed.stdout for name in ("nightly", "ticker", "once"))
    assert "job nightly" in shown.stdout and "Europe/Berlin" in shown.stdout and "next runs:" in shown.stdout
    assert "paused" in paused.stdout and job_row(conn, "nightly")["enabled"] is False
    assert "resumed" in resumed.stdout and job_row(conn, "ticker")["enabled"] is True
    run_id = int(triggered.stdout.strip())
    assert conn.execute(
        "SELECT j.name FROM pgsched.runs_all r JOIN pgsched.jobs j ON j.id = r.job_id WHERE r.id = %s", (run_id,)
    ).fetchone() == ("once",)

    (deleted,) = run_cli(dsn, ["jobs", "delete", "once"])
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    assert [j["name"] for j in jobs.list_jobs(conn)] == ["nightly", "ticker"]
    assert conn.execute("SELECT count(*) FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone() == (1,)


def test_a_periodic_task_with_a_bad_schedule_registers_nothing_so_a_fixed_one_can() -> None:
    app = App("dbname=unused")
    with pytest.raises(InvalidSchedule):

        @app.periodic(cron="61 * * * *")
        def report() -> None: ...

    assert "report" not in app.tasks and not app.periodic_jobs

    @app.periodic(cron="1 * * * *")
    def report() -> None: ...

    assert "report" in app.tasks and "report" in app.periodic_jobs


def test_a_job_whose_runs_the_database_refuses_is_disabled_and_the_others_still_fire(
    conn: psycopg.Connection, dsn: str
) -> None:
    # The jobs table takes a task name longer than a run's (an SQL insert): firing it would
    # fail the runs' CHECK on every round; it is disabled with the reason instead.
    add_job(conn, "healthy", every_s=1)
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, every_s, next_run_at) VALUES ('bad', %s, 1, %s)", ("t" * 201, T0 + s(1))
    )
    assert fire(dsn, T0 + s(2)) == 2  # the healthy job's two fire times
    enabled, error = conn.execute("SELECT enabled, last_error FROM pgsched.jobs WHERE name = 'bad'").fetchone()
    assert enabled is False and "task_must_not_be_empty" in error
    assert scheduled(conn, "bad") == []

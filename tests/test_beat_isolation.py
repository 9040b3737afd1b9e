"""The beat is isolated from its jobs: whatever one job's row holds (an instant no reader can
hold, an overlong timezone, an interval below the floor) disables that job with the reason,
and every other job fires. Schema 0009 refuses such rows (tests/test_beat.py); these tests
drop its rules first, for a row written before them. The leader steps down only for its own lock connection's errors,
a hosted beat that fails is started again, and ``beat status`` shows only a live leader."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from pgsched.app import App
from pgsched.beat import Beat, BeatOptions
from pgsched.schedule import InvalidSchedule, Schedule
from pgsched.worker import Worker, WorkerOptions
from tests.support.beat import fire, job_row
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import drop_the_rules_of_0009, scalar
from tests.support.waiting import wait_until_async

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=timezone.utc)


def runs_of(conn: psycopg.Connection, name: str) -> int:
    return int(
        scalar(
            conn,
            "SELECT count(*) FROM pgsched.runs_all r JOIN pgsched.jobs j ON j.id = r.job_id WHERE j.name = %s",
            (name,),
        )
    )


async def runs_made(conn: psycopg.Connection, name: str, count: int) -> None:
    # In a thread: a blocking read on the loop that hosts the beat would wait for a lock the
    # beat holds (attaching a day partition locks runs_history's DEFAULT one, which runs_all
    # reads) while the beat, on the same loop, could never commit to release it.
    async def enough() -> bool:
        return await asyncio.to_thread(runs_of, conn, name) >= count

    await wait_until_async(enough, 30, f"{count} runs of job {name!r}")


STATE = "enabled, last_error"  # what these tests read of a job whose instants may be unreadable

UNREADABLE_ROWS = {
    "at-infinity": ("at", "'infinity'"),
    "at-4000-bc": ("at", "'4000-01-01 00:00Z BC'"),
    "at-year-10000-in-utc": ("at", "'9999-12-31T23:59:59-14:00'"),
    "next-run-at-minus-infinity": ("cron, next_run_at", "'* * * * *', '-infinity'"),
    "last-scheduled-for-infinity": ("every_s, next_run_at, last_scheduled_for", f"60, '{T0.isoformat()}', 'infinity'"),
}


@pytest.mark.parametrize("columns, values", UNREADABLE_ROWS.values(), ids=UNREADABLE_ROWS.keys())
def test_a_job_with_an_instant_no_reader_can_hold_is_disabled_and_the_others_fire(
    conn: psycopg.Connection, dsn: str, columns: str, values: str
) -> None:
    drop_the_rules_of_0009(conn)
    conn.execute("INSERT INTO pgsched.jobs (name, task, cron) VALUES ('healthy', 'tick', '* * * * *')")
    conn.execute(f"INSERT INTO pgsched.jobs (name, task, {columns}) VALUES ('broken', 'tick', {values})")
    fire(dsn, T0)  # the healthy job gets its first fire time
    assert fire(dsn, T0 + timedelta(minutes=1)) == 1
    broken = job_row(conn, "broken", STATE)
    assert broken["enabled"] is False
    assert "cannot be read: instants must be finite and within the years 1 to 9999" in broken["last_error"]
    assert runs_of(conn, "healthy") == 1 and runs_of(conn, "broken") == 0


def test_a_job_with_an_overlong_timezone_is_disabled_and_the_others_fire(conn: psycopg.Connection, dsn: str) -> None:
    drop_the_rules_of_0009(conn)
    conn.execute("INSERT INTO pgsched.jobs (name, task, cron) VALUES ('healthy', 'tick', '* * * * *')")
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, cron, tz) VALUES ('broken', 'tick', '* * * * *', %s)",
        ("Europe/" + "x" * 300,),
    )
    fire(dsn, T0)
    assert fire(dsn, T0 + timedelta(minutes=1)) == 1
    broken = job_row(conn, "broken", STATE)
    assert broken["enabled"] is False and "tz must be an IANA timezone name" in broken["last_error"]


@pytest.mark.parametrize("every_s", [1e-300, 0.5, 0.999])
def test_an_interval_below_one_second_is_refused(every_s: float) -> None:
    with pytest.raises(InvalidSchedule, match="every must be a number of seconds >= 1"):
        Schedule(every_s=every_s)


def test_an_sql_row_with_an_interval_below_the_floor_is_disabled_instead_of_flooding_the_queue(
    conn: psycopg.Connection, dsn: str
) -> None:
    drop_the_rules_of_0009(conn)
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, every_s, next_run_at) VALUES ('flood', 'tick', 1e-300, %s)", (T0,)
    )
    assert fire(dsn, T0 + timedelta(seconds=4)) == 0
    flood = job_row(conn, "flood", STATE)
    assert flood["enabled"] is False and "every must be a number of seconds >= 1" in flood["last_error"]


@pytest.mark.parametrize(
    "option",
    [["--every", "1e-300"], ["--cron", "* * * * *", "--tz", "Europe/" + "x" * 300]],
    ids=["every-1e-300", "tz-300-characters"],
)
def test_cli_jobs_add_refuses_a_schedule_the_beat_cannot_fire_and_writes_nothing(
    conn: psycopg.Connection, dsn: str, option: list[str]
) -> None:
    result = run_cli(dsn, "jobs", "add", "f", "--task", "noop", *option)
    assert_one_error_line(result)
    assert conn.execute("SELECT count(*) FROM pgsched.jobs").fetchone() == (0,)


def test_a_leading_beat_fires_healthy_jobs_while_broken_rows_exist_and_never_steps_down(
    conn: psycopg.Connection, dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    drop_the_rules_of_0009(conn)
    conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('healthy', 'tick', 1)")
    conn.execute("INSERT INTO pgsched.jobs (name, task, at) VALUES ('infinite', 'tick', 'infinity')")
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, cron, tz) VALUES ('long-tz', 'tick', '* * * * *', %s)", ("x" * 300,)
    )

    async def lead_until_two_runs() -> bool:
        beat = Beat(dsn, BeatOptions(lock_interval_s=0.1, max_sleep_s=0.2))
        running = asyncio.create_task(beat.run())
        try:
            await runs_made(conn, "healthy", 2)
            return beat.leading
        finally:
            beat.request_stop()
            await running

    assert asyncio.run(lead_until_two_runs()) is True
    assert not job_row(conn, "infinite", STATE)["enabled"] and not job_row(conn, "long-tz", STATE)["enabled"]
    assert "steps down" not in caplog.text


def test_beat_status_shows_no_leader_once_the_recorded_one_holds_no_lock(conn: psycopg.Connection, dsn: str) -> None:
    # A beat that died without resigning leaves its row behind; its lock went with its connection.
    conn.execute("INSERT INTO pgsched.beat_leader (host, pid, since, last_seen_at) VALUES ('gone', 1, now(), now())")
    result = run_cli(dsn, "beat", "status")
    assert result.returncode == 0 and "no beat leads" in result.stdout, result.stdout + result.stderr
    with psycopg.connect(dsn, autocommit=True) as lock_holder:
        lock_holder.execute("SELECT pg_advisory_lock(hashtextextended('pgsched.beat', 0))")
        result = run_cli(dsn, "beat", "status")
    assert result.returncode == 0 and "gone" in result.stdout, result.stdout + result.stderr


def test_a_hosted_beat_that_fails_is_started_again_by_its_worker(
    conn: psycopg.Connection, dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Fault injection, not a mock: the first start of the hosted beat raises, the second is real.
    real_run, starts = Beat.run, []

    async def fails_the_first_time(beat: Beat) -> None:
        starts.append(beat)
        if len(starts) == 1:
            raise RuntimeError("injected: the hosted beat's first start fails")
        await real_run(beat)

    monkeypatch.setattr(Beat, "run", fails_the_first_time)
    conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('healthy', 'tick', 1)")

    async def host_until_a_run_fires() -> None:
        worker = Worker(
            App(dsn), WorkerOptions(queues=["nothing-to-claim"]), beat=BeatOptions(lock_interval_s=0.1, max_sleep_s=0.2)
        )
        running = asyncio.create_task(worker.run())
        try:
            await runs_made(conn, "healthy", 1)
        finally:
            worker.request_stop()
            await running

    asyncio.run(host_until_a_run_fires())
    assert len(starts) == 2
    assert "the hosted beat failed; starting it again" in caplog.text

"""Multi-process tests of the beat: real `pgsched beat` (and `pgsched worker --beat`) processes
against a real PostgreSQL.

No worker is needed to see what a beat fires: every fire time of a job becomes one row in
``pgsched.runs`` with ``job_id`` and ``scheduled_for`` (and ``created_at`` = the firing
transaction's clock). Synchronisation is by polling the database against a deadline; every
process a test starts is killed and reaped in the fixture teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from pgsched.jobs import JobSpec, upsert_job
from pgsched.schedule import Schedule
from pgsched.sql import queries
from tests.support.db import scalar
from tests.support.processes import ROOT, Process, Processes
from tests.support.waiting import POLL_S
from tests.support.workers import CREATE_EXECUTIONS

pytestmark = pytest.mark.slow

LOCK_INTERVAL_S = 0.5
EVERY_SECOND = "* * * * * *"  # 6 fields: seconds first
ONE_S = timedelta(seconds=1)


# ---- processes


class Fleet(Processes):
    """Beat and worker processes of one test (tests/support/processes.py), killed at teardown."""

    def __init__(self, dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
        super().__init__(tmp_path, conn)
        self.dsn = dsn

    def beat(self, *options: str, misfire_grace: float = 5.0, lock_interval: float = LOCK_INTERVAL_S) -> Process:
        # --app: process_app registers a SIGUSR1 stack dump (it declares no periodic jobs to sync).
        return self.start(
            "beat",
            "--dsn",
            self.dsn,
            "--app",
            "tests.process_app:app",
            "--lock-interval",
            str(lock_interval),
            "--misfire-grace",
            str(misfire_grace),
            *options,
            kind="beat",
            env={"PGSCHED_DSN": self.dsn},
        )

    def worker(self, *options: str) -> Process:
        return self.start(
            "worker",
            "--app",
            "tests.process_app:app",
            "--dsn",
            self.dsn,
            *options,
            kind="worker",
            env={"PGSCHED_DSN": self.dsn},
        )

    def wait_beats_listening(self, count: int) -> None:
        """Until ``count`` beats have their LISTEN connection up (their lock loop has started)."""
        self.wait_until(
            lambda: (
                scalar(
                    self.conn,
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND query ILIKE 'LISTEN pgsched_jobs%%'",
                )
                == count
            ),
            20,
            f"{count} beat(s) to listen",
        )

    def wait_leader(self, among: list[Process], timeout: float = 20) -> Process:
        pids = {p.pid: p for p in among}
        pid = self.wait_until(
            lambda: (leader_pid(self.conn) or 0) in pids and leader_pid(self.conn),
            timeout,
            f"one of pids {sorted(pids)} to lead",
        )
        return pids[pid]

    def database_diagnostics(self) -> str:
        leader = self.conn.execute("SELECT * FROM pgsched.beat_leader").fetchall()
        return f"--- beat_leader: {leader}\n{super().database_diagnostics()}"


@pytest.fixture
def fleet(dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> Iterator[Fleet]:
    spawner = Fleet(dsn, conn, tmp_path)
    try:
        yield spawner
    finally:
        spawner.cleanup()


# ---- database helpers


def leader_pid(conn: psycopg.Connection[Any]) -> int | None:
    return scalar(conn, "SELECT pid FROM pgsched.beat_status")


def beat_locks_held(conn: psycopg.Connection[Any]) -> int:
    """Sessions holding the beat's advisory lock (a bigint key: classid = high, objid = low 32 bits)."""
    return scalar(
        conn,
        "SELECT count(*) FROM pg_locks, (SELECT hashtextextended('pgsched.beat', 0) AS k) AS key"
        " WHERE locktype = 'advisory' AND granted AND objsubid = 1"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = (k >> 32) & 4294967295 AND objid::bigint = k & 4294967295",
    )


def every_second_job(
    conn: psycopg.Connection[Any],
    name: str,
    *,
    misfire: str = "coalesce",
    task: str = "tick",
    args: dict[str, Any] | None = None,
) -> int:
    upsert_job(
        conn, JobSpec(name=name, task=task, args=args or {}, schedule=Schedule(cron=EVERY_SECOND), misfire=misfire)
    )
    return scalar(conn, "SELECT id FROM pgsched.jobs WHERE name = %s", (name,))


def fired(conn: psycopg.Connection[Any], job_id: int) -> list[tuple[datetime, datetime]]:
    """(scheduled_for, created_at) of every run of the job, oldest fire time first."""
    return conn.execute(
        "SELECT scheduled_for, created_at FROM pgsched.runs_all WHERE job_id = %s ORDER BY scheduled_for, id", (job_id,)
    ).fetchall()


def runs_count(conn: psycopg.Connection[Any], job_id: int) -> int:
    return scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE job_id = %s", (job_id,))


def sessions_opened(conn: psycopg.Connection[Any]) -> int:
    """Sessions ever established to this database (PostgreSQL 14+)."""
    return scalar(conn, "SELECT sessions FROM pg_stat_database WHERE datname = current_database()")


def db_now(conn: psycopg.Connection[Any]) -> datetime:
    return scalar(conn, "SELECT clock_timestamp()")


def doubled(times: list[datetime]) -> list[datetime]:
    return sorted({t for t in times if times.count(t) > 1})


def gaps(times: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Pairs of neighbouring fire times of a per-second job that are not one second apart."""
    return [(a, b) for a, b in zip(times, times[1:]) if b - a != ONE_S]


def assert_each_second_once(times: list[datetime], *, covering: tuple[datetime, datetime]) -> None:
    """Every whole second from the first fire time to the last fired exactly once, and the
    fire times span ``covering`` (give or take the second the ends take to come due)."""
    assert times, "nothing fired"
    assert doubled(times) == [], f"fire times fired more than once: {doubled(times)}"
    assert [t for t in times if t.microsecond] == [], "fire times of a per-second cron must be whole seconds"
    assert gaps(times) == [], f"fire times lost between {gaps(times)}"
    start, end = covering
    assert times[0] <= start + 1.5 * ONE_S, f"first fire time {times[0]} long after {start}"
    assert times[-1] >= end - 1.5 * ONE_S, f"last fire time {times[-1]} long before {end}"


# ---- 1. one leader, each fire time once


def test_three_beats_have_one_leader_and_fire_each_second_exactly_once(
    fleet: Fleet, conn: psycopg.Connection[Any]
) -> None:
    job = every_second_job(conn, "tick")
    beats = [fleet.beat() for _ in range(3)]
    leader = fleet.wait_leader(beats)
    fleet.wait_beats_listening(3)
    begin = db_now(conn)
    sessions_before = sessions_opened(conn)

    status = subprocess.Popen(
        [sys.executable, "-m", "pgsched.cli.main", "beat", "status", "--dsn", fleet.dsn],
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="200"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    samples: list[tuple[int | None, int]] = []
    watch_until = time.monotonic() + 10
    while time.monotonic() < watch_until:
        samples.append((leader_pid(conn), beat_locks_held(conn)))
        for proc in beats:
            assert proc.popen.poll() is None, f"beat pid {proc.pid} exited:\n{proc.log()[-4000:]}"
        time.sleep(POLL_S)
    end = db_now(conn)
    status_out, _ = status.communicate(timeout=30)
    watched_s = (end - begin).total_seconds()
    time.sleep(1.0)  # not a synchronisation: backends flush their session counts at least once a second
    sessions = sessions_opened(conn) - sessions_before

    assert len(samples) > 100
    assert sorted(set(samples)) == [(leader.pid, 1)], (
        f"(leader pid, advisory locks held) seen: {sorted(set(samples), key=str)}"
    )
    assert status.returncode == 0, status_out.decode()
    assert str(leader.pid) in status_out.decode(), status_out.decode()
    leads = {p.pid: p.log().count(" leads") for p in beats}
    assert leads == {p.pid: int(p is leader) for p in beats}, f"'leads' log lines per beat: {leads}"
    # Each follower opens one connection per try, one try per lock interval (not a busy loop).
    tries = 2 * (watched_s + 1) / LOCK_INTERVAL_S
    assert sessions <= 1.5 * tries + 10, f"{sessions} sessions opened in {watched_s:.1f}s by 2 followers"

    times = [t for t, _ in fired(conn, job)]
    assert_each_second_once(times, covering=(begin, end))
    assert len(times) >= 9

    for proc in beats:
        proc.send(signal.SIGTERM)
    for proc in beats:
        assert proc.wait_exit(15) == 0, proc.log()[-3000:]
    assert leader_pid(conn) is None


# ---- 2. failover after SIGKILL


def test_sigkilled_leader_is_replaced_within_the_lock_interval_and_no_fire_time_is_lost_or_doubled(
    fleet: Fleet, conn: psycopg.Connection[Any]
) -> None:
    job = every_second_job(conn, "tick")
    beats = [fleet.beat(misfire_grace=5.0) for _ in range(3)]
    old = fleet.wait_leader(beats)
    fleet.wait_beats_listening(3)
    fleet.wait_until(lambda: runs_count(conn, job) >= 3, 10, "3 runs under the first leader")
    begin = fired(conn, job)[0][0]

    killed = time.monotonic()
    old.send(signal.SIGKILL)
    new_pid = fleet.wait_until(
        lambda: (leader_pid(conn) or old.pid) != old.pid and leader_pid(conn),
        LOCK_INTERVAL_S + 5,
        "another beat to lead",
    )
    gap = time.monotonic() - killed
    assert old.popen.wait(timeout=5) == -signal.SIGKILL
    assert new_pid in {p.pid for p in beats if p is not old}
    taken_over = db_now(conn)
    assert gap <= LOCK_INTERVAL_S + 1.0, f"failover took {gap:.2f}s with a {LOCK_INTERVAL_S}s lock interval"

    fleet.wait_until(
        lambda: fired(conn, job)[-1][0] >= taken_over + 3 * ONE_S, 10, "3 more fire times under the new leader"
    )
    leads = {p.pid: p.log().count(" leads") for p in beats if p is not old}
    assert leads == {p.pid: int(p.pid == new_pid) for p in beats if p is not old}, f"'leads' lines: {leads}"
    for proc in beats:
        if proc is not old:
            proc.send(signal.SIGTERM)
    for proc in beats:
        if proc is not old:
            assert proc.wait_exit(15) == 0, proc.log()[-3000:]
    end = db_now(conn)
    times = [t for t, _ in fired(conn, job)]
    assert_each_second_once(times, covering=(begin, end))


def test_outage_longer_than_the_grace_all_catches_up_every_fire_time_and_skip_doubles_none(
    fleet: Fleet, conn: psycopg.Connection[Any]
) -> None:
    """The followers are frozen (SIGSTOP) while the leader is SIGKILLed, so the beat is down
    for a known 1.6 s: at least one fire time is older than the 0.2 s grace when the next
    leader looks. ``all`` must fire it late; ``skip`` must not fire it; neither may double one."""
    grace = 0.2
    all_job = every_second_job(conn, "catch-up", misfire="all")
    skip_job = every_second_job(conn, "skipper", misfire="skip")
    old = fleet.beat(misfire_grace=grace)
    fleet.wait_leader([old])
    followers = [fleet.beat(misfire_grace=grace) for _ in range(2)]
    fleet.wait_beats_listening(3)
    fleet.wait_until(
        lambda: runs_count(conn, all_job) >= 2 and runs_count(conn, skip_job) >= 2,
        10,
        "2 runs of each job under the first leader",
    )

    for proc in followers:
        proc.send(signal.SIGSTOP)
    old.send(signal.SIGKILL)
    assert old.popen.wait(timeout=5) == -signal.SIGKILL
    killed_at = db_now(conn)
    time.sleep(1.6)  # the outage itself (not a synchronisation): nobody can fire during it
    assert leader_pid(conn) == old.pid  # the dead leader's row stays until the next leader replaces it
    resumed = time.monotonic()
    for proc in followers:
        proc.send(signal.SIGCONT)
    new_pid = fleet.wait_until(
        lambda: (leader_pid(conn) or old.pid) != old.pid and leader_pid(conn), LOCK_INTERVAL_S + 5, "a follower to lead"
    )
    gap = time.monotonic() - resumed
    assert new_pid in {p.pid for p in followers}
    assert gap <= LOCK_INTERVAL_S + 1.0, f"takeover took {gap:.2f}s after the followers resumed"
    taken_over = db_now(conn)

    fleet.wait_until(
        lambda: (
            fired(conn, all_job)[-1][0] >= taken_over + 2 * ONE_S
            and fired(conn, skip_job)[-1][0] >= taken_over + 2 * ONE_S
        ),
        10,
        "2 more fire times of each job under the new leader",
    )
    for proc in followers:
        proc.send(signal.SIGTERM)
    for proc in followers:
        assert proc.wait_exit(15) == 0, proc.log()[-3000:]

    # all: none lost, none doubled, and the ones missed in the outage fired late (catch-up).
    all_runs = fired(conn, all_job)
    all_times = [t for t, _ in all_runs]
    assert all_times[0] < killed_at < taken_over < all_times[-1]
    assert_each_second_once(all_times, covering=(all_times[0], all_times[-1]))
    caught_up = [
        t for t, created in all_runs if created - t > timedelta(seconds=grace) and killed_at - ONE_S < t < taken_over
    ]
    assert caught_up, f"no fire time of the outage ({killed_at} .. {taken_over}) fired late: {all_runs}"

    # skip: none doubled, nothing fired later than the grace, and the outage's missed fire
    # times were skipped (the leader fires the on-time ones again afterwards).
    skip_runs = fired(conn, skip_job)
    skip_times = [t for t, _ in skip_runs]
    assert doubled(skip_times) == [], f"fire times fired more than once: {doubled(skip_times)}"
    # The leader judges a fire time on time at its look and writes the run in a later
    # transaction, so created_at trails the look: by 0.2 s once on a machine at load 24. A
    # missed fire time fired anyway would trail by most of the 1.6 s outage, hence the 0.5 s slack.
    too_late = [(t, created) for t, created in skip_runs if created - t >= timedelta(seconds=grace + 0.5)]
    assert too_late == [], f"skip fired missed fire times: {too_late}"
    skipped_in_outage = [b for a, b in gaps(skip_times) if a < killed_at < b]
    assert skipped_in_outage, f"no fire time skipped across the outage: {skip_times}"
    assert skip_times[-1] >= taken_over + 2 * ONE_S


# ---- 3. SIGTERM: resign and hand over


def test_sigterm_on_the_leader_resigns_exits_0_and_a_follower_takes_over_promptly(
    fleet: Fleet, conn: psycopg.Connection[Any]
) -> None:
    job = every_second_job(conn, "tick")
    old = fleet.beat()
    fleet.wait_leader([old])
    follower = fleet.beat()
    fleet.wait_beats_listening(2)
    fleet.wait_until(lambda: runs_count(conn, job) >= 2, 10, "2 runs under the first leader")
    begin = fired(conn, job)[0][0]

    signalled = time.monotonic()
    old.send(signal.SIGTERM)
    assert old.wait_exit(10) == 0, old.log()[-3000:]
    exited_in = time.monotonic() - signalled
    assert leader_pid(conn) in (None, follower.pid), "the stopped leader's row outlived it"
    assert "resigned" in old.log(), old.log()[-3000:]
    fleet.wait_until(lambda: leader_pid(conn) == follower.pid, LOCK_INTERVAL_S + 5, "the follower to lead")
    handover = time.monotonic() - signalled
    assert exited_in < 5, f"the leader took {exited_in:.1f}s to exit"
    assert handover <= LOCK_INTERVAL_S + 1.0, f"the follower led {handover:.2f}s after the SIGTERM"
    assert beat_locks_held(conn) == 1

    taken_over = db_now(conn)
    fleet.wait_until(
        lambda: fired(conn, job)[-1][0] >= taken_over + 2 * ONE_S, 10, "2 more fire times under the new leader"
    )
    follower.send(signal.SIGTERM)
    assert follower.wait_exit(10) == 0, follower.log()[-3000:]
    assert leader_pid(conn) is None
    assert beat_locks_held(conn) == 0
    times = [t for t, _ in fired(conn, job)]
    assert_each_second_once(times, covering=(begin, db_now(conn)))


def test_sigterm_during_a_leaders_round_is_not_forgotten(fleet: Fleet, conn: psycopg.Connection[Any]) -> None:
    """A job change wakes the idle leader for a round; a SIGTERM that lands while that round
    waits on the database must stop it when the round ends, not after its next sleep
    (``max_sleep_s``, 5 s). A row lock on ``beat_leader`` holds the round's heartbeat up
    until the signal has arrived."""
    conn.execute("INSERT INTO pgsched.jobs (name, task, cron) VALUES ('yearly', 'tick', '0 0 0 1 1 *')")
    beat = fleet.beat()
    fleet.wait_leader([beat])
    fleet.wait_beats_listening(1)
    with psycopg.connect(fleet.dsn) as blocker:  # a transaction: holds the row lock until rollback
        blocker.execute("SELECT * FROM pgsched.beat_leader FOR UPDATE")
        conn.execute("UPDATE pgsched.jobs SET enabled = true")  # a definition change: NOTIFY wakes the leader
        fleet.wait_until(
            lambda: scalar(
                conn,
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND query LIKE 'UPDATE pgsched.beat_leader%%'",
            ),
            10,
            "the leader's heartbeat to wait for the row lock",
        )
        beat.send(signal.SIGTERM)
        # Delivered means handled: its C handler wakes the idle event loop, which runs the stop
        # request while the heartbeat still waits for the row lock.
        fleet.wait_until(lambda: not beat.signal_pending(signal.SIGTERM), 5, "the beat to receive the SIGTERM")
        blocker.rollback()
        released = time.monotonic()
    assert beat.wait_exit(10) == 0, beat.log()[-3000:]
    stopped_in = time.monotonic() - released
    assert "resigned" in beat.log(), beat.log()[-3000:]
    assert leader_pid(conn) is None
    assert stopped_in < 2.0, f"the leader exited {stopped_in:.2f}s after its round could finish"


# ---- 4. a beat hosted by workers


def test_two_workers_with_beat_run_each_fire_time_once(fleet: Fleet, conn: psycopg.Connection[Any]) -> None:
    conn.execute(CREATE_EXECUTIONS)
    job = every_second_job(conn, "record-tick", task="record", args={"key": "tick"})
    workers = [fleet.worker("--beat", "--lock-interval", str(LOCK_INTERVAL_S)) for _ in range(2)]
    ids = fleet.wait_until(
        lambda: (
            dict(conn.execute("SELECT pid, id FROM pgsched.workers").fetchall())
            if scalar(conn, "SELECT count(*) FROM pgsched.workers") == 2
            else None
        ),
        20,
        "2 workers to register",
    )
    worker_ids = {ids[w.pid] for w in workers}
    fleet.wait_leader(workers)
    fleet.wait_until(
        lambda: (
            scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE job_id = %s AND status = 'succeeded'", (job,))
            >= 6
        ),
        15,
        "6 runs to succeed",
    )
    conn.execute("UPDATE pgsched.jobs SET enabled = false WHERE id = %s", (job,))
    fleet.wait_until(
        lambda: (
            scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE job_id = %s AND status <> 'succeeded'", (job,))
            == 0
        ),
        15,
        "every run to succeed",
    )

    rows = conn.execute(
        "SELECT scheduled_for, status::text, attempt, worker_id FROM pgsched.runs_all"
        " WHERE job_id = %s ORDER BY scheduled_for",
        (job,),
    ).fetchall()
    times = [r[0] for r in rows]
    assert_each_second_once(times, covering=(times[0], times[-1]))
    assert {(status, attempt) for _, status, attempt, _ in rows} == {("succeeded", 1)}
    assert {r[3] for r in rows} <= worker_ids
    executions = conn.execute("SELECT pid FROM executions WHERE key = 'tick'").fetchall()
    assert len(executions) == len(rows), f"{len(executions)} executions of {len(rows)} runs"
    assert {pid for (pid,) in executions} <= {w.pid for w in workers}

    for proc in workers:
        proc.send(signal.SIGTERM)
    for proc in workers:
        assert proc.wait_exit(15) == 0, proc.log()[-3000:]
    assert leader_pid(conn) is None
    assert scalar(conn, "SELECT count(*) FROM pgsched.workers") == 0


# ---- 5. NOTIFY wakes the leader


def test_a_job_inserted_by_plain_sql_is_picked_up_by_the_sleeping_leader_within_a_second(
    fleet: Fleet, conn: psycopg.Connection[Any]
) -> None:
    """With no job due, the leader sleeps ``max_sleep_s`` (5 s): only the NOTIFY of the jobs
    trigger makes it see a new row (and give it its first fire time) this fast."""
    beat = fleet.beat()
    fleet.wait_leader([beat])
    fleet.wait_beats_listening(1)
    # The leader's first round ends with job_next_due_in, then it sleeps: measure from there.
    fleet.wait_until(
        lambda: scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND state = 'idle' AND query = %s",
            (queries["job_next_due_in"],),
        ),
        10,
        "the leader to end its first round",
    )

    pickups = []
    for i in range(3):
        # A yearly job: assigning its next_run_at is the only thing the leader does with it.
        inserted = time.monotonic()
        job = scalar(
            conn,
            "INSERT INTO pgsched.jobs (name, task, cron) VALUES (%s, 'tick', '0 0 0 1 1 *') RETURNING id",
            (f"yearly-{i}",),
        )
        fleet.wait_until(
            lambda job=job: scalar(conn, "SELECT next_run_at FROM pgsched.jobs WHERE id = %s", (job,)),
            10,
            f"the leader to schedule yearly-{i}",
        )
        pickups.append(time.monotonic() - inserted)
    assert max(pickups) < 1.0, f"seconds from insert to next_run_at: {pickups}"

    inserted_at = db_now(conn)
    job = scalar(
        conn,
        "INSERT INTO pgsched.jobs (name, task, cron) VALUES ('every-second', 'tick', %s) RETURNING id",
        (EVERY_SECOND,),
    )
    first = fleet.wait_until(lambda: fired(conn, job), 10, "the first run of the SQL-inserted job")[0]
    assert first[1] - inserted_at < timedelta(seconds=2.2), f"first run created {first[1] - inserted_at} after insert"
    assert first[0] > inserted_at, "the first fire time must follow the insert"

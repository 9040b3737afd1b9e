"""How late does the beat fire, and how long is nobody firing when its leader dies?

    python -m benchmarks.beat [--jobs 100] [--seconds 30] [--lock-interval 0.5] [--dsn SERVER_DSN]

N jobs fire every second (cron ``* * * * * *``) under one `pgsched beat` leader process, with
one follower process waiting for the lock. No worker: a fire is a run row, which is all this
measures. (a) Lateness: each run's ``created_at`` (the firing transaction's clock) minus its
``scheduled_for``, over ``--seconds`` fire times of every job. (b) Failover: the leader is
SIGKILLed 0.1 s before a fire time; measured from the kill, by the database's clock, to the
follower's row in ``pgsched.beat_leader`` and to the first run it creates (the fire time that
came due during the outage, within the misfire grace, so it must still fire). Afterwards
every (job, fire time) from the first to the last must exist exactly once. The last line
printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import psycopg

from benchmarks._server import fresh_database, server_dsn
from pgsched.jobs import JobSpec, upsert_job
from pgsched.schedule import Schedule

ROOT = Path(__file__).resolve().parent.parent
EVERY_SECOND = "* * * * * *"  # 6 fields: seconds first
KILL_BEFORE_FIRE_S = 0.1


class Beats:
    """`pgsched beat` processes with their logs in a temporary directory; all killed on exit."""

    def __init__(self, dsn: str, logs: Path, lock_interval: float, misfire_grace: float) -> None:
        self.dsn, self.logs = dsn, logs
        self.options = ["--lock-interval", str(lock_interval), "--misfire-grace", str(misfire_grace)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.logs / f"beat-{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pgsched.cli.main", "beat", "--dsn", self.dsn, *self.options],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        return proc

    def log_tails(self) -> str:
        return "\n".join(
            f"--- beat pid {p.pid} (exit code {p.poll()}):\n"
            + (self.logs / f"beat-{i}.log").read_text(errors="replace")[-3000:]
            for i, p in enumerate(self.procs)
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@contextlib.contextmanager
def beats(dsn: str, lock_interval: float, misfire_grace: float) -> Iterator[Beats]:
    with tempfile.TemporaryDirectory(prefix="pgsched-bench-beat-") as tmp:
        spawner = Beats(dsn, Path(tmp), lock_interval, misfire_grace)
        try:
            yield spawner
        except BaseException:
            print(spawner.log_tails(), file=sys.stderr)
            raise
        finally:
            spawner.kill_all()


def scalar(conn: psycopg.Connection, sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def wait_for(
    conn: psycopg.Connection,
    sql: str,
    params: Any,
    timeout_s: float,
    what: str,
    procs: list[subprocess.Popen[bytes]],
    interval_s: float = 0.005,
) -> Any:
    """Poll ``sql`` until its value is truthy; fail if a beat exits or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = scalar(conn, sql, params)
        if value:
            return value
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"beat pid(s) {dead} exited while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def db_clock_offset(conn: psycopg.Connection) -> float:
    """Database clock minus this machine's, in seconds (from the midpoint of a round trip)."""
    before = time.time()
    db: datetime = scalar(conn, "SELECT clock_timestamp()")
    return db.timestamp() - (before + time.time()) / 2


def create_jobs(conn: psycopg.Connection, count: int) -> datetime:
    """``count`` per-second jobs in one transaction; returns their common first fire time."""
    now = datetime.now(timezone.utc)
    with conn.transaction():
        for i in range(count):
            upsert_job(conn, JobSpec(name=f"bench-{i:04d}", task="noop", schedule=Schedule(cron=EVERY_SECOND)), now=now)
    firsts = conn.execute("SELECT DISTINCT next_run_at FROM pgsched.jobs").fetchall()
    assert len(firsts) == 1, firsts
    return firsts[0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100, help="jobs, each firing every second")
    parser.add_argument("--seconds", type=int, default=30, help="fire times per job measured for lateness")
    parser.add_argument("--lock-interval", type=float, default=0.5, help="the beats' --lock-interval")
    parser.add_argument("--misfire-grace", type=float, default=5.0, help="the beats' --misfire-grace")
    parser.add_argument(
        "--dsn", help="a server to create the benchmark database on (default: a throwaway embedded one)"
    )
    args = parser.parse_args()
    if args.jobs < 1 or args.seconds < 1:
        parser.error("--jobs and --seconds must be at least 1")

    with (
        server_dsn(args.dsn) as server,
        fresh_database(server) as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
        beats(dsn, args.lock_interval, args.misfire_grace) as fleet,
    ):
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'fsync', 'synchronous_commit')"
            ).fetchall()
        )
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"PostgreSQL {settings['server_version']} fsync={settings['fsync']} "
            f"synchronous_commit={settings['synchronous_commit']}",
            flush=True,
        )
        print(
            f"{args.jobs} jobs firing every second for {args.seconds}s; one leader + one follower beat, "
            f"lock interval {args.lock_interval}s, misfire grace {args.misfire_grace}s",
            flush=True,
        )

        leader = fleet.start()
        wait_for(
            conn,
            "SELECT pid = %s FROM pgsched.beat_leader",
            (leader.pid,),
            30,
            "the first beat to lead",
            fleet.procs,
            0.02,
        )
        fleet.start()
        wait_for(
            conn,
            "SELECT count(*) = 2 FROM pg_stat_activity WHERE datname = current_database()"
            " AND query ILIKE 'LISTEN pgsched_jobs%%'",
            None,
            30,
            "both beats to listen",
            fleet.procs,
            0.02,
        )

        # (a) lateness: fire times first .. last of every job, under a leader that stays.
        first = create_jobs(conn, args.jobs)
        last = first + timedelta(seconds=args.seconds - 1)
        wait_for(
            conn,
            "SELECT count(*) >= %s FROM pgsched.runs_all WHERE scheduled_for = %s",
            (args.jobs, last),
            args.seconds + 30,
            "the last measured fire time of every job",
            fleet.procs,
            0.05,
        )
        p50, p99, worst = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),"
            " max(ms) FROM (SELECT extract(epoch FROM created_at - scheduled_for)::float8 * 1000 AS ms"
            " FROM pgsched.runs_all WHERE scheduled_for BETWEEN %s AND %s) AS lateness",
            (first, last),
        ).fetchone()  # type: ignore[misc]
        print(
            f"lateness (run created_at - scheduled_for): p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms "
            f"over {args.jobs * args.seconds} fire times",
            flush=True,
        )

        # (b) failover: SIGKILL the leader just before a fire time, which then comes due in the outage.
        offset = db_clock_offset(conn)
        due = datetime.fromtimestamp(time.time() + offset, timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
        time.sleep(max(0.0, due.timestamp() - KILL_BEFORE_FIRE_S - offset - time.time()))
        killed_at = datetime.fromtimestamp(time.time() + offset, timezone.utc)
        leader.send_signal(signal.SIGKILL)
        leader.wait()
        survivors = [p for p in fleet.procs if p is not leader]
        new_since = wait_for(
            conn,
            "SELECT since FROM pgsched.beat_leader WHERE pid <> %s",
            (leader.pid,),
            args.lock_interval + 30,
            "the follower to lead",
            survivors,
        )
        first_new = wait_for(
            conn,
            "SELECT min(created_at) FROM pgsched.runs_all WHERE created_at >= %s",
            (new_since,),
            30,
            "the new leader's first run",
            survivors,
        )
        all_due = wait_for(
            conn,
            "SELECT max(created_at) FROM pgsched.runs_all WHERE scheduled_for = %s HAVING count(*) >= %s",
            (due, args.jobs),
            30,
            "every job's fire time that came due in the outage",
            survivors,
        )
        leader_gap = (new_since - killed_at).total_seconds()
        first_run_gap = (first_new - killed_at).total_seconds()
        all_due_gap = (all_due - killed_at).total_seconds()
        print(
            f"failover (SIGKILL {KILL_BEFORE_FIRE_S * 1000:.0f} ms before a fire time, lock interval "
            f"{args.lock_interval}s): new leader row after {leader_gap:.3f}s, its first run after "
            f"{first_run_gap:.3f}s, all {args.jobs} runs of the fire time due in the outage after {all_due_gap:.3f}s",
            flush=True,
        )

        # Keep going under the new leader, then stop it and count every (job, fire time).
        end = due + timedelta(seconds=2)
        wait_for(
            conn,
            "SELECT count(*) >= %s FROM pgsched.runs_all WHERE scheduled_for = %s",
            (args.jobs, end),
            30,
            "2 more fire times under the new leader",
            survivors,
            0.05,
        )
        for proc in survivors:
            proc.terminate()
        for proc in survivors:
            if proc.wait(30) != 0:
                raise RuntimeError(f"beat pid {proc.pid} exited with {proc.returncode} after SIGTERM")
        runs, distinct, expected, missing = conn.execute(
            "SELECT (SELECT count(*) FROM pgsched.runs_all WHERE scheduled_for BETWEEN %(first)s AND %(end)s),"
            " (SELECT count(DISTINCT (job_id, scheduled_for)) FROM pgsched.runs_all"
            "  WHERE scheduled_for BETWEEN %(first)s AND %(end)s),"
            " (SELECT count(*) FROM pgsched.jobs, generate_series(%(first)s, %(end)s, interval '1 second')),"
            " (SELECT count(*) FROM pgsched.jobs AS j,"
            " generate_series(%(first)s, %(end)s, interval '1 second') AS s(at)"
            "  WHERE NOT EXISTS (SELECT FROM pgsched.runs_all AS r WHERE r.job_id = j.id AND r.scheduled_for = s.at))",
            {"first": first, "end": end},
        ).fetchone()  # type: ignore[misc]
        duplicates = runs - distinct
        print(
            f"runs: {runs} of {expected} expected (fire times {first:%H:%M:%S}..{end:%H:%M:%S} x {args.jobs} jobs, "
            f"across the failover); duplicates {duplicates}, missing {missing}",
            flush=True,
        )

    figures = {
        "lateness_p50_ms": round(p50, 2),
        "lateness_p99_ms": round(p99, 2),
        "lateness_max_ms": round(worst, 2),
        "failover_gap_s": round(first_run_gap, 3),
        "failover_leader_gap_s": round(leader_gap, 3),
        "failover_all_due_fired_s": round(all_due_gap, 3),
        "lock_interval_s": args.lock_interval,
        "misfire_grace_s": args.misfire_grace,
        "jobs": args.jobs,
        "seconds": args.seconds,
        "runs": runs,
        "duplicates": duplicates,
        "missing": missing,
        "postgres": settings["server_version"],
        "cores": os.cpu_count(),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""A queue's max_running across real worker processes (issue #14): however many workers race
for the queue, no more of its runs run at once than the limit, and a SIGKILLed worker's slots
come back when its runs' leases expire. The tasks record their start and end in the side table
``executions`` (tests/process_app.py): an end is recorded before its run completes, and so
before its slot can be claimed again, so overlaps of [start, end] count real executions."""

from __future__ import annotations

import signal
from typing import Any

import psycopg

from pgsched.claim_cursor import FROM_THE_START
from pgsched.queue_settings import set_queue_settings
from pgsched.sql import queries
from tests.support.db import scalar
from tests.support.workers import Workers, insert_run

RUNNING_IN_LIMITED = "SELECT count(*) FROM pgsched.runs_all WHERE queue = 'limited' AND status = 'running'"
SUCCEEDED_IN_LIMITED = "SELECT count(*) FROM pgsched.runs_all WHERE queue = 'limited' AND status = 'succeeded'"

# The most executions in progress at one instant: +1 at each start, -1 at each end, in time
# order (at the same instant an end first: it was recorded before the start it made room for).
MAX_OVERLAP = """
SELECT coalesce(max(in_progress), 0) FROM (
    SELECT sum(CASE event WHEN 'start' THEN 1 ELSE -1 END) OVER (ORDER BY at, event) AS in_progress
    FROM executions WHERE event IN ('start', 'end') AND key LIKE %s
) AS steps
"""


def test_max_running_holds_while_eight_worker_processes_race_for_one_queue(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    limit, runs = 3, 40
    set_queue_settings(conn, "limited", max_running=limit)
    for _ in range(8):
        workers.start("--queues", "limited", "--concurrency", "4")
    for i in range(runs):
        insert_run(conn, "slow", {"key": f"race-{i}", "seconds": 0.15}, queue="limited")

    samples: list[int] = []

    def drained() -> bool:
        samples.append(scalar(conn, RUNNING_IN_LIMITED))
        return scalar(conn, SUCCEEDED_IN_LIMITED) == runs

    workers.wait_until(drained, 90, f"all {runs} runs of the limited queue to succeed", poll=0.005)
    assert max(samples) == limit, f"running counts sampled while 8 workers raced: max {max(samples)}"
    assert scalar(conn, MAX_OVERLAP, ("race-%",)) == limit  # at the limit, never over it
    assert (
        scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all WHERE queue = 'limited'") == 1
    )  # none held back used one


def test_a_sigkilled_workers_slots_come_back_when_its_leases_expire(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    set_queue_settings(conn, "limited", max_running=2)
    victim = workers.start("--queues", "limited", "--concurrency", "4", "--lease", "3")
    held = [insert_run(conn, "slow", {"key": f"held-{i}", "seconds": 60}, queue="limited") for i in range(2)]
    workers.wait_until(lambda: scalar(conn, RUNNING_IN_LIMITED) == 2, 15, "the victim to run both slots' runs")
    victim.popen.kill()
    assert victim.popen.wait(timeout=10) == -signal.SIGKILL
    leases_expire = scalar(conn, "SELECT max(lease_expires_at) FROM pgsched.runs_all WHERE id = ANY(%s)", (held,))

    survivor = workers.start("--queues", "limited", "--concurrency", "4")
    # Ahead of the victim's runs in claim order: the survivor's sweep may put those back in the
    # queue (run_at now) before these are inserted, and they would take both slots for 60 s.
    waiting = [insert_run(conn, "record", {"key": f"waiting-{i}"}, queue="limited", priority=-1) for i in range(2)]
    workers.wait_until(
        lambda: (
            scalar(
                conn, "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'", (waiting,)
            )
            == 2
        ),
        30,
        "the waiting runs to take the slots the dead worker's leases held",
        alive=[survivor],
    )
    first_start = scalar(conn, "SELECT min(started_at) FROM pgsched.runs_all WHERE id = ANY(%s)", (waiting,))
    assert first_start >= leases_expire, "a run started while the dead worker's leases still held both slots"
    assert scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all WHERE id = ANY(%s)", (waiting,)) == 1


def test_pausing_a_queue_under_load_stops_its_claims_at_once_and_resuming_drains_it(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    runs = 120
    for _ in range(4):
        workers.start("--queues", "limited,other", "--concurrency", "4")
    for i in range(runs):
        insert_run(conn, "slow", {"key": f"load-{i}", "seconds": 0.05}, queue="limited")
    workers.wait_until(lambda: scalar(conn, SUCCEEDED_IN_LIMITED) >= 10, 30, "the drain to be under way")

    set_queue_settings(conn, "limited", paused=True)
    paused_at = scalar(conn, "SELECT clock_timestamp()")  # after the commit: every later claim sees it
    workers.wait_until(lambda: scalar(conn, RUNNING_IN_LIMITED) == 0, 15, "the runs in flight to finish")
    # The workers still claim (another queue's run starts), just not from the paused one.
    workers.run_until("record", {"key": "other"}, "succeeded", 10, "a run of another queue", queue="other")
    started_since = "SELECT count(*) FROM pgsched.runs_all WHERE queue = 'limited' AND started_at > %s"
    assert scalar(conn, started_since, (paused_at,)) == 0
    assert scalar(conn, SUCCEEDED_IN_LIMITED) < runs

    set_queue_settings(conn, "limited", paused=False)
    workers.wait_until(lambda: scalar(conn, SUCCEEDED_IN_LIMITED) == runs, 60, "the resumed queue to drain")


def test_the_limited_claim_returns_a_run_as_run_claim_does(conn: psycopg.Connection[Any]) -> None:
    """Both feed ClaimedRun: a column run_claim gains (queue, trace context, ...) must come from
    run_claim_limited too, or runs of a limited queue would start without it."""
    set_queue_settings(conn, "limited", max_running=5)
    for queue in ("limited", "open"):
        insert_run(conn, "record", {"key": queue}, queue=queue)
    params = {"limit": 5, "worker_id": 1, "lease_s": 30.0, "now": None, "only_tasks": None, "skip_tasks": None}
    open_claim = conn.execute(queries["run_claim"], {**params, "queues": ["open"], **FROM_THE_START})
    limits = {"queues": ["limited"], "task": None, "queue_locked": True, "skip_flush": False}
    limited_claim = conn.execute(queries["run_claim_limited"], {**params, **limits})
    open_columns = [column.name for column in open_claim.description or ()]
    limited_columns = [column.name for column in limited_claim.description or ()][8:]
    assert limited_columns == [f"run_{name}" for name in open_columns]
    assert limited_claim.fetchall()[0][8 + open_columns.index("queue")] == "limited"

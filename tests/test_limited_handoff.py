"""The hand-off of a limited queue's slots (issue #14, schema 0050): while the queue's
max_running holds runs back, a worker writes the completion of its runs together with the
queue's next claim, in one transaction (run_complete_and_claim_limited). The completion stays
fenced (only what this worker still holds at that attempt changes, and only that frees a
slot), the claim stays within the limit, and a SIGKILLed worker's slots, hand-offs or not,
come back only when its leases expire."""

from __future__ import annotations

import signal
from datetime import datetime
from typing import Any

import psycopg

from pgsched.queue_settings import set_queue_settings
from pgsched.sql import queries
from tests.support.db import scalar
from tests.support.workers import Workers, insert_run

RUNNING_IN_LIMITED = "SELECT count(*) FROM pgsched.runs_all WHERE queue = 'limited' AND status = 'running'"
SUCCEEDED_IN_LIMITED = "SELECT count(*) FROM pgsched.runs_all WHERE queue = 'limited' AND status = 'succeeded'"
# Runs that started in the transaction that ended another run of the same worker: their
# started_at is that transaction's now(), as the ended run's finished_at.
HANDED_OFF = """
SELECT count(*) FROM pgsched.runs_all AS next
WHERE next.queue = 'limited' AND (%s::bigint IS NULL OR next.worker_id = %s)
  AND EXISTS (SELECT FROM pgsched.runs_all AS ended
              WHERE ended.queue = 'limited' AND ended.worker_id = next.worker_id
                AND ended.finished_at = next.started_at)
"""
MAX_OVERLAP = """
SELECT coalesce(max(in_progress), 0) FROM (
    SELECT sum(CASE event WHEN 'start' THEN 1 ELSE -1 END) OVER (ORDER BY at, event) AS in_progress
    FROM executions WHERE event IN ('start', 'end') AND key LIKE %s
) AS steps
"""


def register(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        queries["worker_register"], {"host": "test-host", "pid": 1, "queues": ["limited"], "concurrency": 10}
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim_params(worker_id: int, limit: int = 5) -> dict[str, Any]:
    return {
        "queues": ["limited"],
        "task": None,
        "queue_locked": True,
        "limit": limit,
        "worker_id": worker_id,
        "lease_s": 30.0,
        "now": None,
        "only_tasks": None,
        "skip_tasks": None,
        "skip_flush": False,
    }


def claim(conn: psycopg.Connection[Any], worker_id: int, limit: int = 5) -> list[tuple[int, int]]:
    """The limited queue's claim by ``worker_id``: (id, attempt) of each run it took."""
    rows = conn.execute(queries["run_claim_limited"], claim_params(worker_id, limit)).fetchall()
    return [(row[8], row[11]) for row in rows if row[8] is not None]


def complete_and_claim(
    conn: psycopg.Connection[Any], worker_id: int, ended: list[tuple[int, int]], limit: int = 5
) -> tuple[list[int], bool, list[int]]:
    """The hand-off: (the ids the completion changed, whether the claim had the row, the ids claimed)."""
    params = {
        **claim_params(worker_id, limit),
        "ids": [run_id for run_id, _ in ended],
        "attempts": [attempt for _, attempt in ended],
        "statuses": ["succeeded"] * len(ended),
        "results": [None] * len(ended),
        "errors": [None] * len(ended),
        "retry_delays_s": [0.0] * len(ended),
        "tenant": None,
        "after_priority": None,
        "after_run_at": None,
        "after_id": None,
        "from_run_at": None,
    }
    rows = conn.execute(queries["run_complete_and_claim_limited"], params).fetchall()
    return sorted(rows[0][0]), rows[0][1], [row[9] for row in rows if row[9] is not None]


def started_and_finished(conn: psycopg.Connection[Any], run_id: int) -> tuple[datetime | None, datetime | None]:
    row = conn.execute("SELECT started_at, finished_at FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_completion_hands_its_slot_to_the_next_run_in_its_own_transaction(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "limited", max_running=1)
    first, second, third = (insert_run(conn, "record", {"key": str(i)}, queue="limited") for i in range(3))
    worker = register(conn)
    assert claim(conn, worker) == [(first, 1)]

    completed, locked, claimed = complete_and_claim(conn, worker, [(first, 1)])

    assert (completed, locked, claimed) == ([first], True, [second])  # the count saw the completion
    assert started_and_finished(conn, second)[0] == started_and_finished(conn, first)[1]
    assert scalar(conn, RUNNING_IN_LIMITED) == 1
    assert scalar(conn, "SELECT status::text FROM pgsched.runs WHERE id = %s", (third,)) == "queued"


def test_a_completion_of_a_run_this_worker_no_longer_holds_frees_no_slot(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "limited", max_running=1)
    held = insert_run(conn, "record", {"key": "held"}, queue="limited")
    waiting = insert_run(conn, "record", {"key": "waiting"}, queue="limited")
    late, rescuer = register(conn), register(conn)
    assert claim(conn, late) == [(held, 1)]
    # The late worker's lease ran out: the rescue put the run back and the rescuer claimed it.
    conn.execute(
        "UPDATE pgsched.runs SET status = 'queued', lease_expires_at = NULL, worker_id = NULL WHERE id = %s", (held,)
    )
    assert claim(conn, rescuer, limit=1) == [(held, 2)]

    completed, locked, claimed = complete_and_claim(conn, late, [(held, 1)])

    assert (completed, locked, claimed) == ([], True, [])  # the rescuer's attempt still holds the slot
    state = conn.execute("SELECT status::text, attempt, worker_id FROM pgsched.runs WHERE id = %s", (held,))
    assert state.fetchone() == ("running", 2, rescuer)
    assert scalar(conn, "SELECT status::text FROM pgsched.runs WHERE id = %s", (waiting,)) == "queued"


def test_a_settings_row_held_in_a_long_transaction_does_not_stop_a_completion(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    set_queue_settings(conn, "limited", max_running=1)
    held = insert_run(conn, "record", {"key": "held"}, queue="limited")
    insert_run(conn, "record", {"key": "waiting"}, queue="limited")
    worker = register(conn)
    assert claim(conn, worker) == [(held, 1)]
    with psycopg.connect(dsn) as editor:  # an operator's UPDATE of the settings, not committed yet
        editor.execute("UPDATE pgsched.queues SET burst = burst WHERE name = 'limited'")
        conn.execute("SET statement_timeout = '10s'")  # a completion that waited would fail here

        completed, locked, claimed = complete_and_claim(conn, worker, [(held, 1)])

        editor.rollback()
    assert (completed, locked, claimed) == ([held], False, [])  # written; the claim is the fetcher's again
    assert scalar(conn, "SELECT current_setting('lock_timeout')") == "0"  # the wait's bound was local


def test_limited_slots_pass_from_run_to_run_across_worker_processes_and_never_exceed_the_limit(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    limit, runs = 3, 60
    set_queue_settings(conn, "limited", max_running=limit)
    for i in range(runs):
        insert_run(conn, "slow", {"key": f"pass-{i}", "seconds": 0.05}, queue="limited")
    for _ in range(4):
        workers.start("--queues", "limited", "--concurrency", "4")

    workers.wait_until(lambda: scalar(conn, SUCCEEDED_IN_LIMITED) == runs, 90, f"all {runs} runs to succeed")

    assert scalar(conn, MAX_OVERLAP, ("pass-%",)) == limit
    assert scalar(conn, HANDED_OFF, (None, None)) > 0  # slots went from run to run in one transaction
    assert scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all WHERE queue = 'limited'") == 1


def test_a_sigkilled_worker_that_handed_slots_off_keeps_them_only_until_its_leases_expire(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    limit, runs = 2, 40
    set_queue_settings(conn, "limited", max_running=limit)
    for i in range(runs):
        insert_run(conn, "slow", {"key": f"kill-{i}", "seconds": 0.1}, queue="limited")
    victim = workers.start("--queues", "limited", "--concurrency", "4", "--lease", "3", env={"PGAPPNAME": "victim"})
    survivor = workers.start("--queues", "limited", "--concurrency", "4")
    assert victim.worker_id is not None
    workers.wait_until(
        lambda: (
            scalar(conn, HANDED_OFF, (victim.worker_id, victim.worker_id)) > 0
            and scalar(
                conn,
                "SELECT count(*) FROM pgsched.runs WHERE worker_id = %s AND status = 'running'",
                (victim.worker_id,),
            )
        ),
        30,
        "the victim to hand a slot off and hold one",
    )
    victims_connections = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'victim'"
    assert scalar(conn, victims_connections) > 0
    victim.popen.kill()
    assert victim.popen.wait(timeout=10) == -signal.SIGKILL
    # A statement the victim sent just before it died still commits (a completion, which ends
    # its runs at attempt 1): read what it holds once its server connections have gone.
    workers.wait_until(
        lambda: scalar(conn, victims_connections) == 0,
        30,
        "the victim's connections to close",
    )
    killed_at = scalar(conn, "SELECT clock_timestamp()")
    victims = conn.execute(
        "SELECT id, lease_expires_at FROM pgsched.runs WHERE worker_id = %s AND status = 'running'",
        (victim.worker_id,),
    ).fetchall()

    workers.wait_until(
        lambda: scalar(conn, SUCCEEDED_IN_LIMITED) == runs, 90, f"all {runs} runs to succeed", alive=[survivor]
    )

    assert victims, "the victim held no slot when it was killed"
    events = conn.execute(
        "SELECT at, event FROM executions WHERE pid = %s AND event IN ('start', 'end') ORDER BY at, event",
        (survivor.pid,),
    ).fetchall()
    in_progress = 0
    for at, event in events:
        in_progress += 1 if event == "start" else -1
        still_held = sum(1 for _, lease in victims if lease > at)  # a claim's count includes these
        if at >= killed_at:
            assert in_progress <= limit - still_held, f"at {at}: a dead worker's slot was given away before its lease"
    assert scalar(conn, "SELECT min(attempt) FROM pgsched.runs_all WHERE id = ANY(%s)", ([v[0] for v in victims],)) == 2


def test_a_stopping_worker_hands_no_slot_to_a_next_run(workers: Workers, conn: psycopg.Connection[Any]) -> None:
    """SIGTERM: the grace lets the runs in hand finish; their completions must not claim more
    (a hand-off made then would keep the worker draining the queue until its grace ran out)."""
    limit, runs = 2, 40
    set_queue_settings(conn, "limited", max_running=limit)
    for i in range(runs):
        insert_run(conn, "slow", {"key": f"stop-{i}", "seconds": 0.2}, queue="limited")
    worker = workers.start("--queues", "limited", "--concurrency", "4", "--grace", "30")
    workers.wait_until(
        lambda: scalar(conn, HANDED_OFF, (worker.worker_id, worker.worker_id)) > 0, 30, "a first hand-off"
    )
    stopped_at = scalar(conn, "SELECT clock_timestamp()")
    worker.popen.send_signal(signal.SIGTERM)
    assert worker.popen.wait(timeout=30) == 0

    started_after = "SELECT count(*) FROM pgsched.runs_all WHERE worker_id = %s AND started_at > %s"
    assert scalar(conn, started_after, (worker.worker_id, stopped_at)) == 0
    assert scalar(conn, RUNNING_IN_LIMITED) == 0  # what it held finished within its grace
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs WHERE queue = 'limited' AND status = 'queued'") > 0

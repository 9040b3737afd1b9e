"""Multi-process tests: real `pgsched worker` processes against a real PostgreSQL.

Every worker runs ``tests.process_app:app``; its tasks record each execution into the side
table ``executions`` (key, event, pid, at), which is what these tests read to see who ran what
and when (the harness: tests/support/workers.py, the ``workers`` fixture in conftest).
Synchronisation is by polling the database against a deadline, never by sleeping; every
process a test starts is killed and reaped in the fixture teardown.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import psycopg
import pytest

from pgsched import App
from tests.support.db import scalar
from tests.support.workers import Workers, events, insert_run, registered, run_row, status_of

pytestmark = pytest.mark.slow


# ---- 1. exclusivity


def test_four_workers_drain_5000_runs_each_executed_exactly_once(
    workers: Workers, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    pool = [workers.start("--concurrency", "20", "--lease", "30") for _ in range(4)]
    pid_of = {w.worker_id: w.pid for w in pool}

    app = App(dsn)
    try:
        ids = app.enqueue_many("record", [{"key": f"a{i}"} for i in range(4000)])
        ids += app.enqueue_many("record_sync", [{"key": f"s{i}"} for i in range(1000)])
    finally:
        app.close()
    assert len(set(ids)) == 5000

    workers.wait_until(
        lambda: scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'") == 5000,
        60,
        "5,000 runs to succeed",
    )

    assert conn.execute("SELECT status::text, attempt, count(*) FROM pgsched.runs_all GROUP BY 1, 2").fetchall() == [
        ("succeeded", 1, 5000)
    ]
    # Exactly once: one execution per key, 5,000 keys, none missing or extra.
    assert scalar(conn, "SELECT count(*) FROM executions") == 5000
    assert scalar(conn, "SELECT count(DISTINCT key) FROM executions") == 5000
    assert (
        scalar(
            conn,
            "SELECT count(*) FROM pgsched.runs_all r LEFT JOIN executions e ON e.key = r.args->>'key'"
            " WHERE e.key IS NULL",
        )
        == 0
    )
    # Each run was executed by the very process whose worker_id its row holds.
    rows = conn.execute(
        "SELECT r.worker_id, e.pid FROM pgsched.runs_all r JOIN executions e ON e.key = r.args->>'key'"
    ).fetchall()
    mismatched = [(worker_id, pid) for worker_id, pid in rows if pid_of.get(worker_id) != pid]
    assert mismatched == []
    per_worker = dict(conn.execute("SELECT worker_id, count(*) FROM pgsched.runs_all GROUP BY 1").fetchall())
    assert set(per_worker) == set(pid_of), f"runs per worker: {per_worker}"

    for worker in pool:
        worker.signal(signal.SIGTERM)
    for worker in pool:
        assert worker.wait_exit(15) == 0, worker.log()[-3000:]
    assert scalar(conn, "SELECT count(*) FROM pgsched.workers") == 0


# ---- 2. wake-up


def test_idle_worker_starts_a_run_inserted_by_plain_sql_within_a_second(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--poll-interval", "30")
    # Settle: a first run completes, so the worker is past its start-up and idle on its poll wait.
    workers.run_until("record", {"key": "warm-up"}, "succeeded", 35, "the warm-up run")

    latencies = []
    for i in range(5):
        # clock_timestamp() is read just before the commit, so the measured latency can only be longer.
        run_id, inserted_at = conn.execute(
            "INSERT INTO pgsched.runs (task, args) VALUES ('record', jsonb_build_object('key', %s::text))"
            " RETURNING id, clock_timestamp()",
            (f"wake-{i}",),
        ).fetchone()
        executed_at = workers.wait_until(
            lambda i=i: scalar(conn, "SELECT at FROM executions WHERE key = %s", (f"wake-{i}",)),
            10,
            f"run wake-{i} to execute (poll interval is 30s: only a notification wakes the worker this fast)",
        )
        latencies.append((executed_at - inserted_at).total_seconds())
        workers.wait_until(lambda run_id=run_id: status_of(conn, run_id) == "succeeded", 10, f"run wake-{i} to succeed")
    assert max(latencies) < 1.0, f"start latencies after insert: {latencies}"
    assert registered(conn, worker)


# ---- 3. SIGKILL mid-run: the lease sweep of another worker rescues the run


def test_sigkilled_workers_run_is_rescued_by_another_workers_lease_sweep(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    pair = [workers.start("--lease", "2", "--concurrency", "4") for _ in range(2)]
    run_id = insert_run(conn, "slow", {"key": "k", "seconds": 2.0})

    started = workers.wait_until(lambda: events(conn, "k"), 10, "the slow run to start")
    assert started[0][0] == "start"
    victim = next(w for w in pair if w.pid == started[0][1])
    survivor = next(w for w in pair if w is not victim)
    assert run_row(conn, run_id)["worker_id"] == victim.worker_id
    victim.popen.kill()
    assert victim.popen.wait(timeout=10) == -signal.SIGKILL

    workers.wait_until(
        lambda: status_of(conn, run_id) == "succeeded", 20, "the rescued run to succeed", alive=[survivor]
    )
    row = run_row(conn, run_id)
    assert row["attempt"] == 2
    assert row["worker_id"] == survivor.worker_id
    assert [(e["type"], e["attempt"], e["worker_id"]) for e in row["errors"]] == [("LeaseExpired", 1, victim.worker_id)]
    assert events(conn, "k") == [("start", victim.pid), ("start", survivor.pid), ("end", survivor.pid)]

    # The dead worker stops heartbeating: the sweep forgets it (stale after 4 leases); the survivor stays.
    workers.wait_until(
        lambda: not registered(conn, victim), 20, "the killed worker's row to be removed", alive=[survivor]
    )
    assert registered(conn, survivor)


REFUSE_SUCCESSES = """
CREATE FUNCTION refuse_success() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the test refuses the success of run %', NEW.id;
END;
$$;
CREATE TRIGGER refuse_success BEFORE UPDATE ON pgsched.runs FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'succeeded') EXECUTE FUNCTION refuse_success();
"""


def test_a_worker_whose_completions_fail_for_good_exits_1_and_its_run_is_rescued(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    """A completion refused by the database for a reason other than a lost connection (here a
    trigger of the test's) ends the completer: the worker stops and exits 1 rather than go on
    heartbeating leases of runs it can no longer finish, and the run is rescued elsewhere."""
    conn.execute(REFUSE_SUCCESSES)
    broken = workers.start("--lease", "2", "--concurrency", "4")
    run_id = insert_run(conn, "record", {"key": "k"})
    assert broken.wait_exit(20) == 1, broken.log()[-3000:]
    assert "a background part failed" in broken.log()
    assert "the test refuses the success of run" in broken.log()
    assert status_of(conn, run_id) == "running"  # its outcome was never written

    conn.execute("DROP TRIGGER refuse_success ON pgsched.runs")
    survivor = workers.start("--lease", "2", "--concurrency", "4")
    workers.wait_until(
        lambda: status_of(conn, run_id) == "succeeded", 20, "the run to be rescued and succeed", alive=[survivor]
    )
    row = run_row(conn, run_id)
    assert (row["attempt"], row["worker_id"]) == (2, survivor.worker_id)
    assert [e["type"] for e in row["errors"]] == ["LeaseExpired"]


# ---- 4. SIGTERM: graceful stop


def test_sigterm_finishes_the_running_run_stops_claiming_and_exits_0(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--concurrency", "1", "--grace", "10")
    running = insert_run(conn, "slow", {"key": "in-flight", "seconds": 1.5})
    workers.wait_until(lambda: events(conn, "in-flight"), 10, "the slow run to start")
    waiting = insert_run(conn, "record", {"key": "waiting"})  # queued behind the only slot

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    after_signal = insert_run(conn, "record", {"key": "after-signal"})
    assert worker.wait_exit(10) == 0, worker.log()[-3000:]
    stopped_in = time.monotonic() - signalled

    assert run_row(conn, running)["status"] == "succeeded"
    assert [e for e, _ in events(conn, "in-flight")] == ["start", "end"]
    for run_id in (waiting, after_signal):
        row = run_row(conn, run_id)
        assert (row["status"], row["attempt"], row["worker_id"]) == ("queued", 0, None)
    assert scalar(conn, "SELECT count(*) FROM executions WHERE key IN ('waiting', 'after-signal')") == 0
    assert not registered(conn, worker)
    assert stopped_in < 8, f"took {stopped_in:.1f}s to stop after a 1.5s run"


def test_sigterm_releases_a_run_longer_than_the_grace_without_using_an_attempt(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    grace = 1.0
    worker = workers.start("--grace", str(grace))
    run_id = insert_run(conn, "slow", {"key": "long", "seconds": 60})
    workers.wait_until(lambda: events(conn, "long"), 10, "the long run to start")
    assert run_row(conn, run_id)["attempt"] == 1

    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(grace + 8) == 0, worker.log()[-3000:]
    stopped_in = time.monotonic() - signalled

    row = run_row(conn, run_id)
    assert (row["status"], row["attempt"], row["errors"]) == ("queued", 0, [])
    assert [e for e, _ in events(conn, "long")] == ["start"]
    assert not registered(conn, worker)
    assert grace <= stopped_in < grace + 5, f"stopped {stopped_in:.1f}s after SIGTERM with a {grace}s grace"
    assert "released back to the queue" in worker.log()


def test_second_sigterm_during_the_grace_releases_at_once(workers: Workers, conn: psycopg.Connection[Any]) -> None:
    worker = workers.start("--grace", "60", "--concurrency", "2")
    long_async = insert_run(conn, "slow", {"key": "async", "seconds": 60})
    workers.wait_until(lambda: events(conn, "async"), 10, "the long run to start")

    worker.signal(signal.SIGTERM)
    workers.wait_until(
        lambda: "stopping: waiting up to 60s" in worker.log(), 10, "the worker to start its grace period"
    )
    assert worker.popen.poll() is None
    signalled = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(10) == 0, worker.log()[-3000:]
    stopped_in = time.monotonic() - signalled

    row = run_row(conn, long_async)
    assert (row["status"], row["attempt"]) == ("queued", 0)
    assert not registered(conn, worker)
    assert stopped_in < 5, f"took {stopped_in:.1f}s to stop after the second SIGTERM"


def test_sigterm_during_a_sync_run_longer_than_the_grace_releases_it_and_exits_0(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    """A thread cannot be cancelled: the worker releases the run and leaves without waiting for it."""
    worker = workers.start("--grace", "0.5")
    run_id = insert_run(conn, "block_sync", {"key": "thread", "seconds": 60})
    workers.wait_until(lambda: events(conn, "thread"), 10, "the sync run to start")

    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(8) == 0, worker.log()[-3000:]
    row = run_row(conn, run_id)
    assert (row["status"], row["attempt"]) == ("queued", 0)
    assert not registered(conn, worker)


# ---- 5. JSON logs


def test_json_log_format_writes_one_object_per_line_for_state_changes(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--log-level", "debug", log_format="json")  # "started" lines are DEBUG
    ids = [insert_run(conn, "record", {"key": f"log-{i}"}) for i in range(3)]
    workers.wait_until(lambda: all(status_of(conn, i) == "succeeded" for i in ids), 15, "the runs to succeed")
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(10) == 0, worker.log()[-3000:]

    lines = [line for line in worker.log().splitlines() if line.strip()]
    assert lines
    entries = []
    for line in lines:
        entry = json.loads(line)  # every line is one JSON object, nothing else
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        entries.append(entry)
    messages = [e["message"] for e in entries if e.get("pid") == worker.pid]
    for run_id in ids:
        assert any(m.startswith(f"run {run_id} record started") for m in messages), messages
        assert any(m.startswith(f"run {run_id} record succeeded") for m in messages), messages
    assert any(m.startswith(f"worker {worker.worker_id} started") for m in messages), messages
    assert any(m == f"worker {worker.worker_id} stopped" for m in messages), messages


# ---- 6. poison runs


def test_worker_survives_poison_runs_and_keeps_processing_good_ones(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    worker = workers.start("--concurrency", "4")
    before = [insert_run(conn, "record", {"key": f"before-{i}"}) for i in range(5)]
    poison = {
        insert_run(conn, "no_such_task", {"key": "unknown"}): "TaskNotFound",
        insert_run(conn, "record", {"wrong": 1}): "InvalidArgs",
        insert_run(conn, "record", {"key": "k", "extra": 1}): "InvalidArgs",
        # A plain SQL insert gets the table's max_attempts (3), not the task's: say 1 here.
        insert_run(conn, "exit_sync", {"key": "exit-sync"}, max_attempts=1): "SystemExit",
        insert_run(conn, "exit_async", {"key": "exit-async"}, max_attempts=1): "SystemExit",
    }
    workers.wait_until(lambda: all(status_of(conn, i) == "failed" for i in poison), 15, "the poison runs to fail")
    after = [insert_run(conn, "record", {"key": f"after-{i}"}) for i in range(5)]
    workers.wait_until(
        lambda: all(status_of(conn, i) == "succeeded" for i in before + after), 15, "the good runs to succeed"
    )

    for run_id, error_type in poison.items():
        row = run_row(conn, run_id)
        assert (row["attempt"], [e["type"] for e in row["errors"]]) == (1, [error_type]), row
    assert worker.popen.poll() is None
    assert registered(conn, worker)
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(10) == 0, worker.log()[-3000:]

"""A tenant's max_running (issue #14, item 5; schema 0033): at most that many of the tenant's runs
run at once over every queue and worker. Its runs are claimed only by the limited claim for that
tenant (``run_claim_tenant_limited``), which counts them under the tenant's claim lock; every
other claim passes them over. A run held back stays queued and uses no attempt, and a SIGKILLed
worker's slot comes back when its lease expires. The tasks record their start and end in the
side table ``executions`` (tests/process_app.py), so overlaps of [start, end] are real executions."""

from __future__ import annotations

import signal
from typing import Any

import psycopg
import pytest

from pgsched.claim_cursor import FROM_THE_START
from pgsched.errors import InvalidInput
from pgsched.queue_settings import set_queue_settings
from pgsched.quotas import get_tenant, parse_quota, set_tenant
from pgsched.sql import queries
from tests.support.api import Api, ok
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import scalar
from tests.support.workers import Workers, insert_run

RUNNING_OF = "SELECT count(*) FROM pgsched.runs_all WHERE tenant = %s AND status = 'running'"
SUCCEEDED = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'"
# The most executions in progress at one instant: +1 at each start, -1 at each end, in time
# order (at the same instant an end first: it was recorded before the start it made room for).
MAX_OVERLAP = """
SELECT coalesce(max(in_progress), 0) FROM (
    SELECT sum(CASE event WHEN 'start' THEN 1 ELSE -1 END) OVER (ORDER BY at, event) AS in_progress
    FROM executions WHERE event IN ('start', 'end') AND key LIKE %s
) AS steps
"""
CLAIM = {
    "limit": 10,
    "worker_id": 1,
    "lease_s": 30.0,
    "now": None,
    "only_tasks": None,
    "skip_tasks": None,
    "skip_flush": False,
    "task": None,
}


def claimed_ids(rows: list[tuple[Any, ...]], column: int) -> list[int]:
    return [row[column] for row in rows if row[column] is not None]


def test_the_plain_claim_passes_over_a_limited_tenant_and_its_own_claim_takes_no_more_than_the_limit(
    conn: psycopg.Connection[Any],
) -> None:
    set_tenant(conn, "acme", max_running=2)
    acme = [insert_run(conn, "t", {}, tenant="acme", queue="a") for _ in range(3)]
    acme += [insert_run(conn, "t", {}, tenant="acme", queue="b") for _ in range(2)]
    others = [insert_run(conn, "t", {}, tenant="beta", queue="a"), insert_run(conn, "t", {}, queue="a")]
    plain = {**CLAIM, "queues": ["a", "b"], **FROM_THE_START}
    assert sorted(claimed_ids(conn.execute(queries["run_claim"], plain).fetchall(), 0)) == sorted(others)

    of_tenant = {**CLAIM, "queues": ["a", "b"], "queue_locked": False, "tenant": "acme"}
    first = claimed_ids(conn.execute(queries["run_claim_tenant_limited"], of_tenant).fetchall(), 8)
    assert len(first) == 2 and set(first) <= set(acme)  # two queues, one limit
    again = conn.execute(queries["run_claim_tenant_limited"], of_tenant).fetchall()
    assert claimed_ids(again, 8) == [] and again[0][0] and again[0][2]  # locked, nothing taken, more due
    held = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'queued' AND attempt = 0"
    assert scalar(conn, held, (acme,)) == 3  # held back: queued, no attempt used

    # The limited queue's claim passes them over too, and claims them for the tenant within both.
    set_queue_settings(conn, "b", max_running=10)
    conn.execute(
        "UPDATE pgsched.runs SET status = 'queued', attempt = 0, worker_id = NULL, started_at = NULL,"
        " lease_expires_at = NULL WHERE id = ANY(%s)",
        (first,),
    )
    in_b = {**CLAIM, "queues": ["b"], "queue_locked": True}
    assert claimed_ids(conn.execute(queries["run_claim_limited"], in_b).fetchall(), 8) == []
    assert (
        len(claimed_ids(conn.execute(queries["run_claim_tenant_limited"], {**in_b, "tenant": "acme"}).fetchall(), 8))
        == 2
    )

    # Cleared (a plain SQL UPDATE works too): the plain claim takes them again.
    conn.execute("UPDATE pgsched.tenants SET max_running = NULL WHERE name = 'acme'")
    cleared = conn.execute(queries["run_claim_tenant_limited"], of_tenant).fetchall()
    assert not cleared[0][0]  # no longer limited: nothing locked, nothing claimed
    assert len(claimed_ids(conn.execute(queries["run_claim"], plain).fetchall(), 0)) == 3


def test_the_tenants_claim_finds_its_runs_behind_others_in_claim_order_and_never_an_expired_or_deferred_one(
    conn: psycopg.Connection[Any],
) -> None:
    """0040: the tenant's runs come from runs_fair_idx, a priority at a time: behind 200 other
    runs, in (priority, run_at, id) order over the priorities, in each queue of the claim."""
    set_tenant(conn, "acme", max_running=4)
    conn.execute("INSERT INTO pgsched.runs (task, queue) SELECT 't', 'a' FROM generate_series(1, 200)")
    conn.execute("INSERT INTO pgsched.runs (task, queue, tenant) SELECT 't', 'a', 'beta' FROM generate_series(1, 50)")
    later = insert_run(conn, "t", {}, tenant="acme", queue="a", priority=5)
    first = insert_run(conn, "t", {}, tenant="acme", queue="a", priority=-5)
    in_b = insert_run(conn, "t", {}, tenant="acme", queue="b", priority=0)
    insert_run(conn, "t", {}, tenant="acme", queue="a", priority=-9, expires_at="2000-01-01T00:00:00Z")
    insert_run(conn, "t", {}, tenant="acme", queue="a", priority=-9, run_at="2999-01-01T00:00:00Z")
    insert_run(conn, "other", {}, tenant="acme", queue="a", priority=9)
    of_tenant = {**CLAIM, "queues": ["a", "b"], "queue_locked": False, "tenant": "acme", "skip_tasks": ["other"]}
    rows = conn.execute(queries["run_claim_tenant_limited"], {**of_tenant, "limit": 2}).fetchall()
    assert sorted(claimed_ids(rows, 8)) == sorted([first, in_b])  # the first of each priority order
    assert rows[0][2]  # more due: the one of priority 5
    assert claimed_ids(conn.execute(queries["run_claim_tenant_limited"], of_tenant).fetchall(), 8) == [later]


def test_a_limited_claim_from_its_cursor_takes_the_runs_after_it_and_a_full_pass_those_before(
    conn: psycopg.Connection[Any],
) -> None:
    """0040: run_claim_limited_from starts where the fetcher's last claim of the unit ended, as
    run_claim does, so a limited tenant's runs queued ahead are walked past on full passes only."""
    set_tenant(conn, "acme", max_running=1)
    set_queue_settings(conn, "a", max_running=100)
    conn.execute("INSERT INTO pgsched.runs (task, queue, tenant) SELECT 't', 'a', 'acme' FROM generate_series(1, 20)")
    ahead = [insert_run(conn, "t", {}, queue="a") for _ in range(3)]
    in_a = {**CLAIM, "queues": ["a"], "queue_locked": True, "limit": 2}
    full = {name: [None] for name in FROM_THE_START}
    rows = conn.execute(queries["run_claim_limited_from"], {**in_a, **full}).fetchall()
    assert sorted(claimed_ids(rows, 8)) == ahead[:2]  # past acme's 20, in claim order
    priority, run_at = next((row[16], row[17]) for row in rows if row[8] == ahead[1])
    cursor = {"after_priority": [priority], "after_run_at": [run_at], "after_id": [ahead[1]], "from_run_at": [run_at]}
    early = insert_run(conn, "t", {}, queue="a", priority=-1)  # sorts before the cursor
    assert claimed_ids(conn.execute(queries["run_claim_limited_from"], {**in_a, **cursor}).fetchall(), 8) == [ahead[2]]
    assert claimed_ids(conn.execute(queries["run_claim_limited_from"], {**in_a, **full}).fetchall(), 8) == [early]
    queued = "SELECT count(*) FROM pgsched.runs WHERE tenant = 'acme' AND status = 'queued' AND attempt = 0"
    assert scalar(conn, queued) == 20  # never taken by the queue's claim


def test_max_running_is_refused_below_1_at_every_entry_point_and_changes_nothing(
    dsn: str, conn: psycopg.Connection[Any], api: Api
) -> None:
    set_tenant(conn, "acme", max_running=3)
    for bad in (0, -1, "abc", True, 2**31):
        with pytest.raises(InvalidInput, match="max_running must be an integer from 1"):
            set_tenant(conn, "acme", max_running=bad)  # type: ignore[arg-type]
    for text in ("0", "-1", "abc", ""):
        with pytest.raises(InvalidInput, match="max_running"):
            parse_quota("max_running", text)
        assert_one_error_line(run_cli(dsn, "tenants", "set", "acme", "--max-running", text), "max_running")
    for body in ({"max_running": 0}, {"max_running": "abc"}, {"max_running": -1}):
        refused = api.patch("/tenants/acme", json=body)
        assert refused.status_code == 400 and refused.json()["detail"], refused.text
    with pytest.raises(psycopg.errors.CheckViolation, match="tenant_max_running_must_be_at_least_1"):
        conn.execute("UPDATE pgsched.tenants SET max_running = 0 WHERE name = 'acme'")
    assert get_tenant(conn, "acme")["max_running"] == 3

    assert run_cli(dsn, "tenants", "set", "acme", "--max-running", "5").returncode == 0
    listed = run_cli(dsn, "tenants", "list", "--json")
    assert '"max_running": 5' in listed.stdout, listed
    assert ok(api.patch("/tenants/acme", json={"max_running": 7}))["max_running"] == 7
    assert run_cli(dsn, "tenants", "set", "acme", "--max-running", "none").returncode == 0
    assert ok(api.get("/tenants/acme"))["max_running"] is None


def test_metrics_show_each_quota_tenants_limits_and_what_they_count_now(
    conn: psycopg.Connection[Any], api: Api
) -> None:
    set_tenant(conn, "acme", max_running=2, max_queued=10)
    set_tenant(conn, "beta", runs_per_day=5)
    for _ in range(3):
        insert_run(conn, "t", {}, tenant="acme")
    running = insert_run(conn, "t", {}, tenant="acme")
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 hour' WHERE id = %s",
        (running,),
    )
    samples = set(api.get("/metrics").text.splitlines())
    assert {
        'pgsched_tenant_max_running{tenant="acme"} 2',
        'pgsched_tenant_max_queued{tenant="acme"} 10',
        'pgsched_tenant_runs_per_day{tenant="beta"} 5',
        'pgsched_tenant_queued_runs{tenant="acme"} 3',
        'pgsched_tenant_running_runs{tenant="acme"} 1',
        'pgsched_tenant_created_today{tenant="acme"} 4',
        'pgsched_tenant_running_runs{tenant="beta"} 0',
    } <= samples
    assert not any(line.startswith('pgsched_tenant_max_running{tenant="beta"}') for line in samples)
    assert ok(api.get("/tenants/acme"))["running"] == 1


@pytest.mark.slow
def test_a_tenants_max_running_holds_over_every_queue_while_eight_worker_processes_race(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    limit = 3
    set_tenant(conn, "acme", max_running=limit)
    set_queue_settings(conn, "b", max_running=10)  # a limited queue: its claim per tenant too
    for _ in range(8):
        workers.start("--queues", "a,b", "--concurrency", "4")
    acme = [
        insert_run(conn, "slow", {"key": f"acme-{i}", "seconds": 0.15}, queue="ab"[i % 2], tenant="acme")
        for i in range(30)
    ]
    others = [
        insert_run(conn, "slow", {"key": f"beta-{i}", "seconds": 0.15}, queue="a", tenant="beta") for i in range(12)
    ]

    samples: list[int] = []

    def drained() -> bool:
        samples.append(scalar(conn, RUNNING_OF, ("acme",)))
        return scalar(conn, SUCCEEDED, (acme + others,)) == len(acme + others)

    workers.wait_until(drained, 90, "every run of both tenants to succeed", poll=0.005)
    assert max(samples) == limit, f"acme's running runs sampled while 8 workers raced: max {max(samples)}"
    assert scalar(conn, MAX_OVERLAP, ("acme-%",)) == limit  # at the limit, never over it
    assert scalar(conn, MAX_OVERLAP, ("beta-%",)) > limit  # another tenant is not held by it
    assert scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all WHERE id = ANY(%s)", (acme,)) == 1


def test_the_end_of_a_tenant_limited_run_wakes_the_workers_of_its_queue(
    workers: Workers, conn: psycopg.Connection[Any], dsn: str
) -> None:
    """The slot-freed notification (as for a limited queue): a worker waiting for the tenant's
    slot is woken when the run holding it ends, not at its next look 50 ms later. The queue has
    no limit of its own, so before, no notification was sent."""
    set_tenant(conn, "acme", max_running=1)
    workers.start("--queues", "a", "--concurrency", "4")
    held = [insert_run(conn, "slow", {"key": f"acme-{i}", "seconds": 0.5}, queue="a", tenant="acme") for i in range(2)]
    workers.wait_until(lambda: scalar(conn, RUNNING_OF, ("acme",)) == 1, 30, "the first of acme's runs to start")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgsched")  # the enqueue channel: no insert follows, only the worker sends
        payloads = [n.payload for n in listener.notifies(timeout=30, stop_after=1)]
    assert payloads == ["a"]
    workers.wait_until(lambda: scalar(conn, SUCCEEDED, (held,)) == 2, 30, "both of acme's runs to succeed")


@pytest.mark.slow
def test_a_sigkilled_worker_gives_a_tenants_slot_back_when_its_lease_expires(
    workers: Workers, conn: psycopg.Connection[Any]
) -> None:
    set_tenant(conn, "acme", max_running=1)
    victim = workers.start("--queues", "a", "--concurrency", "4", "--lease", "3")
    held = insert_run(conn, "slow", {"key": "held", "seconds": 60}, queue="a", tenant="acme")
    workers.wait_until(lambda: scalar(conn, RUNNING_OF, ("acme",)) == 1, 15, "the victim to run the tenant's run")
    victim.popen.kill()
    assert victim.popen.wait(timeout=10) == -signal.SIGKILL
    lease_expires = scalar(conn, "SELECT lease_expires_at FROM pgsched.runs_all WHERE id = %s", (held,))

    survivor = workers.start("--queues", "a,b", "--concurrency", "4")
    # In another queue (the limit is the tenant's, over every queue), and ahead of the victim's
    # run in claim order: the survivor's sweep may put that back first, and it would hold the slot.
    waiting = insert_run(conn, "record", {"key": "waiting"}, queue="b", tenant="acme", priority=-1)
    workers.wait_until(
        lambda: scalar(conn, SUCCEEDED, ([waiting],)) == 1,
        30,
        "the waiting run to take the slot the dead worker's lease held",
        alive=[survivor],
    )
    started = scalar(conn, "SELECT started_at FROM pgsched.runs_all WHERE id = %s", (waiting,))
    assert started >= lease_expires, "the tenant's run started while the dead worker's lease still held its slot"
    assert scalar(conn, "SELECT attempt FROM pgsched.runs_all WHERE id = %s", (waiting,)) == 1

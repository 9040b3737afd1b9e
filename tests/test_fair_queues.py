"""Fair queues (issue #14, item 4, schema 0028): in a queue with ``fair`` set, the claim takes
tenants (and, for runs without a tenant, concurrency keys) in turns within the first due
priority, so a tenant with a few runs behind another's backlog starts them at once; priorities
still win; the turn is kept across workers in the queue's row. Set by SQL, the CLI or REST."""

from __future__ import annotations

from collections import Counter
from typing import Any

import psycopg
import pytest

from pgsched.errors import InvalidInput
from pgsched.queue_settings import get_queue_settings, set_queue_settings
from pgsched.sql import queries
from tests.support.api import Api, ok
from tests.support.cli import run_cli
from tests.support.db import scalar
from tests.support.workers import Workers, insert_run

CLAIM = {"task": None, "queue_locked": True, "worker_id": 1, "lease_s": 30.0, "now": None}
CLAIM.update({"only_tasks": None, "skip_tasks": None, "skip_flush": False})


def claim(conn: psycopg.Connection[Any], queue: str, limit: int) -> list[str]:
    """One limited claim of ``queue`` as a worker makes it: the group of each run it took, sorted
    (a worker starts them all at once: the claim returns them in no particular order)."""
    rows = conn.execute(queries["run_claim_limited"], {**CLAIM, "queues": [queue], "limit": limit}).fetchall()
    ids = [row[8] for row in rows if row[8] is not None]
    groups = conn.execute(
        "SELECT coalesce(r.tenant, r.concurrency_key, '-') FROM unnest(%s::bigint[]) WITH ORDINALITY AS c(id, n)"
        " JOIN pgsched.runs_all AS r ON r.id = c.id ORDER BY c.n",
        (ids,),
    ).fetchall()
    return sorted(group for (group,) in groups)


def insert_many(conn: psycopg.Connection[Any], queue: str, count: int, **columns: Any) -> None:
    names = "".join(f", {name}" for name in columns)
    marks = "".join(", %s" for _ in columns)
    conn.execute(
        f"INSERT INTO pgsched.runs (task, args, queue{names})"
        f" SELECT 'record', jsonb_build_object('key', 'bulk-' || g), %s{marks} FROM generate_series(1, %s) AS g",
        (queue, *columns.values(), count),
    )


# ---- the claim


def test_a_small_tenant_is_served_at_once_behind_a_large_ones_backlog(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", fair=True)
    insert_many(conn, "shared", 1000, tenant="big")
    insert_many(conn, "shared", 3, tenant="small")
    assert claim(conn, "shared", 4) == ["big", "big", "small", "small"]
    assert claim(conn, "shared", 4) == ["big", "big", "big", "small"]  # small has no more


def test_without_fair_the_same_queue_is_served_in_id_order(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", max_running=1000)  # limited, claimed by the same function
    insert_many(conn, "shared", 10, tenant="big")
    insert_many(conn, "shared", 3, tenant="small")
    assert claim(conn, "shared", 4) == ["big"] * 4


def test_priorities_win_over_fairness(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", fair=True)
    insert_many(conn, "shared", 10, tenant="big", priority=0)
    insert_many(conn, "shared", 3, tenant="small", priority=5)
    insert_many(conn, "shared", 2, tenant="urgent", priority=-1)
    assert claim(conn, "shared", 4) == ["urgent", "urgent"]  # the first priority only
    assert claim(conn, "shared", 20) == ["big"] * 10
    assert claim(conn, "shared", 20) == ["small"] * 3


def test_many_groups_each_get_a_turn_before_any_gets_a_second(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", fair=True)
    for tenant in range(7):
        insert_many(conn, "shared", 3, tenant=f"t{tenant}")
    served = Counter[str]()
    for _ in range(7):  # 21 runs, 3 per claim: after each claim no tenant is more than one run ahead
        served.update(claim(conn, "shared", 3))
        counts = [served[f"t{tenant}"] for tenant in range(7)]
        assert max(counts) - min(counts) <= 1, served
    assert set(served.values()) == {3}


def test_groups_with_only_deferred_runs_do_not_stall_the_turn(conn: psycopg.Connection[Any]) -> None:
    """A turn that visits only groups with nothing due moves on: the next claim visits the next groups."""
    set_queue_settings(conn, "shared", fair=True)
    later = scalar(conn, "SELECT now() + interval '1 hour'")
    for tenant in range(10):
        insert_many(conn, "shared", 1, tenant=f"d{tenant}", run_at=later)
    insert_many(conn, "shared", 3, tenant="z")
    served = [claim(conn, "shared", 4) for _ in range(4)]
    assert ["z", "z", "z"] in served, served


def test_concurrency_keys_take_turns_when_runs_have_no_tenant(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", fair=True)
    insert_many(conn, "shared", 50, concurrency_key="customer:1")
    insert_many(conn, "shared", 2, concurrency_key="customer:2")
    assert claim(conn, "shared", 4) == ["customer:1", "customer:1", "customer:2", "customer:2"]


def test_a_key_limit_still_holds_in_a_fair_queue(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", fair=True, key_max_running=1)
    insert_many(conn, "shared", 5, tenant="a", concurrency_key="k1")
    insert_many(conn, "shared", 5, tenant="b", concurrency_key="k1")
    insert_many(conn, "shared", 5, tenant="b", concurrency_key="k2")
    assert sorted(claim(conn, "shared", 10)) == ["a", "b"]  # one run of k1, one of k2
    running = "SELECT count(*) FROM pgsched.runs_all WHERE status = 'running' GROUP BY concurrency_key ORDER BY 1 DESC"
    assert scalar(conn, running) == 1


def test_a_fair_queue_is_claimed_by_a_worker_in_turns(workers: Workers, conn: psycopg.Connection[Any]) -> None:
    """Real worker processes: the small tenant's runs, enqueued behind the large one's backlog,
    all start before a tenth of that backlog has."""
    set_queue_settings(conn, "limited", fair=True)
    insert_many(conn, "limited", 400, tenant="big")
    small = [insert_run(conn, "record", {"key": f"small-{i}"}, queue="limited", tenant="small") for i in range(5)]
    for _ in range(2):
        workers.start("--queues", "limited", "--concurrency", "4")
    done = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'"
    workers.wait_until(lambda: scalar(conn, done, (small,)) == 5, 60, "the small tenant's runs to succeed")
    last_small_start = scalar(conn, "SELECT max(started_at) FROM pgsched.runs_all WHERE id = ANY(%s)", (small,))
    big_before = "SELECT count(*) FROM pgsched.runs_all WHERE tenant = 'big' AND started_at < %s"
    assert scalar(conn, big_before, (last_small_start,)) < 40
    workers.wait_until(
        lambda: scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'") == 405,
        120,
        "the fair queue to drain",
    )
    assert scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all") == 1


# ---- settings


def test_fair_is_set_and_cleared_by_the_library_cli_and_api(dsn: str, api: Api, conn: psycopg.Connection) -> None:
    assert not get_queue_settings(conn, "shared")["fair"]
    assert set_queue_settings(conn, "shared", fair=True)["fair"]
    assert run_cli(dsn, "queues", "set", "shared", "--no-fair").returncode == 0
    assert not get_queue_settings(conn, "shared")["fair"]
    assert run_cli(dsn, "queues", "set", "shared", "--fair").returncode == 0
    listed = run_cli(dsn, "queues", "list", "--json")
    assert '"fair": true' in listed.stdout, listed
    assert not ok(api.patch("/queues/shared", json={"fair": False}, as_="write"))["fair"]
    assert ok(api.get("/queues/shared", as_="read"))["fair"] is False


def test_bad_fair_values_are_refused_and_change_nothing(dsn: str, api: Api, conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput, match="fair must be true or false"):
        set_queue_settings(conn, "shared", fair="yes")  # type: ignore[arg-type]
    assert api.patch("/queues/shared", json={"fair": "yes"}).status_code == 400
    refused = run_cli(dsn, "queues", "set", "shared", "--fair=yes")  # a flag: the parser refuses it
    assert refused.returncode == 2 and "--fair" in refused.stderr, refused
    assert scalar(conn, "SELECT count(*) FROM pgsched.queues") == 0


def test_a_change_of_fair_notifies_the_workers(conn: psycopg.Connection[Any]) -> None:
    set_queue_settings(conn, "shared", max_running=5)
    conn.execute("LISTEN pgsched_queues")
    set_queue_settings(conn, "shared", fair=True)
    assert [n.payload for n in conn.notifies(timeout=2, stop_after=1)] == ["shared"]

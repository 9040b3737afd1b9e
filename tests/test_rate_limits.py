"""Rates (a token bucket per queue or task, in its settings row), settings per task, and
concurrency keys (issue #14, schema 0020): the claim's arithmetic with an injected clock, bad
input refused at every entry point with nothing written, and the limits held across real
worker processes (tests/limits_app.py's tasks)."""

from __future__ import annotations

import asyncio
import re
import select
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsched.app import App
from pgsched.errors import InvalidArgs, InvalidInput
from pgsched.limited_claim import HELD_BY_LIMIT_PAUSE_S, LimitedClaim, Limits, Unit, claim_limited
from pgsched.queue_settings import (
    check_rate,
    get_task_settings,
    list_queue_settings,
    list_task_settings,
    set_queue_settings,
    set_task_settings,
)
from tests.support.api import Api, ok
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import scalar
from tests.support.generated import EXAMPLES
from tests.support.workers import Workers, insert_run

BAD_RATES = ["0/s", "abc", "-1", "-1/s", "1.5/s", "10/d", "10/ s", "10000000/s", "/s", "10/", "010/s", ""]
T0 = datetime.fromisoformat("2030-01-01T00:00:00+00:00")
LIMITS = Limits(limited_queues=("rated",))


def queue_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT name, rate, burst, key_max_running FROM pgsched.queues ORDER BY name").fetchall()


def due_runs(conn: psycopg.Connection, n: int, queue: str = "rated", task: str = "t", **columns: Any) -> list[int]:
    return [insert_run(conn, task, {}, queue=queue, run_at=T0 - timedelta(seconds=1), **columns) for _ in range(n)]


def claim(dsn: str, unit: Unit, at: float, limit: int = 100, limits: Limits = LIMITS) -> LimitedClaim:
    """One limited claim, as a worker's fetcher makes it, at T0 + ``at`` seconds."""
    params = {
        "limit": limit,
        "worker_id": 1,
        "lease_s": 3600.0,
        "now": T0 + timedelta(seconds=at),
        "only_tasks": None,
        "skip_tasks": None,
    }

    async def claimed() -> LimitedClaim:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await claim_limited(conn, unit, limits, params)

    return asyncio.run(claimed())


RATED = Unit(("rated",), None, True)


# ---- the bucket, with an injected clock


def test_a_rate_starts_its_burst_then_one_run_per_token_and_says_when_the_next_is_due(
    dsn: str, conn: psycopg.Connection
) -> None:
    set_queue_settings(conn, "rated", rate="10/s", burst=5)
    due_runs(conn, 30)
    first = claim(dsn, RATED, 0.0)
    assert len(first.runs) == 5 and first.by_rate and first.retry_in == pytest.approx(0.1, abs=0.002)
    assert len(claim(dsn, RATED, 0.05).runs) == 0  # half a token
    later = claim(dsn, RATED, 0.25)
    assert len(later.runs) == 2 and later.retry_in == pytest.approx(0.05, abs=0.002)  # 2.5 tokens: 2, then half left
    # A long quiet spell refills the bucket to its burst, never more: no double burst.
    assert len(claim(dsn, RATED, 60.0).runs) == 5
    held = conn.execute("SELECT status::text, attempt, errors FROM pgsched.runs_all WHERE status = 'queued'").fetchall()
    assert len(held) == 30 - 12 and {(s, a, str(e)) for s, a, e in held} == {("queued", 0, "[]")}


def test_no_one_second_window_starts_more_than_the_rate_plus_the_burst(dsn: str, conn: psycopg.Connection) -> None:
    set_queue_settings(conn, "rated", rate="10/s", burst=3)
    due_runs(conn, 80)
    starts: list[float] = []
    at = 0.0
    while at < 5.0:  # a claim every 37 ms, as many workers racing would make them
        starts += [at] * len(claim(dsn, RATED, at).runs)
        at = round(at + 0.037, 3)
    windows = [sum(1 for s in starts if w / 100 <= s < w / 100 + 1) for w in range(400)]
    assert max(windows) <= 10 + 3, max(windows)
    assert 3 + 10 * 4.9 <= len(starts) <= 3 + 10 * 5.0  # the rate is reached, not only respected


def test_max_running_and_a_rate_together_take_the_smaller(dsn: str, conn: psycopg.Connection) -> None:
    set_queue_settings(conn, "rated", rate="100/s", burst=50, max_running=4)
    due_runs(conn, 20)
    assert len(claim(dsn, RATED, 0.0).runs) == 4
    held = claim(dsn, RATED, 1.0)
    assert held.runs == [] and held.retry_in == HELD_BY_LIMIT_PAUSE_S and not held.by_rate


def test_a_task_limit_holds_over_every_queue_its_runs_are_in(dsn: str, conn: psycopg.Connection) -> None:
    set_task_settings(conn, "t", max_running=3, rate="100/s", burst=100)
    due_runs(conn, 4, queue="a")
    due_runs(conn, 4, queue="b")
    due_runs(conn, 2, queue="a", task="other")
    limits = Limits(limited_tasks=("t",))
    unit = Unit(("a", "b"), "t", False)
    assert len(claim(dsn, unit, 0.0, limits=limits).runs) == 3
    assert claim(dsn, unit, 0.1, limits=limits).runs == []
    # A claim of every other task passes the limited task over.
    others = claim(dsn, Unit(("a",), None, False), 0.1, limits=limits)
    assert {run.task for run in others.runs} == {"other"}


def test_one_run_per_key_with_key_max_running_1_and_runs_without_a_key_are_free(
    dsn: str, conn: psycopg.Connection
) -> None:
    set_queue_settings(conn, "rated", key_max_running=1)
    for key in ("c:1", "c:1", "c:1", "c:2", "c:2", None, None):
        due_runs(conn, 1, concurrency_key=key)
    assert keys_of(conn, claim(dsn, RATED, 0.0)) == ["-", "-", "c:1", "c:2"]
    second = claim(dsn, RATED, 0.1)
    assert second.runs == [] and second.retry_in == HELD_BY_LIMIT_PAUSE_S  # held until a key's run ends
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL"
        " WHERE concurrency_key = 'c:1' AND status = 'running'"
    )
    assert keys_of(conn, claim(dsn, RATED, 0.2)) == ["c:1"]


def keys_of(conn: psycopg.Connection, claimed: LimitedClaim) -> list[str]:
    ids = [run.id for run in claimed.runs]
    rows = conn.execute("SELECT coalesce(concurrency_key, '-') FROM pgsched.runs_all WHERE id = ANY(%s)", (ids,))
    return sorted(row[0] for row in rows)


# ---- SQL


@pytest.mark.parametrize(
    "update",
    [
        "rate = '0/s'",
        "rate = 'abc'",
        "rate = '10/d'",
        "rate = '10000000/s'",
        "rate = '10/s', burst = 0",
        "burst = 5",  # without a rate
        "key_max_running = 0",
    ],
)
def test_sql_refuses_a_rate_burst_or_key_limit_no_worker_could_apply(conn: psycopg.Connection, update: str) -> None:
    conn.execute("INSERT INTO pgsched.queues (name) VALUES ('q')")
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(f"UPDATE pgsched.queues SET {update} WHERE name = 'q'".encode())
    assert queue_rows(conn) == [("q", None, None, None)]


def test_sql_refuses_a_concurrency_key_over_200_characters_or_blank(conn: psycopg.Connection) -> None:
    for key in ("x" * 201, "", "   "):
        with pytest.raises(psycopg.errors.CheckViolation):
            insert_run(conn, "t", {}, concurrency_key=key)
    insert_run(conn, "t", {}, concurrency_key="k" * 200)
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 1


def test_a_plain_sql_rate_change_notifies_the_workers_and_a_claims_tokens_do_not(
    conn: psycopg.Connection, dsn: str
) -> None:
    conn.execute("INSERT INTO pgsched.queues (name) VALUES ('emails')")
    conn.execute("INSERT INTO pgsched.task_settings (task) VALUES ('send')")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgsched_queues")
        conn.execute("UPDATE pgsched.queues SET tokens = 1, tokens_at = now() WHERE name = 'emails'")
        conn.execute("UPDATE pgsched.queues SET rate = '100/m', burst = 10 WHERE name = 'emails'")
        conn.execute("UPDATE pgsched.task_settings SET tokens = 1 WHERE task = 'send'")
        conn.execute("UPDATE pgsched.task_settings SET rate = '10/s' WHERE task = 'send'")
        select.select([listener.fileno()], [], [], 5)
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=1, stop_after=2)]
    assert heard == [("pgsched_queues", "emails"), ("pgsched_queues", "task:send")]


# ---- Python


@pytest.mark.parametrize("rate", BAD_RATES)
def test_a_bad_rate_is_refused_naming_the_rule(conn: psycopg.Connection, rate: str) -> None:
    with pytest.raises(InvalidInput, match="a rate is N/s, N/m or N/h"):
        set_queue_settings(conn, "emails", rate=rate)
    with pytest.raises(InvalidInput, match="a rate is N/s, N/m or N/h"):
        set_task_settings(conn, "send", rate=rate)
    assert queue_rows(conn) == [] and list_task_settings(conn) == []


def test_a_burst_needs_a_rate_and_clearing_the_rate_clears_the_burst(conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput, match="burst needs a rate"):
        set_queue_settings(conn, "emails", burst=5)
    set_queue_settings(conn, "emails", max_running=3)
    with pytest.raises(InvalidInput, match="burst needs a rate: queue 'emails' has none"):
        set_queue_settings(conn, "emails", burst=5)
    set_queue_settings(conn, "emails", rate="100/m", burst=10)
    assert queue_rows(conn) == [("emails", "100/m", 10, None)]
    set_queue_settings(conn, "emails", rate=None)
    assert queue_rows(conn) == [("emails", None, None, None)]


@EXAMPLES
@given(
    text=st.text(st.characters(exclude_characters="\x00"), max_size=12)
    | st.sampled_from(["10/s", "100/m", "5/h", "7", "9999999/h", " 10/s", "10/s "])
)
def test_a_rate_the_library_accepts_is_one_the_database_accepts_and_no_other(
    conn: psycopg.Connection, text: str
) -> None:
    try:
        rate = check_rate(text)
    except InvalidInput:
        rate = None
    stored = scalar(conn, "SELECT %s::text ~ '^[1-9][0-9]*/[smh]$' AND length(%s::text) <= 9", (text, text))
    assert (rate == text) == bool(stored) or (rate == f"{text}/s" and text.isdigit())


def test_a_tasks_declared_rate_limit_is_its_rate_and_a_bad_one_registers_nothing(app: App) -> None:
    @app.task(rate_limit="10/s")
    async def polite() -> None:
        return None

    @app.task(rate_limit=5)
    async def bare() -> None:
        return None

    assert (polite.rate_limit, bare.rate_limit) == ("10/s", "5/s")
    with pytest.raises(InvalidInput, match="task 'rude': rate_limit: a rate is N/s"):

        @app.task(rate_limit="0/s")
        async def rude() -> None:
            return None

    assert "rude" not in app.tasks


def test_a_concurrency_key_is_derived_from_the_args_or_given_and_checked(app: App, conn: psycopg.Connection) -> None:
    @app.task(concurrency_key="customer:{customer_id}")
    async def invoice(customer_id: int, month: str = "01") -> None:
        return None

    first = invoice.enqueue(customer_id=42)
    given_key = app.enqueue("invoice", {"customer_id": 7}, concurrency_key="vip")
    many = app.enqueue_many("invoice", [{"customer_id": 1}, {"customer_id": 2}])
    plain = app.enqueue("other", {}, concurrency_key="x" * 200)
    keys = conn.execute(
        "SELECT concurrency_key FROM pgsched.runs_all WHERE id = ANY(%s) ORDER BY id",
        ([first, given_key, *many, plain],),
    ).fetchall()
    assert [k for (k,) in keys] == ["customer:42", "vip", "customer:1", "customer:2", "x" * 200]
    for bad in ("x" * 201, "", "  ", "a\x00b", 42):
        with pytest.raises(InvalidInput, match="concurrency_key"):
            app.enqueue("other", {}, concurrency_key=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgs):
        invoice.enqueue(month="02")  # the key needs customer_id
    with pytest.raises(InvalidInput, match="concurrency_key names 'nope'"):

        @app.task(concurrency_key="c:{nope}")
        async def wrong(customer_id: int) -> None:
            return None

    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 5


# ---- CLI


def test_cli_sets_rate_burst_and_key_limit_and_lists_them(dsn: str, conn: psycopg.Connection) -> None:
    result = run_cli(dsn, "queues", "set", "emails", "--rate", "100/m", "--burst", "10", "--key-max-running", "1")
    assert result.returncode == 0, result.stderr
    assert queue_rows(conn) == [("emails", "100/m", 10, 1)]
    listed = run_cli(dsn, "queues", "list", "--json")
    assert '"rate": "100/m"' in listed.stdout and '"held_back": 0' in listed.stdout, listed.stdout
    assert run_cli(dsn, "queues", "set", "emails", "--rate", "none", "--key-max-running", "none").returncode == 0
    assert queue_rows(conn) == [("emails", None, None, None)]


@pytest.mark.parametrize("rate", [r for r in BAD_RATES if r and not r.startswith("-")])
def test_cli_refuses_a_bad_rate_in_one_line_and_writes_nothing(dsn: str, conn: psycopg.Connection, rate: str) -> None:
    assert_one_error_line(run_cli(dsn, "queues", "set", "emails", "--rate", rate), "a rate is N/s, N/m or N/h")
    assert_one_error_line(run_cli(dsn, "tasks", "set", "send", "--rate", rate), "a rate is N/s, N/m or N/h")
    assert queue_rows(conn) == [] and list_task_settings(conn) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--rate", "10/s", "--burst", "0"), "burst must be an integer from 1 to 1000000"),
        (("--burst", "5"), "burst needs a rate"),
        (("--rate=-1",), "a rate is N/s"),
        (("--key-max-running", "0"), "key_max_running must be an integer from 1"),
        (("--key-max-running", "abc"), "key_max_running must be an integer from 1"),
    ],
)
def test_cli_refuses_a_bad_burst_or_key_limit_in_one_line(
    dsn: str, conn: psycopg.Connection, args: tuple[str, ...], message: str
) -> None:
    assert_one_error_line(run_cli(dsn, "queues", "set", "emails", *args), message)
    assert queue_rows(conn) == []


def test_cli_sets_pauses_and_lists_a_tasks_settings(dsn: str, conn: psycopg.Connection) -> None:
    assert run_cli(dsn, "tasks", "set", "send_email", "--max-running", "5", "--rate", "10/s").returncode == 0
    assert run_cli(dsn, "tasks", "pause", "send_email").returncode == 0
    assert get_task_settings(conn, "send_email") | {"updated_at": None} == {
        "name": "send_email",
        "paused": True,
        "max_running": 5,
        "rate": "10/s",
        "burst": None,
        "updated_at": None,
    }
    insert_run(conn, "send_email", {})
    listed = run_cli(dsn, "tasks", "list", "--json")
    assert '"held_back": 1' in listed.stdout, listed.stdout  # paused: its due run is held back
    assert run_cli(dsn, "tasks", "resume", "send_email").returncode == 0
    assert_one_error_line(run_cli(dsn, "tasks", "set", "send_email"), "nothing to change")
    assert_one_error_line(run_cli(dsn, "tasks", "pause", "x" * 201), "task must be a non-empty name")


# ---- REST


def test_api_patches_a_queues_rate_and_a_tasks_settings(api: Api, conn: psycopg.Connection) -> None:
    patched = ok(api.patch("/queues/emails", json={"rate": "100/m", "burst": 10, "key_max_running": 2}))
    assert (patched["rate"], patched["burst"], patched["key_max_running"]) == ("100/m", 10, 2)
    assert ok(api.patch("/queues/emails", json={"rate": None}))["burst"] is None
    assert ok(api.get("/tasks/send", as_="read"))["rate"] is None
    assert ok(api.patch("/tasks/send", json={"rate": "5/s", "max_running": 2}))["rate"] == "5/s"
    assert ok(api.post("/tasks/send/pause"))["paused"]
    assert [item["name"] for item in ok(api.get("/tasks", as_="read"))["items"]] == ["send"]
    assert not ok(api.post("/tasks/send/resume"))["paused"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"rate": "0/s"}, 422),
        ({"rate": "abc"}, 422),
        ({"rate": 5}, 400),
        ({"burst": 3}, 422),
        ({"rate": "1/s", "burst": 0}, 400),
        ({"key_max_running": 1}, 400),  # a queue's setting, not a task's
        ({}, 422),
    ],
)
def test_api_refuses_bad_task_settings_with_a_json_error_and_writes_nothing(
    api: Api, conn: psycopg.Connection, body: dict[str, Any], status: int
) -> None:
    response = api.patch("/tasks/send", json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert list_task_settings(conn) == []
    assert api.patch("/tasks/send", json={"rate": "1/s"}, as_="acme").status_code == 403


def test_a_run_queued_through_the_api_keeps_its_concurrency_key(api: Api) -> None:
    created = ok(api.post("/runs", json={"task": "t", "concurrency_key": "customer:42"}), status=201)
    assert ok(api.get(f"/runs/{created['id']}"))["concurrency_key"] == "customer:42"
    refused = api.post("/runs", json={"task": "t", "concurrency_key": "x" * 201})
    assert refused.status_code == 422 and "concurrency_key" in refused.json()["detail"]


def test_queues_and_stats_show_limits_and_runs_held_back(dsn: str, conn: psycopg.Connection, api: Api) -> None:
    set_queue_settings(conn, "rated", max_running=1, rate="100/m", burst=2)
    for _ in range(5):
        insert_run(conn, "t", {}, queue="rated")  # due now
    running = insert_run(conn, "t", {}, queue="rated")
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 hour' WHERE id = %s",
        (running,),
    )
    listed = {row["name"]: row for row in list_queue_settings(conn)}
    assert listed["rated"]["held_back"] == 5  # max_running reached: every due run waits
    item = next(i for i in ok(api.get("/queues"))["items"] if i["queue"] == "rated")
    assert (item["max_running"], item["rate"], item["burst"], item["held_back"]) == (1, "100/m", 2, 5)
    stats = run_cli(dsn, "stats", "--json")
    assert re.search(r'"held_back": 5', stats.stdout), stats.stdout
    metrics = api.get("/metrics").text
    assert 'pgsched_queue_held_back_runs{queue="rated"} 5' in metrics
    assert 'pgsched_queue_max_running{queue="rated"} 1' in metrics
    assert 'pgsched_queue_rate_per_second{queue="rated"}' in metrics


# ---- real worker processes


LIMITS_APP = "tests.limits_app:app"
STARTS_PER_SECOND = """
SELECT coalesce(max(n), 0) FROM (
    SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN CURRENT ROW AND '999 ms' FOLLOWING) AS n
    FROM pgsched.runs_all WHERE queue = %s AND started_at IS NOT NULL
) AS windows
"""


QUEUE_ROW_READS = "SELECT seq_scan + coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 'queues'"
# A backend flushes its table counts before it leaves pg_stat_activity, so once the workers' are
# gone the counts are complete.
BACKENDS_STARTED_SINCE = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND backend_type = 'client backend' AND backend_start > %s
"""


@pytest.mark.slow
def test_a_rate_holds_over_four_worker_processes_without_spinning(workers: Workers, conn: psycopg.Connection) -> None:
    set_queue_settings(conn, "rated", rate="10/s", burst=2)
    before_workers = scalar(conn, "SELECT clock_timestamp()")
    for _ in range(4):
        workers.start("--queues", "rated", "--concurrency", "8", app=LIMITS_APP)
    reads_before = scalar(conn, QUEUE_ROW_READS)
    ids = [insert_run(conn, "record", {"key": f"r-{i}"}, queue="rated") for i in range(40)]
    done = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'"
    workers.wait_until(lambda: scalar(conn, done, (ids,)) == 40, 30, "the rated queue to drain")
    span = float(scalar(conn, "SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM pgsched.runs_all"))
    assert span >= (40 - 2) / 10 * 0.97, span  # 2 at once, then one per token
    assert scalar(conn, STARTS_PER_SECOND, ("rated",)) <= 10 + 2
    assert scalar(conn, "SELECT max(attempt) FROM pgsched.runs_all") == 1  # held back: no attempt used
    # A claim reads the queue's settings row twice (its lock, the claim's check), and once more
    # to spend tokens when it starts runs (one instant per claim: its started_at). A worker
    # waiting for a token claims when it is due, not in a loop; one that lost the token to
    # another worker, twice a second: idle claims stay at a few a second per worker (measured 2.8
    # to 5.0, and 6.9 once on a loaded CI machine); a worker that spins claims hundreds of times
    # a second, so 12 still tells the two apart.
    workers.cleanup()  # a backend may hold its counts while idle, and sends them as it exits
    workers.wait_until(
        lambda: scalar(conn, BACKENDS_STARTED_SINCE, (before_workers,)) == 0,
        10,
        "the workers' backends to exit",
        alive=[],
    )
    reads = scalar(conn, QUEUE_ROW_READS) - reads_before
    productive = scalar(conn, "SELECT count(DISTINCT started_at) FROM pgsched.runs_all WHERE id = ANY(%s)", (ids,))
    idle_per_worker_s = (reads - 3 * productive) / 2 / 4 / span
    assert idle_per_worker_s <= 12, (reads, productive, span)


@pytest.mark.slow
def test_a_declared_rate_limit_is_global_and_a_rate_change_mid_drain_applies(
    workers: Workers, conn: psycopg.Connection
) -> None:
    for _ in range(3):
        workers.start("--queues", "default", "--concurrency", "4", app=LIMITS_APP)
    assert get_task_settings(conn, "rated")["rate"] == "4/s"  # written by the workers at start
    ids = [insert_run(conn, "rated", {"key": f"d-{i}"}) for i in range(60)]
    started = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND started_at IS NOT NULL"
    workers.wait_until(lambda: scalar(conn, started, (ids,)) >= 8, 20, "a few rated runs to start")
    assert scalar(conn, STARTS_PER_SECOND, ("default",)) <= 4 + 1  # three workers, one rate
    set_task_settings(conn, "rated", rate="100/s", burst=10)
    done = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'"
    workers.wait_until(lambda: scalar(conn, done, (ids,)) == 60, 20, "the rest to drain at the new rate")


@pytest.mark.slow
def test_key_max_running_1_never_overlaps_runs_of_one_key_across_worker_processes(
    workers: Workers, conn: psycopg.Connection
) -> None:
    set_queue_settings(conn, "keyed", key_max_running=1)
    for _ in range(4):
        workers.start("--queues", "keyed", "--concurrency", "6", app=LIMITS_APP)
    ids = [
        insert_run(
            conn,
            "per_customer",
            {"key": f"c{customer}-{i}", "customer": customer, "seconds": 0.05},
            queue="keyed",
            concurrency_key=f"customer:{customer}",
        )
        for i in range(8)
        for customer in range(3)
    ]
    done = "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'"
    workers.wait_until(lambda: scalar(conn, done, (ids,)) == len(ids), 60, "every customer's runs to succeed")
    overlap = """
    SELECT coalesce(max(in_progress), 0) FROM (
        SELECT sum(CASE event WHEN 'start' THEN 1 ELSE -1 END) OVER (ORDER BY at, event) AS in_progress
        FROM executions WHERE event IN ('start', 'end') AND key LIKE %s
    ) AS steps
    """
    assert [scalar(conn, overlap, (f"c{customer}-%",)) for customer in range(3)] == [1, 1, 1]
    # The keys ran side by side: the limit is per key, not per queue.
    assert scalar(conn, overlap, ("c%",)) >= 2

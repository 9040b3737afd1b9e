"""Tenant quotas and usage (issue #14 item 5, schema 0026): max_queued and runs_per_day refused
at every entry point (plain INSERT, COPY, Python single and bulk, REST single and batch, the
CLI, the beat) with nothing inserted; exact with 8 enqueuers racing for the last slots; quotas
set by SQL, CLI and REST with bad values refused; usage folded by the leader against a count
made from the runs."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import date, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsched import quotas
from pgsched.app import App
from pgsched.errors import InvalidInput, QuotaExceeded
from pgsched.quotas import fold_usage, list_usage, parse_quota, retry_after_s, set_tenant
from tests.support.api import Api, ok
from tests.support.beat import fire, job_row
from tests.support.cli import assert_one_error_line, cli_in_process, run_cli
from tests.support.db import scalar
from tests.support.generated import EXAMPLES
from tests.support.inprocess import finish as finish_all

UTC = timezone.utc
BAD_QUOTAS = ["-1", "abc", "1.5", "", str(2**31), "0x10"]
BAD_NAMES = ["bad name!", ".dot-first", "x" * 64, "tab\tname"]


def quota_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT name, max_queued, runs_per_day FROM pgsched.tenants ORDER BY name").fetchall()


def runs_of(conn: psycopg.Connection, tenant: str) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE tenant = %s", (tenant,)))


def insert_runs(conn: psycopg.Connection, tenant: str | None, n: int) -> None:
    conn.execute("INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', %s FROM generate_series(1, %s)", (tenant, n))


# ---- SQL: a plain INSERT, a COPY


def test_a_plain_insert_over_max_queued_is_refused_whole_with_its_sqlstate_naming_the_quota(
    conn: psycopg.Connection,
) -> None:
    conn.execute("INSERT INTO pgsched.tenants (name, max_queued) VALUES ('acme', 3)")
    insert_runs(conn, "acme", 2)
    with pytest.raises(psycopg.Error) as refused:
        insert_runs(conn, "acme", 2)
    error = refused.value
    assert error.sqlstate == "PS429" and error.diag.column_name == "max_queued"
    assert "tenant acme is over its quota max_queued = 3: 2 runs queued, this statement adds 2" in str(error)
    assert runs_of(conn, "acme") == 2
    insert_runs(conn, "acme", 1)  # the last slot
    insert_runs(conn, "other", 10)  # a tenant without a quota, and runs without a tenant, are not limited
    insert_runs(conn, None, 10)
    assert runs_of(conn, "acme") == 3


def test_runs_started_free_their_slots_and_a_quota_of_zero_admits_nothing(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO pgsched.tenants (name, max_queued) VALUES ('acme', 2), ('frozen', 0)")
    insert_runs(conn, "acme", 2)
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 minute' WHERE tenant = 'acme'"
    )
    insert_runs(conn, "acme", 2)
    with pytest.raises(psycopg.Error, match="max_queued = 0"):
        insert_runs(conn, "frozen", 1)


def test_runs_per_day_counts_the_runs_created_today_before_the_quota_was_set(conn: psycopg.Connection) -> None:
    insert_runs(conn, "acme", 4)
    conn.execute("INSERT INTO pgsched.tenants (name, runs_per_day) VALUES ('acme', 5)")
    with pytest.raises(psycopg.Error) as refused:
        insert_runs(conn, "acme", 2)
    assert refused.value.diag.column_name == "runs_per_day" and "4 runs created today" in str(refused.value)
    conn.execute("UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE tenant = 'acme'")
    insert_runs(conn, "acme", 1)  # finished runs still count: the day's quota is on creations
    with pytest.raises(psycopg.Error, match="runs_per_day = 5: 5 runs created today"):
        insert_runs(conn, "acme", 1)
    assert runs_of(conn, "acme") == 5


def test_a_copy_over_the_quota_inserts_nothing(conn: psycopg.Connection) -> None:
    conn.execute("INSERT INTO pgsched.tenants (name, max_queued) VALUES ('acme', 3)")
    with pytest.raises(psycopg.Error, match="max_queued = 3"):
        with conn.cursor().copy("COPY pgsched.runs (task, tenant) FROM STDIN") as copy:
            for _ in range(4):
                copy.write_row(("noop", "acme"))
    assert runs_of(conn, "acme") == 0


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ("('acme', -1, NULL)", psycopg.errors.CheckViolation),
        ("('acme', NULL, -1)", psycopg.errors.CheckViolation),
        ("('acme', 10000000000, NULL)", psycopg.errors.NumericValueOutOfRange),
        ("('bad name!', 5, NULL)", psycopg.errors.CheckViolation),
        ("('', 5, NULL)", psycopg.errors.CheckViolation),
    ],
)
def test_sql_refuses_a_quota_no_check_could_apply(conn: psycopg.Connection, values: str, error: type) -> None:
    with pytest.raises(error):
        conn.execute(f"INSERT INTO pgsched.tenants (name, max_queued, runs_per_day) VALUES {values}".encode())
    assert quota_rows(conn) == []


# ---- Python


def test_python_enqueue_and_enqueue_many_raise_quota_exceeded_and_insert_nothing(
    app: App, conn: psycopg.Connection
) -> None:
    set_tenant(conn, "acme", max_queued=3)
    app.enqueue_many("noop", [{}, {}], tenant="acme")
    with pytest.raises(QuotaExceeded) as refused:
        app.enqueue_many("noop", [{}, {}], tenant="acme")
    error = refused.value
    assert (error.tenant, error.quota, error.limit, error.count, error.adding) == ("acme", "max_queued", 3, 2, 2)
    app.enqueue("noop", {}, tenant="acme")
    with pytest.raises(QuotaExceeded, match="tenant acme is over its quota max_queued = 3"):
        app.enqueue("noop", {}, tenant="acme")

    async def refused_async() -> None:
        with pytest.raises(QuotaExceeded):
            await app.enqueue_async("noop", {}, tenant="acme")
        with pytest.raises(QuotaExceeded):
            await app.enqueue_many_async("noop", [{}], tenant="acme")
        await app.aclose()

    asyncio.run(refused_async())
    assert runs_of(conn, "acme") == 3


def test_a_refused_enqueue_inside_the_callers_transaction_leaves_it_usable_after_a_rollback(app: App, dsn: str) -> None:
    with psycopg.connect(dsn) as own:
        set_tenant(own, "acme", runs_per_day=1)
        own.commit()
        app.enqueue("noop", {}, tenant="acme", conn=own)
        with pytest.raises(QuotaExceeded):
            app.enqueue("noop", {}, tenant="acme", conn=own)
        own.rollback()
        app.enqueue("noop", {}, tenant="acme", conn=own)  # the first was rolled back with the refusal
        own.commit()


def test_retry_after_is_the_next_utc_midnight_for_runs_per_day_and_short_for_max_queued() -> None:
    at = datetime(2026, 12, 2, 23, 59, 30, tzinfo=UTC)
    per_day = QuotaExceeded("x", tenant="t", quota="runs_per_day", limit=1, count=1, adding=1)
    queued = QuotaExceeded("x", tenant="t", quota="max_queued", limit=1, count=1, adding=1)
    assert retry_after_s(per_day, at) == 30
    assert retry_after_s(queued, at) == quotas.MAX_QUEUED_RETRY_S


# ---- the race: 8 enqueuers on their own connections for the last slots


@pytest.mark.parametrize("quota", ["max_queued", "runs_per_day"])
def test_eight_concurrent_enqueuers_never_get_more_runs_in_than_the_quota(
    dsn: str, conn: psycopg.Connection, quota: str
) -> None:
    limit = 50
    set_tenant(conn, "acme", **{quota: limit})
    start = threading.Barrier(8)
    admitted = [0] * 8
    errors: list[BaseException] = []

    def enqueuer(index: int) -> None:
        batch = 1 + index % 3  # singles and small batches, each all or nothing
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                start.wait()
                for _ in range(40):
                    try:
                        insert_runs(own, "acme", batch)
                        admitted[index] += batch
                    except psycopg.Error as exc:
                        assert exc.sqlstate == "PS429", exc
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=enqueuer, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert runs_of(conn, "acme") == sum(admitted) <= limit
    assert sum(admitted) >= limit - 2  # refused only for want of room for a whole batch (at most 3)


# ---- REST


def test_rest_enqueue_over_a_quota_is_429_with_retry_after_naming_the_quota(api: Api, conn: psycopg.Connection) -> None:
    set_tenant(conn, "acme", max_queued=2)
    ok(api.post("/runs/batch", json={"task": "noop", "args": [{}, {}]}, as_="acme"), 201)
    response = api.post("/runs", json={"task": "noop", "args": {}}, as_="acme")
    assert response.status_code == 429 and response.headers["Retry-After"] == str(quotas.MAX_QUEUED_RETRY_S)
    body = response.json()
    assert body["status_code"] == 429 and "max_queued = 2" in body["detail"]
    assert body["errors"][0]["field"] == "max_queued"
    set_tenant(conn, "acme", max_queued=None, runs_per_day=3)
    response = api.post("/runs/batch", json={"task": "noop", "args": [{}, {}]}, as_="acme")
    assert response.status_code == 429 and response.json()["errors"][0]["field"] == "runs_per_day"
    assert 0 < int(response.headers["Retry-After"]) <= 86400
    assert runs_of(conn, "acme") == 2


def test_rest_reads_and_patches_tenants_for_admins_and_a_tenant_key_reads_its_own(
    api: Api, conn: psycopg.Connection
) -> None:
    assert ok(api.get("/tenants/acme"))["max_queued"] is None
    patched = ok(api.patch("/tenants/acme", json={"max_queued": 5, "runs_per_day": 100}))
    assert (patched["max_queued"], patched["runs_per_day"], patched["queued"]) == (5, 100, 0)
    assert ok(api.get("/tenants/acme", as_="acme-read"))["max_queued"] == 5
    assert [t["name"] for t in ok(api.get("/tenants"))["items"]] == ["acme"]
    assert api.get("/tenants/beta", as_="acme").status_code == 403
    assert api.get("/tenants", as_="acme").status_code == 403
    assert api.patch("/tenants/acme", json={"max_queued": 50}, as_="acme").status_code == 403
    assert api.patch("/tenants/acme", json={"max_queued": 50}, as_="write").status_code == 403
    assert ok(api.patch("/tenants/acme", json={"runs_per_day": None}))["runs_per_day"] is None
    assert quota_rows(conn) == [("acme", 5, None)]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/tenants/acme", {"max_queued": -1}, 400),
        ("/tenants/acme", {"max_queued": "abc"}, 400),
        ("/tenants/acme", {"runs_per_day": 2**31}, 400),
        ("/tenants/acme", {"max_running": 0}, 400),  # at least 1, as a queue's or a task's (0033)
        ("/tenants/acme", {"max_running": -1}, 400),
        ("/tenants/acme", {"max_running": "abc"}, 400),
        ("/tenants/acme", {}, 422),
        ("/tenants/bad%20name!", {"max_queued": 5}, 422),
        ("/tenants/" + "x" * 64, {"max_queued": 5}, 422),
    ],
)
def test_rest_refuses_bad_quotas_with_a_json_error_and_writes_nothing(
    api: Api, conn: psycopg.Connection, path: str, body: dict[str, Any], status: int
) -> None:
    response = api.patch(path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert quota_rows(conn) == []


json_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)


def valid_quota(value: Any, least: int = 0) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and least <= value <= 2**31 - 1)


@EXAMPLES
@given(body=st.dictionaries(st.sampled_from(["max_queued", "runs_per_day", "max_running"]), json_values, max_size=3))
def test_rest_patch_stores_exactly_what_is_valid_or_refuses_with_4xx(
    api: Api, conn: psycopg.Connection, body: dict[str, Any]
) -> None:
    conn.execute("DELETE FROM pgsched.tenants")
    valid = bool(body) and all(valid_quota(value, 1 if key == "max_running" else 0) for key, value in body.items())
    response = api.patch("/tenants/acme", json=body)
    if not valid:
        assert 400 <= response.status_code < 500 and response.json()["detail"], response.text
        assert quota_rows(conn) == []
        return
    assert response.status_code == 200, response.text
    assert quota_rows(conn) == [("acme", body.get("max_queued"), body.get("runs_per_day"))]
    assert scalar(conn, "SELECT max_running FROM pgsched.tenants") == body.get("max_running")


# ---- CLI


def test_cli_sets_and_lists_quotas_and_an_enqueue_over_one_is_one_line(dsn: str, conn: psycopg.Connection) -> None:
    assert run_cli(dsn, "tenants", "set", "acme", "--max-queued", "1", "--runs-per-day", "10").returncode == 0
    listed = run_cli(dsn, "tenants", "list", "--json")
    assert listed.returncode == 0 and '"max_queued": 1' in listed.stdout, listed
    assert run_cli(dsn, "enqueue", "noop", "--tenant", "acme").returncode == 0
    assert_one_error_line(
        run_cli(dsn, "enqueue", "noop", "--tenant", "acme"), "tenant acme is over its quota max_queued"
    )
    assert run_cli(dsn, "tenants", "set", "acme", "--max-queued", "none").returncode == 0
    assert quota_rows(conn) == [("acme", None, 10)]
    assert runs_of(conn, "acme") == 1


def test_cli_stats_shows_each_tenants_quotas_and_counts_and_its_json_stays_the_queues(
    dsn: str, conn: psycopg.Connection
) -> None:
    assert "tenants" not in run_cli(dsn, "stats").stdout  # no tenant has quotas: no table
    set_tenant(conn, "acme", max_queued=5, max_running=2, runs_per_day=100)
    conn.execute("INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', 'acme' FROM generate_series(1, 3)")
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 hour' WHERE id = (SELECT min(id) FROM pgsched.runs)"
    )
    shown = run_cli(dsn, "stats")
    assert shown.returncode == 0, shown.stderr
    tenants_table = shown.stdout[shown.stdout.index("tenants") :]
    row = next(line for line in tenants_table.splitlines() if "acme" in line)
    # name, max_queued, queued, max_running, running, runs_per_day, created_today
    assert [cell.strip() for cell in row.strip("│┃ ").split("│")] == ["acme", "5", "2", "2", "1", "100", "3"]
    as_json = run_cli(dsn, "stats", "--json")
    assert [queue["queue"] for queue in json.loads(as_json.stdout)] == ["default"]  # scripts' shape kept


@pytest.mark.parametrize("value", BAD_QUOTAS)
def test_cli_refuses_a_bad_quota_in_one_line_and_writes_nothing(dsn: str, conn: psycopg.Connection, value: str) -> None:
    assert_one_error_line(
        run_cli(dsn, "tenants", "set", "acme", "--runs-per-day", value), "runs_per_day must be an integer from 0"
    )
    assert quota_rows(conn) == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_cli_refuses_a_bad_tenant_name_in_one_line_and_writes_nothing(
    dsn: str, conn: psycopg.Connection, name: str
) -> None:
    assert_one_error_line(run_cli(dsn, "tenants", "set", name, "--max-queued", "5"), "is not a valid name")
    assert_one_error_line(run_cli(dsn, "usage", "--tenant", name), "is not a valid name")
    assert quota_rows(conn) == []


def test_cli_set_without_a_quota_and_usage_with_a_bad_date_are_refused(dsn: str) -> None:
    assert_one_error_line(run_cli(dsn, "tenants", "set", "acme"), "nothing to change")
    assert_one_error_line(run_cli(dsn, "usage", "--since", "2026-13-01"), "since must be a date")


quota_texts = st.one_of(
    st.integers(-(2**40), 2**40).map(str), st.sampled_from(["none", "NONE", " 7 ", "0x10", "1e3"]), st.text(max_size=12)
)


@EXAMPLES
@given(text=quota_texts)
def test_cli_set_max_queued_stores_exactly_the_number_given_or_refuses_in_one_line(
    dsn: str, conn: psycopg.Connection, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    conn.execute("DELETE FROM pgsched.tenants")
    try:
        expected: Any = parse_quota("max_queued", text)
    except InvalidInput:
        expected = InvalidInput
    code = cli_in_process(["tenants", "set", "acme", "--max-queued", text], dsn, capsys)
    if expected is InvalidInput:
        assert code != 0 and quota_rows(conn) == []
    else:
        assert code == 0 and quota_rows(conn) == [("acme", expected, None)]


# ---- the beat


def test_a_job_over_its_tenants_quota_skips_the_fire_time_and_stays_enabled(dsn: str, conn: psycopg.Connection) -> None:
    t0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, every_s, tenant, next_run_at) VALUES ('tick', 'noop', 60, 'acme', %s)",
        (t0,),
    )
    set_tenant(conn, "acme", max_queued=1)
    fire(dsn, t0)
    fire(dsn, t0 + timedelta(seconds=60))  # over the quota: skipped, not disabled
    job = job_row(conn, "tick")
    assert job["enabled"] and "max_queued = 1" in job["last_error"]
    assert job["next_run_at"] == t0 + timedelta(seconds=120)
    assert runs_of(conn, "acme") == 1
    conn.execute("DELETE FROM pgsched.runs")
    fire(dsn, t0 + timedelta(seconds=120))  # room again: it fires, and the error is cleared
    assert runs_of(conn, "acme") == 1 and job_row(conn, "tick")["last_error"] is None


# ---- usage


def finish(conn: psycopg.Connection, tenant: str, status: str, n: int, at: datetime, *, attempts: int = 1) -> None:
    """``n`` runs of ``tenant`` finished ``status`` at ``at`` after ``attempts`` attempts of 2 s
    each (the earlier ones failed, with their errors entries as the worker writes them)."""
    errors = [
        {"attempt": i, "at": (at - timedelta(seconds=10 * i)).isoformat(), "type": "Boom", "message": "x",
         "started_at": (at - timedelta(seconds=10 * i + 2)).isoformat()}
        for i in range(1, attempts)
    ]  # fmt: skip
    if status == "failed":  # its last attempt failed too: an entry for it
        errors.append(
            {"attempt": attempts, "at": at.isoformat(), "started_at": (at - timedelta(seconds=2)).isoformat()}
        )
    insert_runs(conn, tenant, n)
    conn.execute(
        "UPDATE pgsched.runs SET status = %s, attempt = %s, started_at = %s, finished_at = %s, errors = %s"
        " WHERE tenant = %s AND status = 'queued'",
        (status, attempts, at - timedelta(seconds=2), at, psycopg.types.json.Jsonb(errors), tenant),
    )


def test_usage_folded_by_the_leader_matches_a_count_made_from_the_runs(conn: psycopg.Connection) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    conn.execute("UPDATE pgsched.tenant_usage_fold SET finished_until = %s", (start,))
    finish(conn, "acme", "succeeded", 3, start + timedelta(minutes=1))
    finish(conn, "acme", "failed", 2, start + timedelta(minutes=1), attempts=3)
    finish(conn, "acme", "succeeded", 1, start + timedelta(minutes=2), attempts=2)
    finish(conn, "beta", "cancelled", 4, start + timedelta(minutes=2), attempts=0)
    insert_runs(conn, "acme", 5)  # still queued: created, nothing else yet
    insert_runs(conn, None, 7)  # no tenant: no usage

    assert asyncio.run(fold_usage_on(conn)) == 2
    assert asyncio.run(fold_usage_on(conn)) == 0  # a second round counts nothing twice
    today = datetime.now(UTC).date()
    figures = {row["tenant"]: row for row in list_usage(conn, since=today - timedelta(days=1))}
    counted = conn.execute(
        "SELECT tenant, count(*), coalesce(sum(attempt), 0), count(*) FILTER (WHERE status = 'succeeded'),"
        " count(*) FILTER (WHERE status = 'failed'), count(*) FILTER (WHERE status = 'cancelled')"
        " FROM pgsched.runs_all WHERE tenant IS NOT NULL GROUP BY tenant ORDER BY tenant"
    ).fetchall()
    assert [
        (t, f["created"], f["started"], f["succeeded"], f["failed"], f["cancelled"]) for t, f in sorted(figures.items())
    ] == [tuple(row) for row in counted]
    # 2 s per attempt: 3 + 2x3 + 1x2 attempts for acme, none for beta's cancelled runs.
    assert figures["acme"]["task_s"] == pytest.approx(2 * (3 + 6 + 2))
    assert figures["beta"]["task_s"] == 0 and figures["acme"]["day"] == today


async def fold_usage_on(conn: psycopg.Connection) -> int:
    async with await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as aconn:
        return await fold_usage(aconn)


def test_usage_is_read_by_admins_for_all_and_by_a_tenant_key_for_its_own(api: Api, conn: psycopg.Connection) -> None:
    insert_runs(conn, "acme", 2)
    insert_runs(conn, "beta", 1)
    assert {(u["tenant"], u["created"]) for u in ok(api.get("/usage"))["items"]} == {("acme", 2), ("beta", 1)}
    assert [u["tenant"] for u in ok(api.get("/usage?tenant=beta"))["items"]] == ["beta"]
    assert [u["tenant"] for u in ok(api.get("/usage", as_="acme-read"))["items"]] == ["acme"]
    assert api.get("/usage?tenant=beta", as_="acme").status_code == 403
    assert api.get("/usage", as_="read").status_code == 403  # all tenants' bills: admin only
    assert api.get("/usage?since=yesterday").status_code == 422


def test_cli_usage_prints_the_days_figures(dsn: str, conn: psycopg.Connection) -> None:
    insert_runs(conn, "acme", 3)
    listed = run_cli(dsn, "usage", "--tenant", "acme", "--since", date.today().replace(day=1).isoformat(), "--json")
    assert listed.returncode == 0 and '"created": 3' in listed.stdout, listed


def test_two_leaders_folding_at_once_count_each_run_once(conn: psycopg.Connection) -> None:
    start = datetime.now(UTC) - timedelta(minutes=5)
    conn.execute("UPDATE pgsched.tenant_usage_fold SET finished_until = %s", (start,))
    finish(conn, "acme", "succeeded", 20, start + timedelta(minutes=1))

    async def both() -> None:
        async with (
            await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as a,
            await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as b,
        ):
            await asyncio.gather(fold_usage(a), fold_usage(b))

    asyncio.run(both())
    (acme,) = list_usage(conn, since=start.date())
    assert (acme["created"], acme["started"], acme["succeeded"]) == (20, 20, 20)


def test_a_repeatable_read_enqueuer_racing_another_fails_to_serialize_rather_than_exceed(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as setup:
        set_tenant(setup, "acme", max_queued=1)
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        first.execute("SELECT 1")  # its snapshot is taken: the other's run is not in it
        insert_runs(second, "acme", 1)
        with pytest.raises(psycopg.errors.SerializationFailure):
            insert_runs(first, "acme", 1)
        first.rollback()
        assert runs_of(second, "acme") == 1


def test_the_beat_leaders_maintenance_round_folds_the_usage(dsn: str, conn: psycopg.Connection) -> None:
    from psycopg_pool import AsyncConnectionPool

    from pgsched.beat import Beat

    start = datetime.now(UTC) - timedelta(minutes=5)
    conn.execute("UPDATE pgsched.tenant_usage_fold SET finished_until = %s", (start,))
    finish(conn, "acme", "failed", 2, start + timedelta(minutes=1), attempts=3)

    async def one_round() -> None:
        async with AsyncConnectionPool(dsn, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
            await Beat(dsn)._maintain(pool)

    asyncio.run(one_round())
    assert scalar(conn, "SELECT count(*) FROM pgsched.tenant_usage_log") == 0  # folded
    figures = conn.execute("SELECT created, started, failed FROM pgsched.tenant_usage WHERE tenant = 'acme'")
    assert figures.fetchall() == [(2, 6, 2)]


def test_usage_of_runs_a_real_worker_ran_matches_a_count_from_the_runs(
    app: App, dsn: str, conn: psycopg.Connection
) -> None:
    @app.task
    async def quick() -> None:
        await asyncio.sleep(0.05)

    @app.task(max_attempts=2, retry_backoff=0.05)
    async def flaky() -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("boom")

    conn.execute("UPDATE pgsched.tenant_usage_fold SET finished_until = now() - interval '1 minute'")
    ids = app.enqueue_many("quick", [{}] * 3, tenant="acme") + app.enqueue_many("flaky", [{}] * 2, tenant="acme")
    finish_all(app, dsn, *ids, concurrency=5)
    later = scalar(conn, "SELECT now() + interval '2 minutes'")  # every finish is past the fold's lag

    async def fold() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            await fold_usage(aconn, now=later)

    asyncio.run(fold())
    (acme,) = list_usage(conn, tenant="acme", since=datetime.now(UTC).date())
    counted = conn.execute(
        "SELECT count(*), sum(attempt), count(*) FILTER (WHERE status = 'succeeded'),"
        " count(*) FILTER (WHERE status = 'failed') FROM pgsched.runs_all WHERE tenant = 'acme'"
    ).fetchone()
    assert (acme["created"], acme["started"], acme["succeeded"], acme["failed"]) == tuple(counted) == (5, 7, 3, 2)
    # 3 x 50 ms and 4 x 20 ms of sleeping, and each attempt's bookkeeping on top (well under 1 s each).
    assert 3 * 0.05 + 4 * 0.02 <= acme["task_s"] < 3 * 0.05 + 4 * 0.02 + 7 * 1.0

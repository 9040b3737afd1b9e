"""The API's lists and numbers against a real database: GET /runs filters (job, created and
finished windows) with keyset pages, GET /jobs pages, the queues' throughput of the last minute,
and the duration histograms of /metrics checked with prometheus_client's own parser."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from pgsched.api.metrics import DURATION_BUCKETS_S, HISTOGRAM_WINDOW_S
from pgsched.cli.main import cli
from pgsched.errors import InvalidInput
from pgsched.runs import ARGS_SCAN_WINDOW
from tests.support.api import Api, ok
from tests.support.db import insert_restored
from tests.support.metrics import Samples, metric_samples, value_of

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)


def insert_run(conn: psycopg.Connection, **columns: Any) -> int:
    """A run row with the given columns (the table's defaults for the rest)."""
    columns = {"task": "t", **columns}
    names = ", ".join(columns)
    values = ", ".join(f"%({name})s" for name in columns)
    sql = f"INSERT INTO pgsched.runs ({names}) VALUES ({values}) RETURNING id"
    return insert_restored(conn, sql.encode(), columns).fetchone()[0]  # type: ignore[index]


def run_ids(api: Api, as_: str = "read", **params: Any) -> list[int]:
    """Every run the filters select, following `next` page by page."""
    ids: list[int] = []
    cursor = None
    while True:
        page = ok(api.get("/runs", params={**params, **({"cursor": cursor} if cursor else {})}, as_=as_))
        ids += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            return ids


# ---- GET /runs filters


def test_get_runs_filters_by_the_scheduled_jobs_name(api: Api, conn: psycopg.Connection):
    ok(api.post("/jobs", json={"name": "nightly", "task": "report", "every": 3600}), 201)
    ok(api.post("/jobs", json={"name": "hourly", "task": "report", "every": 60}), 201)
    nightly = [ok(api.post("/jobs/nightly/trigger"), 201)["id"] for _ in range(3)]
    hourly = ok(api.post("/jobs/hourly/trigger"), 201)["id"]
    ok(api.post("/runs", json={"task": "report"}), 201)  # same task, no job

    assert run_ids(api, job="nightly") == sorted(nightly, reverse=True)
    assert run_ids(api, job="hourly") == [hourly]
    assert run_ids(api, job="nightly", limit=2) == sorted(nightly, reverse=True), "pages keep the filter"
    assert run_ids(api, job="no-such-job") == []
    assert run_ids(api, job="nightly", status="cancelled") == []


def test_get_runs_filters_by_half_open_created_and_finished_windows(api: Api, conn: psycopg.Connection):
    hour = timedelta(hours=1)
    created = [insert_run(conn, created_at=T0 + i * hour) for i in range(5)]  # T0 .. T0+4h, unfinished
    finished = [
        insert_run(conn, created_at=T0, status="succeeded", started_at=T0, finished_at=T0 + i * hour)
        for i in range(1, 4)
    ]  # finished at T0+1h .. T0+3h

    def at(hours: int) -> str:
        return (T0 + hours * hour).isoformat().replace("+00:00", "Z")

    # *_after includes its instant, *_before excludes it: [after, before).
    assert run_ids(api, created_after=at(1), created_before=at(3)) == [created[2], created[1]]
    assert run_ids(api, created_after=at(4)) == [created[4]]
    assert run_ids(api, created_before=at(1)) == [*reversed(finished), created[0]]
    assert run_ids(api, finished_after=at(2)) == [finished[2], finished[1]]
    assert run_ids(api, finished_before=at(2)) == [finished[0]]
    assert run_ids(api, finished_after=at(1), finished_before=at(3), status="succeeded") == [finished[1], finished[0]]
    # Any offset is the same instant: T0+2h written in UTC+02:00 (a '+' must be URL-encoded: params do it).
    assert run_ids(
        api, created_after=(T0 + 2 * hour).astimezone(timezone(2 * hour)).isoformat(), created_before=at(3)
    ) == [created[2]]


def test_filtered_pages_follow_next_to_the_last_match(api: Api, conn: psycopg.Connection):
    wanted = []
    for i in range(10):  # interleave matching and non-matching runs, so pages skip rows
        queue = "a" if i % 2 == 0 else "b"
        run_id = insert_run(conn, queue=queue, created_at=T0 + timedelta(minutes=i))
        if queue == "a" and i >= 2:
            wanted.append(run_id)
    pages = []
    cursor = None
    while True:
        params = {"queue": "a", "created_after": "2030-01-01T00:02:00Z", "limit": 2}
        page = ok(api.get("/runs", params={**params, **({"cursor": cursor} if cursor else {})}))
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next"]
        if cursor is None:
            break
    assert [run_id for page in pages for run_id in page] == sorted(wanted, reverse=True)
    assert [len(page) for page in pages] == [2, 2, 0], "4 matches in pages of 2, then an empty last page"


def test_a_tenant_key_filters_only_among_its_own_runs(api: Api, conn: psycopg.Connection):
    ok(api.post("/jobs", json={"name": "acme-job", "task": "t", "every": 60}, as_="acme"), 201)
    acme = ok(api.post("/jobs/acme-job/trigger", as_="acme"), 201)["id"]
    beta = insert_run(conn, tenant="beta", created_at=T0)
    assert run_ids(api, as_="acme-read", job="acme-job") == [acme]
    assert run_ids(api, as_="acme-read", created_after="2029-12-31T00:00:00Z") == []
    assert run_ids(api, as_="beta", created_after="2029-12-31T00:00:00Z") == [beta]
    assert run_ids(api, as_="beta", job="acme-job") == []


def test_get_runs_filters_by_args_containment_and_the_last_errors_type(api: Api, conn: psycopg.Connection):
    timeout = {"type": "TimeoutError", "message": "slow", "traceback": "", "attempt": 1}
    wanted = insert_run(conn, args=json.dumps({"customer": 42, "plan": "pro"}))
    insert_run(conn, args=json.dumps({"customer": 7}))
    failed = insert_run(
        conn, args="{}", status="failed", attempt=1, errors=json.dumps([timeout]), started_at=T0, finished_at=T0
    )
    assert run_ids(api, args='{"customer": 42}') == [wanted]
    assert run_ids(api, args='{"customer": 42, "plan": "free"}') == []
    assert run_ids(api, error_type="TimeoutError") == [failed]
    assert run_ids(api, error_type="ValueError") == []


def test_an_args_search_reads_a_window_of_ids_a_page_and_goes_on_below_it(api: Api, conn: psycopg.Connection):
    """No index serves containment: a page reads at most ARGS_SCAN_WINDOW ids, so a search over
    a long history comes back in short (even empty) pages whose `next` goes on further down."""
    old = insert_run(conn, id=10, args=json.dumps({"customer": 42}))
    insert_run(conn, id=10 + 2 * ARGS_SCAN_WINDOW + 5, args=json.dumps({"customer": 7}))
    newest = insert_run(conn, id=10 + 2 * ARGS_SCAN_WINDOW + 6, args=json.dumps({"customer": 42}))
    pages, cursor = [], None
    while True:
        page = ok(api.get("/runs", params={"args": '{"customer": 42}', **({"cursor": cursor} if cursor else {})}))
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == [[newest], [], [old]], "the window's page, one with nothing in it, the oldest run's"
    unfiltered = ok(api.get("/runs"))
    assert [item["id"] for item in unfiltered["items"]][-1] == old and unfiltered["next"] is None


BAD_FILTERS = [  # (query, status, parameter named)
    ("created_after=yesterday", 400, "created_after"),
    ("finished_before=2030-13-01T00:00:00Z", 400, "finished_before"),
    ("created_before=2030-01-01T00:00:00", 400, "created_before"),  # no timezone: the same 400 as garbage
    ("finished_after=2030-01-01T00:00:00+01:00", 400, "finished_after"),  # '+' not URL-encoded: a space
    ("job=a%00b", 400, "job"),
    ("args=%5B1%5D", 400, "args"),  # a JSON array, not an object
    ("args=%7Bcustomer", 400, "args"),  # not JSON
    ("args=%7B%22a%22%3A%22%5Cu0000%22%7D", 400, "args"),  # {"a": "\u0000"}: jsonb has no NUL
]


@pytest.mark.parametrize(("query", "status", "field"), BAD_FILTERS, ids=[case[0] for case in BAD_FILTERS])
def test_a_bad_filter_value_is_a_4xx_naming_the_parameter(api: Api, query: str, status: int, field: str):
    response = api.get(f"/runs?{query}")
    assert response.status_code == status, response.text
    [error] = response.json()["errors"]
    assert (error["field"], error["source"]) == (field, "query"), error


def test_runs_list_on_the_command_line_takes_the_same_filters(dsn: str, conn: psycopg.Connection):
    old, new = insert_run(conn, created_at=T0), insert_run(conn, created_at=T0 + timedelta(days=1))
    runner = CliRunner()
    listed = runner.invoke(
        cli, ["runs", "list", "--created-after", "2030-01-01T12:00:00+00:00", "--json", "--dsn", dsn]
    )
    assert listed.exit_code == 0, listed.output
    assert [run["id"] for run in json.loads(listed.stdout)] == [new] and old != new
    customer = insert_run(conn, args=json.dumps({"customer": 42}))
    listed = runner.invoke(cli, ["runs", "list", "--args", '{"customer": 42}', "--json", "--dsn", dsn])
    assert listed.exit_code == 0, listed.output
    assert [run["id"] for run in json.loads(listed.stdout)] == [customer]
    not_json = runner.invoke(cli, ["runs", "list", "--args", "customer=42", "--dsn", dsn])
    assert isinstance(not_json.exception, InvalidInput) and "args must be a JSON object" in str(not_json.exception)
    naive = runner.invoke(cli, ["runs", "list", "--finished-before", "2030-01-01", "--dsn", dsn])
    assert isinstance(naive.exception, InvalidInput) and "--finished-before needs a timezone" in str(naive.exception)


# ---- GET /jobs pages


def test_get_jobs_pages_by_name_until_next_is_null(api: Api):
    names = ["e", "a", "d", "b", "c"]
    for name in names:
        ok(api.post("/jobs", json={"name": name, "task": "t", "every": 60}), 201)
    pages, cursor = [], None
    while True:
        page = ok(api.get("/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}, as_="read"))
        pages.append([job["name"] for job in page["items"]])
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == [["a", "b"], ["c", "d"], ["e"]]
    assert ok(api.get("/jobs", params={"cursor": "b"}))["items"][0]["name"] == "c", "the cursor is the last name"
    everything = ok(api.get("/jobs"))
    assert [job["name"] for job in everything["items"]] == sorted(names) and everything["next"] is None


def test_a_tenant_key_pages_through_its_own_jobs_only(api: Api):
    for name, key in (("a1", "acme"), ("b1", "beta"), ("a2", "acme"), ("b2", "beta"), ("a3", "acme")):
        ok(api.post("/jobs", json={"name": name, "task": "t", "every": 60}, as_=key), 201)
    first = ok(api.get("/jobs", params={"limit": 2}, as_="acme-read"))
    assert [job["name"] for job in first["items"]] == ["a1", "a2"] and first["next"] is not None
    rest = ok(api.get("/jobs", params={"limit": 2, "cursor": first["next"]}, as_="acme-read"))
    assert [job["name"] for job in rest["items"]] == ["a3"] and rest["next"] is None


@pytest.mark.parametrize(
    ("query", "field"), [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("cursor=a%00", "cursor")]
)
def test_bad_job_list_parameters_are_400_naming_them(api: Api, query: str, field: str):
    response = api.get(f"/jobs?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["field"] == field


# ---- GET /queues


def test_get_queues_reports_what_finished_in_the_last_minute(api: Api, conn: psycopg.Connection):
    def finished(status: str, seconds_ago: float, tenant: str | None = None) -> None:
        insert_run(
            conn,
            queue="q",
            status=status,
            tenant=tenant,
            finished_at=datetime.now(timezone.utc) - timedelta(seconds=seconds_ago),
        )

    for status, seconds_ago in (
        ("succeeded", 5),
        ("succeeded", 50),
        ("succeeded", 120),
        ("failed", 10),
        ("failed", 600),
        ("cancelled", 1),
    ):
        finished(status, seconds_ago)
    finished("succeeded", 5, tenant="acme")
    insert_run(conn, queue="q")  # queued, due now
    [q] = ok(api.get("/queues", as_="read"))["items"]
    assert (
        q["succeeded_last_minute"],
        q["failed_last_minute"],
        q["succeeded_last_hour"],
        q["failed"],
        q["queued"],
        q["due"],
        q["running"],
    ) == (3, 1, 4, 2, 1, 1, 0)
    assert q["oldest_queued_age_s"] is not None and q["oldest_queued_age_s"] >= 0
    [acme] = ok(api.get("/queues", as_="acme-read"))["items"]
    assert (acme["succeeded_last_minute"], acme["failed_last_minute"], acme["queued"]) == (1, 0, 0)


# ---- GET /metrics histograms


def buckets_of(samples: Samples, name: str, queue: str) -> dict[str, float]:
    return {labels["le"]: value for labels, value in samples[f"{name}_bucket"] if labels["queue"] == queue}


def expected_buckets(durations: list[float]) -> dict[str, float]:
    bounds = {repr(bound): float(sum(d <= bound for d in durations)) for bound in DURATION_BUCKETS_S}
    return {**bounds, "+Inf": float(len(durations))}


def test_metrics_histograms_count_the_runs_of_the_window_with_their_known_durations(api: Api, conn: psycopg.Connection):
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    # (wait, run) in seconds: a bound itself (0.5, 1.0) is counted in its bucket ("le" is inclusive),
    # 4000 s is above every bound (+Inf only).
    measured = [(0.02, 0.003), (1.0, 0.5), (0.0, 7.25), (45.0, 4000.0)]
    for i, (wait_s, run_s) in enumerate(measured):
        finished_at = now - timedelta(seconds=10 + i)
        started_at = finished_at - timedelta(seconds=run_s)
        due = started_at - timedelta(seconds=wait_s)
        insert_run(
            conn,
            queue="timed",
            status="succeeded" if i else "failed",
            attempt=1,
            created_at=due - timedelta(hours=1),
            run_at=due,
            started_at=started_at,
            finished_at=finished_at,
        )
    # Waited from created_at, not from a run_at before the run existed:
    early = now - timedelta(seconds=30)
    insert_run(
        conn,
        queue="timed",
        status="succeeded",
        run_at=early - timedelta(days=1),
        created_at=early,
        started_at=early + timedelta(seconds=2),
        finished_at=early + timedelta(seconds=3),
    )
    measured.append((2.0, 1.0))
    # Outside the window, and never started (cancelled while queued): not counted.
    old = now - timedelta(seconds=HISTOGRAM_WINDOW_S + 60)
    insert_run(conn, queue="timed", status="succeeded", started_at=old, finished_at=old)
    insert_run(conn, queue="timed", status="cancelled", finished_at=now)
    insert_run(conn, queue="idle")  # a queue with nothing finished: zeros, so its series stay

    samples = metric_samples(api)
    for name, index in (("pgsched_queue_wait_seconds", 0), ("pgsched_run_duration_seconds", 1)):
        durations = [pair[index] for pair in measured]
        assert buckets_of(samples, name, "timed") == expected_buckets(durations), name
        assert value_of(samples, f"{name}_count", "timed") == len(durations)
        assert math.isclose(value_of(samples, f"{name}_sum", "timed"), sum(durations), rel_tol=1e-9, abs_tol=1e-6)
        assert buckets_of(samples, name, "idle") == expected_buckets([])
        assert value_of(samples, f"{name}_count", "idle") == value_of(samples, f"{name}_sum", "idle") == 0


def test_metrics_histogram_buckets_are_cumulative_and_end_with_inf(api: Api, conn: psycopg.Connection):
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    for i in range(40):  # spread over the buckets
        insert_run(
            conn,
            queue=f"q{i % 3}",
            status="succeeded",
            run_at=now - timedelta(seconds=i * 7),
            created_at=now - timedelta(seconds=i * 7),
            started_at=now - timedelta(seconds=i * 3),
            finished_at=now,
        )
    text = api.get("/metrics").text
    samples = metric_samples(api)
    for name in ("pgsched_queue_wait_seconds", "pgsched_run_duration_seconds"):
        assert f"# TYPE {name} histogram" in text
        for queue in ("q0", "q1", "q2"):
            buckets = buckets_of(samples, name, queue)
            assert list(buckets) == [*map(repr, DURATION_BUCKETS_S), "+Inf"]
            values = list(buckets.values())
            assert values == sorted(values) and values[-1] == value_of(samples, f"{name}_count", queue) > 0


# ---- how the API runs its queries


def test_the_api_never_server_prepares_its_queries(api: Api):
    # A prepared list query can switch to PostgreSQL's generic plan, which scans every run
    # whatever the filters (see API_CONNECTION in pgsched/api/app.py).
    for _ in range(12):
        ok(api.get("/runs", params={"status": "queued"}))
        ok(api.get("/jobs"))
    pool = api.client.app.state.pool
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0] == 0
        assert conn.prepare_threshold is None

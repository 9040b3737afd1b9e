"""The REST API through the real app (Litestar's TestClient) against a real database: every
endpoint, idempotency, pagination, API keys and scopes, tenant isolation, bad input, readiness,
metrics, the `pgsched keys` commands, and `pgsched api` serving over HTTP."""

from __future__ import annotations

import json
import re
import urllib.request
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient
from typer.testing import CliRunner

from pgsched.api import ApiSettings, create_app
from pgsched.api import keys as api_keys
from pgsched.api.keys import ApiKeyNotFound
from pgsched.cli.main import cli
from pgsched.errors import InvalidInput
from pgsched.migrate import available, migrate
from pgsched.sql import queries
from tests.support.api import TEST_SETTINGS, Api, ReadonlyApi, count, make_keys, ok, serving_api
from tests.support.cli import run_cli
from tests.support.db import scratch_database
from tests.support.processes import free_port


@pytest.fixture(scope="module")
def readonly_api(postgresql_proc: Any) -> Iterator[ReadonlyApi]:
    """One database and app for the tests that write nothing (the bad-input cases check that they
    do not): a fresh database per test costs more than these tests themselves."""
    with scratch_database(postgresql_proc, "pgsched_api_readonly") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('j', 't', 60)")
            settings = ApiSettings(dsn=dsn, max_body_bytes=1024 * 1024, **TEST_SETTINGS)
            with TestClient(create_app(settings)) as client:
                yield Api(client, make_keys(conn)), conn


def db_run(conn: psycopg.Connection, run_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        row = cur.execute("SELECT * FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return row


# ---- operations


def test_health_and_ready_answer_without_a_key_on_a_migrated_database(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    assert ok(api.get("/health", as_=None)) == {"status": "ok"}
    assert ok(api.get("/ready", as_=None)) == {"status": "ready", "reason": None, "pending_migrations": []}


def test_ready_is_503_and_names_the_pending_migrations_on_an_unmigrated_database(empty_dsn: str):
    with TestClient(create_app(ApiSettings(dsn=empty_dsn))) as client:
        response = client.get("/ready")
        assert response.status_code == 503, response.text
        assert response.json()["pending_migrations"] == [f"{m.version}_{m.name}" for m in available()]
        assert client.get("/health").status_code == 200
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            migrate(conn)
        assert client.get("/ready").status_code == 200


def test_ready_is_503_and_requests_get_a_json_503_when_the_database_is_unreachable(unused_port: int):
    settings = ApiSettings(
        dsn=f"host=127.0.0.1 port={unused_port} dbname=none connect_timeout=1",
        pool_timeout_s=0.3,
        pool_min_size=0,
        auth=False,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable", ready.text
        runs = client.get("/runs")
        assert runs.status_code == 503 and "database is unavailable" in runs.json()["detail"], runs.text


@pytest.fixture
def unused_port() -> int:
    return free_port()


PROMETHEUS_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"\\]*",?)*\})? -?\d+(\.\d+)?(e[+-]?\d+)?$')


def test_metrics_are_prometheus_text_with_runs_by_queue_and_status(api: Api, conn: psycopg.Connection):
    ok(api.post("/runs/batch", json={"task": "t", "queue": "mail", "args": [{}, {}]}), 201)
    cancelled = ok(api.post("/runs", json={"task": "t", "queue": "mail"}), 201)["id"]
    ok(api.post(f"/runs/{cancelled}/cancel"))
    conn.execute("INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('h', 1, '{mail}', 8)")
    conn.execute(queries["rollup_refresh"], {"minutes": 3, "now": None})  # the beat's maintenance round

    response = api.get("/metrics", as_="read")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = response.text.splitlines()
    samples = [line for line in lines if not line.startswith("#")]
    assert samples and all(PROMETHEUS_SAMPLE.match(line) for line in samples), samples
    histograms = {line.split()[2] for line in lines if line.startswith("# TYPE ") and line.endswith(" histogram")}
    assert histograms == {"pgsched_queue_wait_seconds", "pgsched_run_duration_seconds"}  # see test_api_lists.py
    for family in {line.split("{")[0].split(" ")[0] for line in samples}:
        base = re.sub(r"_(bucket|sum|count)$", "", family)
        family, kind = (base, "histogram") if base in histograms else (family, "gauge")
        assert f"# TYPE {family} {kind}" in lines and any(line.startswith(f"# HELP {family} ") for line in lines)
    assert 'pgsched_runs{queue="mail",status="queued"} 2' in samples
    assert 'pgsched_runs{queue="mail",status="cancelled"} 1' in samples
    assert 'pgsched_runs{queue="mail",status="running"} 0' in samples
    assert "pgsched_workers 1" in samples and "pgsched_worker_slots 8" in samples


def test_the_openapi_document_is_public_and_every_operation_has_an_id(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    document = ok(api.get("/schema/openapi.json", as_=None))
    operations = {op["operationId"] for path in document["paths"].values() for op in path.values()}
    assert operations == {
        "health",
        "ready",
        "metrics",
        "createRun",
        "createRuns",
        "listRuns",
        "getRun",
        "cancelRun",
        "retryRun",
        "retryRuns",
        "cancelRuns",
        "listFailureGroups",
        "createJob",
        "listJobs",
        "getJob",
        "updateJob",
        "deleteJob",
        "pauseJob",
        "resumeJob",
        "triggerJob",
        "listTaskSettings",
        "getTaskSettings",
        "updateTaskSettings",
        "pauseTask",
        "resumeTask",
        "listQueues",
        "getQueueSettings",
        "updateQueueSettings",
        "pauseQueue",
        "resumeQueue",
        "queueThroughput",
        "listTenants",
        "getTenant",
        "updateTenant",
        "getUsage",
        "listWorkers",
        "createWorkflow",
        "listWorkflows",
        "getWorkflow",
        "cancelWorkflow",
    }
    assert document["components"]["securitySchemes"]["BearerAuth"]["scheme"] == "bearer"
    assert "Idempotency-Key" in json.dumps(document["paths"]["/runs"]["post"])
    errors = {
        (path, method, code): response["content"]["application/json"]["schema"].get("$ref")
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for code, response in operation["responses"].items()
        if code[0] in "45" and path != "/ready"
    }
    assert errors and set(errors.values()) == {"#/components/schemas/ErrorOut"}, errors


# ---- runs


def test_post_runs_queues_a_run_that_get_returns(api: Api, conn: psycopg.Connection):
    created = ok(
        api.post(
            "/runs",
            json={"task": "send", "args": {"to": "a@b.c"}, "queue": "mail", "priority": -5, "max_attempts": 7},
            as_="write",
        ),
        201,
    )
    assert (
        created["task"],
        created["args"],
        created["queue"],
        created["priority"],
        created["max_attempts"],
        created["status"],
        created["tenant"],
    ) == ("send", {"to": "a@b.c"}, "mail", -5, 7, "queued", None)
    assert ok(api.get(f"/runs/{created['id']}", as_="read")) == created
    assert db_run(conn, created["id"])["args"] == {"to": "a@b.c"}


def test_a_repeated_idempotency_key_returns_the_same_run_with_200(api: Api, conn: psycopg.Connection):
    first = api.post("/runs", json={"task": "charge"}, headers={"Idempotency-Key": "order-1"})
    again = api.post("/runs", json={"task": "charge"}, headers={"Idempotency-Key": "order-1"})
    other = api.post("/runs", json={"task": "charge"}, headers={"Idempotency-Key": "order-2"})
    assert (first.status_code, again.status_code, other.status_code) == (201, 200, 201)
    assert again.json() == first.json() and other.json()["id"] != first.json()["id"]
    assert count(conn, "runs") == 2


def test_post_runs_with_delay_or_run_at_makes_the_run_due_then(api: Api):
    at = datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    scheduled = ok(api.post("/runs", json={"task": "t", "run_at": at.isoformat()}), 201)
    assert datetime.fromisoformat(scheduled["run_at"]) == at
    delayed = ok(api.post("/runs", json={"task": "t", "delay": 3600}), 201)
    wait = datetime.fromisoformat(delayed["run_at"]) - datetime.fromisoformat(delayed["created_at"])
    assert timedelta(seconds=3599) < wait < timedelta(seconds=3601)


def test_post_runs_batch_queues_every_run_in_order_or_none(api: Api, conn: psycopg.Connection):
    ids = ok(api.post("/runs/batch", json={"task": "t", "args": [{"n": n} for n in range(5)], "queue": "bulk"}), 201)[
        "ids"
    ]
    assert [db_run(conn, run_id)["args"] for run_id in ids] == [{"n": n} for n in range(5)]
    refused = api.post("/runs/batch", json={"task": "t", "args": [{}, {}], "queue": "no such queue!"})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "queue"
    assert count(conn, "runs") == 5


def test_a_batch_of_10000_runs_is_accepted_and_one_more_is_refused(api: Api, conn: psycopg.Connection):
    assert len(ok(api.post("/runs/batch", json={"task": "t", "args": [{}] * 10_000}), 201)["ids"]) == 10_000
    refused = api.post("/runs/batch", json={"task": "t", "args": [{}] * 10_001})
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "args", refused.text
    assert count(conn, "runs") == 10_000


def test_get_runs_pages_newest_first_until_next_is_null(api: Api):
    ids = ok(api.post("/runs/batch", json={"task": "t", "args": [{}] * 7}), 201)["ids"]
    seen, cursor, pages = [], None, 0
    while True:
        page = ok(api.get("/runs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}, as_="read"))
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3


def test_get_runs_filters_by_status_queue_and_task(api: Api):
    a = ok(api.post("/runs", json={"task": "a", "queue": "q1"}), 201)["id"]
    b = ok(api.post("/runs", json={"task": "b", "queue": "q2"}), 201)["id"]
    ok(api.post(f"/runs/{b}/cancel"))

    def ids(**params: str) -> list[int]:
        return [item["id"] for item in ok(api.get("/runs", params=params))["items"]]

    assert (
        ids(status="queued"),
        ids(status="cancelled"),
        ids(queue="q2"),
        ids(task="a"),
        ids(task="a", queue="q2"),
    ) == ([a], [b], [b], [a], [])


def test_cancel_then_retry_a_run_and_the_state_conflicts_are_409(api: Api):
    run_id = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
    assert api.post(f"/runs/{run_id}/retry").status_code == 409  # queued: nothing to retry
    assert ok(api.post(f"/runs/{run_id}/cancel", as_="write"))["status"] == "cancelled"
    conflict = api.post(f"/runs/{run_id}/cancel")
    assert conflict.status_code == 409 and "cancelled" in conflict.json()["detail"]
    assert ok(api.post(f"/runs/{run_id}/retry", as_="write"))["status"] == "queued"


def test_cancelling_a_running_run_is_accepted_with_202_and_leaves_it_to_its_worker(api: Api, conn: psycopg.Connection):
    run_id = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
        (run_id,),
    )
    response = api.post(f"/runs/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "running", response.text


def test_unknown_runs_are_404(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    for method, path in (("GET", "/runs/999"), ("POST", "/runs/999/cancel"), ("POST", "/runs/999/retry")):
        response = api.call(method, path)
        assert response.status_code == 404 and response.json()["detail"] == "no run with id 999", path


# ---- jobs


def test_post_jobs_creates_a_job_with_its_next_run_and_five_fire_times(api: Api, conn: psycopg.Connection):
    body = {
        "name": "nightly",
        "task": "report",
        "cron": "30 2 * * *",
        "tz": "Europe/Berlin",
        "args": {"k": 1},
        "queue": "reports",
        "priority": 3,
        "misfire": "skip",
    }
    job = ok(api.post("/jobs", json=body, as_="write"), 201)
    upcoming = [datetime.fromisoformat(at) for at in job["upcoming"]]
    assert len(upcoming) == 5 and upcoming == sorted(upcoming) and len(set(upcoming)) == 5
    assert datetime.fromisoformat(job["next_run_at"]) == upcoming[0]
    assert all(at.astimezone(timezone(timedelta(hours=1))).hour in (1, 2, 3) for at in upcoming)
    assert (job["cron"], job["tz"], job["args"], job["queue"], job["priority"], job["misfire"], job["enabled"]) == (
        "30 2 * * *",
        "Europe/Berlin",
        {"k": 1},
        "reports",
        3,
        "skip",
        True,
    )
    replaced = api.post("/jobs", json={**body, "priority": 4})
    assert replaced.status_code == 200 and replaced.json()["priority"] == 4
    assert count(conn, "jobs") == 1


def test_get_jobs_lists_them_and_get_job_shows_one(api: Api):
    for name in ("b", "a"):
        ok(api.post("/jobs", json={"name": name, "task": "t", "every": 60}), 201)
    page = ok(api.get("/jobs", as_="read"))
    assert [job["name"] for job in page["items"]] == ["a", "b"] and page["next"] is None
    job = ok(api.get("/jobs/a", as_="read"))
    assert job["every_s"] == 60 and len(job["upcoming"]) == 5
    assert api.get("/jobs/zzz").status_code == 404


def test_patch_job_changes_the_given_fields_and_keeps_the_rest(api: Api):
    created = ok(api.post("/jobs", json={"name": "j", "task": "t", "cron": "0 * * * *", "queue": "q"}), 201)
    patched = ok(api.patch("/jobs/j", json={"priority": 9, "args": {"x": 1}}, as_="write"))
    assert (patched["priority"], patched["args"], patched["cron"], patched["queue"]) == (9, {"x": 1}, "0 * * * *", "q")
    assert patched["next_run_at"] == created["next_run_at"], "an unchanged schedule keeps its next fire time"
    switched = ok(api.patch("/jobs/j", json={"every": 30}))
    assert (switched["cron"], switched["every_s"], switched["priority"]) == (None, 30, 9)
    assert api.patch("/jobs/nope", json={"priority": 1}).status_code == 404


def test_pause_resume_trigger_and_delete_a_job(api: Api, conn: psycopg.Connection):
    job = ok(api.post("/jobs", json={"name": "j", "task": "t", "every": 3600, "args": {"a": 1}}), 201)
    assert ok(api.post("/jobs/j/pause", as_="write"))["enabled"] is False
    assert ok(api.post("/jobs/j/resume", as_="write"))["enabled"] is True
    run = ok(api.post("/jobs/j/trigger", as_="write"), 201)
    assert (run["job_id"], run["task"], run["args"], run["status"]) == (job["id"], "t", {"a": 1}, "queued")
    assert api.delete("/jobs/j", as_="write").status_code == 204
    assert api.get("/jobs/j").status_code == 404 and api.delete("/jobs/j").status_code == 404
    assert db_run(conn, run["id"])["job_id"] is None, "a deleted job's runs stay"
    for action in ("pause", "resume", "trigger"):
        assert api.post(f"/jobs/j/{action}").status_code == 404


# ---- queues and workers


def test_get_queues_reports_depth_and_failures_per_queue(api: Api, conn: psycopg.Connection):
    ok(api.post("/runs/batch", json={"task": "t", "queue": "a", "args": [{}, {}]}), 201)
    failed = ok(api.post("/runs", json={"task": "t", "queue": "b"}), 201)["id"]
    conn.execute("UPDATE pgsched.runs SET status = 'failed', finished_at = now() WHERE id = %s", (failed,))
    queues = {q["queue"]: q for q in ok(api.get("/queues", as_="read"))["items"]}
    assert (queues["a"]["queued"], queues["a"]["due"], queues["a"]["failed"]) == (2, 2, 0)
    assert (queues["b"]["queued"], queues["b"]["failed"], queues["b"]["oldest_queued_age_s"]) == (0, 1, None)


def test_get_workers_lists_live_workers_with_the_runs_they_hold(api: Api, conn: psycopg.Connection):
    worker = conn.execute(
        "INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('box', 42, '{a,b}', 4) RETURNING id"
    ).fetchone()[0]
    run_id = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', worker_id = %s, started_at = now(),"
        " lease_expires_at = now() + interval '1m'"
        " WHERE id = %s",
        (worker, run_id),
    )
    [listed] = ok(api.get("/workers", as_="read"))["items"]
    assert (
        listed["id"],
        listed["host"],
        listed["pid"],
        listed["queues"],
        listed["concurrency"],
        listed["running"],
    ) == (worker, "box", 42, ["a", "b"], 4, 1)


# ---- auth


def test_requests_without_a_valid_key_are_401(api: Api, conn: psycopg.Connection):
    for headers in (
        {},
        {"Authorization": "Bearer pgs_not-a-key"},
        {"Authorization": "Bearer "},
        {"Authorization": f"Basic {api.keys['admin']}"},
        {"Authorization": "Bearer nonsense"},
    ):
        response = api.get("/runs", as_=None, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith("Bearer") and response.json()["detail"]
    key_id = next(k["id"] for k in api_keys.list_keys(conn) if k["name"] == "write")
    assert api.get("/runs", as_="write").status_code == 200
    api_keys.revoke_key(conn, key_id)
    assert api.get("/runs", as_="write").status_code == 401


def test_every_route_except_health_ready_and_the_schema_needs_a_key(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    document = ok(api.get("/schema/openapi.json", as_=None))
    checked = 0
    for path, operations in document["paths"].items():
        concrete = path.replace("{run_id}", "1").replace("{name}", "j").replace("{workflow_id}", "1")
        for method in operations:
            response = api.call(method.upper(), concrete, as_=None, json={})
            expected = 401 if path not in ("/health", "/ready") else 200
            assert response.status_code == expected, (method, path, response.text)
            checked += 1
    assert checked == 40


def test_a_read_key_reads_but_cannot_change_anything(api: Api):
    run_id = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
    ok(api.post("/jobs", json={"name": "j", "task": "t", "every": 60}), 201)
    for path in ("/runs", f"/runs/{run_id}", "/jobs", "/jobs/j", "/queues", "/workers", "/metrics"):
        assert api.get(path, as_="read").status_code == 200, path
    for method, path, body in (
        ("POST", "/runs", {"task": "t"}),
        ("POST", "/runs/batch", {"task": "t", "args": [{}]}),
        ("POST", f"/runs/{run_id}/cancel", None),
        ("POST", f"/runs/{run_id}/retry", None),
        ("POST", "/jobs", {"name": "k", "task": "t", "every": 1}),
        ("PATCH", "/jobs/j", {"priority": 1}),
        ("DELETE", "/jobs/j", None),
        ("POST", "/jobs/j/pause", None),
        ("POST", "/jobs/j/trigger", None),
    ):
        response = api.call(method, path, as_="read", json=body)
        assert response.status_code == 403 and "scope is 'read'" in response.json()["detail"], (path, response.text)
    assert ok(api.get(f"/runs/{run_id}"))["status"] == "queued"


def test_without_auth_every_request_is_served_without_a_key(dsn: str):
    with TestClient(create_app(ApiSettings(dsn=dsn, auth=False))) as client:
        assert client.post("/runs", json={"task": "t"}).status_code == 201
        assert client.get("/workers").status_code == 200


# ---- tenants


def test_what_a_tenant_key_creates_is_stamped_with_its_tenant(api: Api, conn: psycopg.Connection):
    run = ok(api.post("/runs", json={"task": "t"}, as_="acme"), 201)
    batch = ok(api.post("/runs/batch", json={"task": "t", "args": [{}, {}]}, as_="acme"), 201)["ids"]
    job = ok(api.post("/jobs", json={"name": "acme-nightly", "task": "t", "every": 60}, as_="acme"), 201)
    triggered = ok(api.post("/jobs/acme-nightly/trigger", as_="acme"), 201)
    assert run["tenant"] == job["tenant"] == triggered["tenant"] == "acme"
    assert [db_run(conn, run_id)["tenant"] for run_id in [run["id"], *batch, triggered["id"]]] == ["acme"] * 4
    unscoped = ok(api.post("/runs", json={"task": "t"}), 201)
    assert unscoped["tenant"] is None


def test_a_tenant_key_sees_only_its_tenants_runs_and_jobs_and_others_are_404(api: Api):
    acme_run = ok(api.post("/runs", json={"task": "t", "queue": "acme-q"}, as_="acme"), 201)["id"]
    beta_run = ok(api.post("/runs", json={"task": "t", "queue": "beta-q"}, as_="beta"), 201)["id"]
    ok(api.post("/jobs", json={"name": "acme-job", "task": "t", "every": 60}, as_="acme"), 201)
    ok(api.post("/jobs", json={"name": "beta-job", "task": "t", "every": 60}, as_="beta"), 201)

    assert [r["id"] for r in ok(api.get("/runs", as_="acme-read"))["items"]] == [acme_run]
    assert [j["name"] for j in ok(api.get("/jobs", as_="acme-read"))["items"]] == ["acme-job"]
    assert [q["queue"] for q in ok(api.get("/queues", as_="acme-read"))["items"]] == ["acme-q"]
    for method, path in (
        ("GET", f"/runs/{beta_run}"),
        ("POST", f"/runs/{beta_run}/cancel"),
        ("POST", f"/runs/{beta_run}/retry"),
        ("GET", "/jobs/beta-job"),
        ("PATCH", "/jobs/beta-job"),
        ("POST", "/jobs/beta-job/pause"),
        ("POST", "/jobs/beta-job/resume"),
        ("POST", "/jobs/beta-job/trigger"),
        ("DELETE", "/jobs/beta-job"),
    ):
        response = api.call(method, path, as_="acme", json={"priority": 1} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
    # Job names are unique per tenant: acme's "beta-job" is its own, and tells it nothing of beta's.
    ok(api.post("/jobs", json={"name": "beta-job", "task": "mine", "every": 1}, as_="acme"), 201)
    assert api.get("/jobs/beta-job", params={"tenant": "beta"}, as_="acme").status_code == 404
    # beta's run and job are untouched, and a key without a tenant sees both tenants.
    assert ok(api.get(f"/runs/{beta_run}", as_="beta"))["status"] == "queued"
    assert ok(api.get("/jobs/beta-job", as_="beta"))["task"] == "t"
    assert {r["id"] for r in ok(api.get("/runs", as_="read"))["items"]} == {acme_run, beta_run}


def test_a_key_without_a_tenant_names_a_tenants_job_with_tenant_when_several_share_the_name(api: Api):
    ok(api.post("/jobs", json={"name": "sync", "task": "a", "every": 60}, as_="acme"), 201)
    # One job of that name: the name alone is enough (as before names were per tenant).
    assert ok(api.get("/jobs/sync"))["tenant"] == "acme"
    ok(api.post("/jobs", json={"name": "sync", "task": "b", "every": 60}, as_="beta"), 201)
    ambiguous = api.get("/jobs/sync")
    assert ambiguous.status_code == 409 and "say which tenant" in ambiguous.json()["detail"], ambiguous.text
    assert ok(api.get("/jobs/sync", params={"tenant": "beta"}))["task"] == "b"
    ok(api.post("/jobs/sync/pause", params={"tenant": "acme"}), 200)
    assert [(j["name"], j["tenant"], j["enabled"]) for j in ok(api.get("/jobs"))["items"]] == [
        ("sync", "acme", False),
        ("sync", "beta", True),
    ]
    # A job without a tenant is the admin's own: the name alone means it.
    ok(api.post("/jobs", json={"name": "sync", "task": "c", "every": 60}), 201)
    assert ok(api.get("/jobs/sync"))["task"] == "c"
    # Paging a page of one at a time visits each of the three once.
    names, cursor = [], None
    while True:
        page = ok(api.get("/jobs", params={"limit": 1, **({"cursor": cursor} if cursor else {})}))
        names += [(j["name"], j["tenant"]) for j in page["items"]]
        if (cursor := page["next"]) is None:
            break
    assert names == [("sync", None), ("sync", "acme"), ("sync", "beta")]
    assert api.get("/jobs/sync", params={"tenant": "bad tenant!"}).status_code == 400


def test_two_tenants_can_use_the_same_idempotency_key(api: Api):
    acme = api.post("/runs", json={"task": "t"}, headers={"Idempotency-Key": "k"}, as_="acme")
    beta = api.post("/runs", json={"task": "t"}, headers={"Idempotency-Key": "k"}, as_="beta")
    acme_again = api.post("/runs", json={"task": "t"}, headers={"Idempotency-Key": "k"}, as_="acme")
    assert (acme.status_code, beta.status_code, acme_again.status_code) == (201, 201, 200)
    assert acme.json()["id"] != beta.json()["id"] and acme_again.json()["id"] == acme.json()["id"]
    assert (acme.json()["tenant"], beta.json()["tenant"]) == ("acme", "beta")


def test_tenant_keys_are_refused_the_cluster_wide_workers_and_metrics(readonly_api: ReadonlyApi):
    api, _ = readonly_api
    for path in ("/workers", "/metrics"):
        response = api.get(path, as_="acme")
        assert response.status_code == 403 and "without a tenant" in response.json()["detail"], path


def test_the_queue_stats_view_and_the_apis_per_tenant_stats_have_one_definition(readonly_api: ReadonlyApi):
    _, conn = readonly_api
    assert not any(name.endswith("_tenant") for name in queries), "no query needs a per-tenant copy"
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM pgsched.queue_stats")
        view = [column.name for column in cur.description]
        cur.execute(queries["queue_list_stats"], {"tenant": "acme", "last_hour": True})
        api = [column.name for column in cur.description]
    # The same columns, and the queue's flow-control settings beside them (schema 0020, 0028); the
    # API gives the age in seconds, the view as an interval.
    settings = ["paused", "max_running", "rate", "burst", "key_max_running", "fair", "rate_per_s", "held_back"]
    stats = [column if column != "oldest_queued_age" else "oldest_queued_age_s" for column in view]
    assert sorted(api) == sorted(stats + settings)


# ---- bad input: a 4xx JSON body naming the field, never a 500, and nothing written


NAIVE = "2030-01-01T00:00:00"
BAD_INPUT = [  # (id, method, path, body (dict: JSON, bytes: raw), headers, status, field)
    ("malformed JSON", "POST", "/runs", b'{"task": ', {}, 400, "body"),
    ("body not UTF-8", "POST", "/runs", b'{"task": "\xff"}', {}, 400, "body"),
    ("empty body", "POST", "/runs", b"", {}, 400, "body"),
    ("body not an object", "POST", "/runs", [1, 2], {}, 400, "body"),
    ("task missing", "POST", "/runs", {"args": {}}, {}, 400, "task"),
    ("task empty", "POST", "/runs", {"task": " "}, {}, 422, "task"),
    ("task not a string", "POST", "/runs", {"task": 5}, {}, 400, "task"),
    ("args a list", "POST", "/runs", {"task": "t", "args": [1]}, {}, 400, "args"),
    ("args a string", "POST", "/runs", {"task": "t", "args": "x=1"}, {}, 400, "args"),
    ("priority out of range", "POST", "/runs", {"task": "t", "priority": 500}, {}, 422, "priority"),
    ("priority huge", "POST", "/runs", {"task": "t", "priority": 10**30}, {}, 422, "priority"),
    ("priority a word", "POST", "/runs", {"task": "t", "priority": "high"}, {}, 400, "priority"),
    ("priority a fraction", "POST", "/runs", {"task": "t", "priority": 1.5}, {}, 400, "priority"),
    ("queue with spaces", "POST", "/runs", {"task": "t", "queue": "my queue"}, {}, 422, "queue"),
    ("max_attempts zero", "POST", "/runs", {"task": "t", "max_attempts": 0}, {}, 422, "max_attempts"),
    ("max_attempts beyond integer", "POST", "/runs", {"task": "t", "max_attempts": 2**40}, {}, 400, "max_attempts"),
    ("run_at without timezone", "POST", "/runs", {"task": "t", "run_at": NAIVE}, {}, 422, "run_at"),
    ("run_at not a time", "POST", "/runs", {"task": "t", "run_at": "tomorrow"}, {}, 400, "run_at"),
    ("run_at and delay", "POST", "/runs", {"task": "t", "run_at": NAIVE + "Z", "delay": 1}, {}, 422, "run_at"),
    ("delay negative", "POST", "/runs", {"task": "t", "delay": -1}, {}, 422, "delay"),
    ("unknown field", "POST", "/runs", {"task": "t", "prio": 1}, {}, 400, "prio"),
    ("blank Idempotency-Key", "POST", "/runs", {"task": "t"}, {"Idempotency-Key": " "}, 422, "Idempotency-Key"),
    ("long Idempotency-Key", "POST", "/runs", {"task": "t"}, {"Idempotency-Key": "k" * 201}, 400, "Idempotency-Key"),
    ("NUL in task", "POST", "/runs", {"task": "a\u0000b"}, {}, 400, "task"),
    ("NUL in args", "POST", "/runs", {"task": "t", "args": {"a": "\u0000"}}, {}, 422, "args"),
    (
        "args nested too deeply",
        "POST",
        "/runs",
        b'{"task": "t", "args": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
        {},
        400,
        "body",
    ),
    ("number beyond float", "POST", "/runs", b'{"task": "t", "delay": 1e400}', {}, 400, "body"),
    ("batch args not a list", "POST", "/runs/batch", {"task": "t", "args": {}}, {}, 400, "args"),
    ("batch args item not an object", "POST", "/runs/batch", {"task": "t", "args": [{}, 3]}, {}, 400, "args[1]"),
    ("batch args missing", "POST", "/runs/batch", {"task": "t"}, {}, 400, "args"),
    ("status filter unknown", "GET", "/runs?status=done", None, {}, 400, "status"),
    ("limit zero", "GET", "/runs?limit=0", None, {}, 400, "limit"),
    ("limit too large", "GET", "/runs?limit=100000", None, {}, 400, "limit"),
    ("limit not a number", "GET", "/runs?limit=ten", None, {}, 400, "limit"),
    ("NUL in queue filter", "GET", "/runs?queue=a%00", None, {}, 400, "queue"),
    ("cursor garbage", "GET", "/runs?cursor=abc", None, {}, 422, "cursor"),
    ("run id zero", "GET", "/runs/0", None, {}, 422, "run_id"),
    ("run id beyond bigint", "POST", f"/runs/{2**64}/cancel", None, {}, 422, "run_id"),
    ("invalid cron", "POST", "/jobs", {"name": "x", "task": "t", "cron": "61 * * * *"}, {}, 422, "cron"),
    ("cron with 3 fields", "POST", "/jobs", {"name": "x", "task": "t", "cron": "* * *"}, {}, 422, "cron"),
    (
        "unknown timezone",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "cron": "* * * * *", "tz": "Mars/Olympus"},
        {},
        422,
        "tz",
    ),
    ("no schedule", "POST", "/jobs", {"name": "x", "task": "t"}, {}, 422, "cron|every|at"),
    (
        "two schedules",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "cron": "* * * * *", "every": 5},
        {},
        422,
        "cron|every|at",
    ),
    ("every zero", "POST", "/jobs", {"name": "x", "task": "t", "every": 0}, {}, 422, "every"),
    ("at without timezone", "POST", "/jobs", {"name": "x", "task": "t", "at": NAIVE}, {}, 422, "at"),
    (
        "misfire unknown",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "every": 5, "misfire": "later"},
        {},
        400,
        "misfire",
    ),
    (
        "max_catchup zero",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "every": 5, "max_catchup": 0},
        {},
        422,
        "max_catchup",
    ),
    ("job args a list", "POST", "/jobs", {"name": "x", "task": "t", "every": 5, "args": []}, {}, 400, "args"),
    (
        "job priority out of range",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "every": 5, "priority": -101},
        {},
        422,
        "priority",
    ),
    ("job name empty", "POST", "/jobs", {"name": "", "task": "t", "every": 5}, {}, 422, "name"),
    ("job name with a slash", "POST", "/jobs", {"name": "a/b", "task": "t", "every": 5}, {}, 400, "name"),
    ("NUL in job name", "POST", "/jobs", {"name": "a\u0000", "task": "t", "every": 5}, {}, 400, "name"),
    (
        "NUL in job args",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "every": 5, "args": {"a": "\u0000"}},
        {},
        422,
        "args",
    ),
    (
        "job max_attempts beyond integer",
        "POST",
        "/jobs",
        {"name": "x", "task": "t", "every": 5, "max_attempts": 2**31},
        {},
        400,
        "max_attempts",
    ),
    ("NUL in a job name path", "GET", "/jobs/a%00", None, {}, 400, "name"),
    ("patch renames", "PATCH", "/jobs/j", {"name": "k"}, {}, 400, "name"),
    ("patch priority null", "PATCH", "/jobs/j", {"priority": None}, {}, 400, "priority"),
    ("patch invalid cron", "PATCH", "/jobs/j", {"cron": "every day"}, {}, 422, "cron"),
    ("patch unknown timezone", "PATCH", "/jobs/j", {"tz": "Nowhere"}, {}, 422, "tz"),
    ("oversize body", "POST", "/runs", {"task": "t", "args": {"blob": "x" * (1024 * 1024)}}, {}, 413, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "field"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_a_4xx_json_error_naming_the_field(readonly_api, method, path, body, headers, status, field):
    api, conn = readonly_api
    before = (count(conn, "runs"), conn.execute("SELECT jobs::text FROM pgsched.jobs AS jobs").fetchall())
    if isinstance(body, bytes):
        response = api.call(method, path, content=body, headers={**headers, "Content-Type": "application/json"})
    else:
        response = api.call(method, path, json=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["status_code"] == status and error["detail"]
    if status != 413:
        assert error["errors"] and error["errors"][0]["message"], error
        assert error["errors"][0]["field"] == field, error
    assert (count(conn, "runs"), conn.execute("SELECT jobs::text FROM pgsched.jobs AS jobs").fetchall()) == before


# ---- the CLI: keys, and serving the API


def test_keys_create_prints_the_key_once_and_list_and_revoke_manage_it(dsn: str, conn: psycopg.Connection):
    created = run_cli(None, "keys", "create", "--scope", "write", "--tenant", "acme", "--name", "ci", "--dsn", dsn)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pgs_") and len(key) > 40 and "not shown again" in created.stderr
    [row] = conn.execute("SELECT id, name, scope, tenant, key_hash, prefix FROM pgsched.api_keys").fetchall()
    assert row[1:4] == ("ci", "write", "acme") and key not in str(row) and key.startswith(row[5])

    runner = CliRunner()  # in-process from here: a subprocess per command costs a second each
    with TestClient(create_app(ApiSettings(dsn=dsn, **TEST_SETTINGS))) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert client.post("/runs", json={"task": "t"}, headers=headers).json()["tenant"] == "acme"
        listed = runner.invoke(cli, ["keys", "list", "--json", "--dsn", dsn])
        assert listed.exit_code == 0 and key not in listed.stdout, listed.output
        assert [(k["id"], k["scope"], k["tenant"], k["revoked_at"]) for k in json.loads(listed.stdout)] == [
            (row[0], "write", "acme", None)
        ]
        revoked = runner.invoke(cli, ["keys", "revoke", str(row[0]), "--dsn", dsn])
        assert revoked.exit_code == 0 and f"key {row[0]} revoked" in revoked.stdout, revoked.output
        assert client.get("/runs", headers=headers).status_code == 401

    bad = runner.invoke(cli, ["keys", "create", "--scope", "root", "--dsn", dsn])
    assert isinstance(bad.exception, InvalidInput) and "scope must be one of read, write, admin" in str(bad.exception)
    unknown = runner.invoke(cli, ["keys", "revoke", "999", "--dsn", dsn])
    assert isinstance(unknown.exception, ApiKeyNotFound)
    assert count(conn, "api_keys") == 1


def test_pgsched_api_serves_http_on_a_free_port_and_warns_loudly_without_auth(dsn: str):
    with serving_api("--no-auth", "--dsn", dsn) as (url, output):
        with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
            assert (response.status, json.loads(response.read())) == (200, {"status": "ok"})
        with urllib.request.urlopen(f"{url}/queues", timeout=10) as response:
            assert response.status == 200, "--no-auth serves without a key"
        assert b"WARNING: authentication is disabled (--no-auth)" in output
        assert b"AUTHENTICATION IS DISABLED" in output, "each API process says so too"

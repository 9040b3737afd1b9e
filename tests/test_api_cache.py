"""The API's Redis cache tier against a real redis-server that each test starts on its own port:
what is cached (finished runs, jobs, queue lists) and what is not (queued and running runs),
forgetting on the API's own writes, tenant isolation of cached rows, and a Redis that dies,
hangs or comes back while the API serves: requests keep succeeding from PostgreSQL, quickly,
with one warning, and the cache returns with Redis."""

from __future__ import annotations

import logging
import time
from typing import Any, Iterator

import msgspec
import psycopg
import pytest
from litestar.testing import TestClient

from pgsched.api import ApiSettings, create_app
from pgsched.api.cache import job_key, queues_key, run_key
from pgsched.api.schemas import JobOut
from tests.support.api import TEST_SETTINGS, Api, make_keys, ok
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

TIMEOUT_S = 0.5
RETRY_S = 0.3


@pytest.fixture
def api(dsn: str, conn: psycopg.Connection, redis_server: RedisServer) -> Iterator[Api]:
    settings = ApiSettings(
        dsn=dsn, redis_url=redis_server.url, redis_timeout_s=TIMEOUT_S, redis_retry_s=RETRY_S, **TEST_SETTINGS
    )
    with TestClient(create_app(settings)) as client:
        yield Api(client, make_keys(conn))


def cached(server: RedisServer, key: str) -> Any:
    """What Redis holds under ``key``, decoded (None: nothing, or a tombstone)."""
    with server.client() as client:
        data = client.get(key)
    return None if data in (None, b"-") else msgspec.json.decode(data)


def finished_run(api: Api, conn: psycopg.Connection, status: str = "succeeded", as_: str = "admin") -> int:
    run_id = ok(api.post("/runs", json={"task": "t"}, as_=as_), 201)["id"]
    conn.execute(
        "UPDATE pgsched.runs SET status = %s, attempt = 1, finished_at = now(), result = '1' WHERE id = %s",
        (status, run_id),
    )
    return int(run_id)


def set_result_behind_the_apis_back(conn: psycopg.Connection, run_id: int, result: int) -> None:
    # The run ended: it is in runs_history (schema 0030), which pgsched itself never updates.
    conn.execute("UPDATE pgsched.runs_history SET result = %s::text::jsonb WHERE id = %s", (result, run_id))


def breaker(api: Api) -> Any:
    return api.client.app.state.cache.redis.breaker


# ---- what is cached


def test_a_finished_run_is_served_from_redis_after_the_first_read(
    api: Api, conn: psycopg.Connection, redis_server: RedisServer
):
    run_id = finished_run(api, conn)
    first = ok(api.get(f"/runs/{run_id}", as_="read"))
    assert cached(redis_server, run_key(run_id)) == first

    set_result_behind_the_apis_back(conn, run_id, 2)
    assert ok(api.get(f"/runs/{run_id}", as_="read")) == first, "the second read came from Redis"

    with redis_server.client() as client:
        client.delete(run_key(run_id))
    assert ok(api.get(f"/runs/{run_id}", as_="read"))["result"] == 2, "a miss reads PostgreSQL"


def test_queued_and_running_runs_are_never_cached(api: Api, conn: psycopg.Connection, redis_server: RedisServer):
    run_id = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
    assert ok(api.get(f"/runs/{run_id}"))["status"] == "queued"
    assert cached(redis_server, run_key(run_id)) is None
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 minute' WHERE id = %s",
        (run_id,),
    )
    assert ok(api.get(f"/runs/{run_id}"))["status"] == "running", "the queued state was not kept"
    assert cached(redis_server, run_key(run_id)) is None


def test_a_job_and_the_queue_list_are_cached(api: Api, conn: psycopg.Connection, redis_server: RedisServer):
    job = ok(api.post("/jobs", json={"name": "nightly", "task": "t", "every": 60}), 201)
    shown = ok(api.get("/jobs/nightly"))
    assert cached(redis_server, job_key(None, "nightly")) == shown and shown["priority"] == job["priority"]
    conn.execute("UPDATE pgsched.jobs SET priority = 7 WHERE name = 'nightly'")
    assert ok(api.get("/jobs/nightly")) == shown, "served from Redis"

    ok(api.post("/runs", json={"task": "t", "queue": "mail"}), 201)
    queues = ok(api.get("/queues"))
    assert cached(redis_server, queues_key(None)) == queues
    ok(api.post("/runs", json={"task": "t", "queue": "mail"}), 201)
    assert ok(api.get("/queues")) == queues, "the queue list lives on its TTL (2 s), not on enqueues"


# ---- forgetting on the API's writes


def test_retrying_a_run_forgets_its_cached_copy(api: Api, conn: psycopg.Connection, redis_server: RedisServer):
    run_id = finished_run(api, conn, status="failed")
    assert ok(api.get(f"/runs/{run_id}"))["status"] == "failed"
    assert cached(redis_server, run_key(run_id)) is not None
    assert ok(api.post(f"/runs/{run_id}/retry"))["status"] == "queued"
    assert cached(redis_server, run_key(run_id)) is None
    assert ok(api.get(f"/runs/{run_id}"))["status"] == "queued"


def test_every_job_write_forgets_the_cached_job(api: Api, conn: psycopg.Connection, redis_server: RedisServer):
    ok(api.post("/jobs", json={"name": "nightly", "task": "t", "every": 60}), 201)

    def read_twice() -> dict[str, Any]:
        """Two reads: the second is the cached copy (a tombstone delays caching for a few seconds,
        so the key is cleared between writes to let each step cache again)."""
        with redis_server.client() as client:
            client.delete(job_key(None, "nightly"))
        shown = ok(api.get("/jobs/nightly", as_="read"))
        assert cached(redis_server, job_key(None, "nightly")) == shown
        return shown

    read_twice()
    assert ok(api.patch("/jobs/nightly", json={"priority": 5}))["priority"] == 5
    assert ok(api.get("/jobs/nightly", as_="read"))["priority"] == 5
    read_twice()
    ok(api.post("/jobs/nightly/pause"))
    assert ok(api.get("/jobs/nightly", as_="read"))["enabled"] is False
    read_twice()
    ok(api.post("/jobs/nightly/resume"))
    assert ok(api.get("/jobs/nightly", as_="read"))["enabled"] is True
    read_twice()
    assert ok(api.post("/jobs", json={"name": "nightly", "task": "other", "every": 60}))["task"] == "other"
    assert ok(api.get("/jobs/nightly", as_="read"))["task"] == "other"
    read_twice()
    assert api.delete("/jobs/nightly").status_code == 204
    assert api.get("/jobs/nightly", as_="read").status_code == 404


def test_a_read_that_raced_a_write_cannot_put_the_old_row_back(api: Api, redis_server: RedisServer):
    ok(api.post("/jobs", json={"name": "nightly", "task": "t", "every": 60}), 201)
    before = ok(api.get("/jobs/nightly"))
    ok(api.patch("/jobs/nightly", json={"priority": 5}))
    # A read that fetched the row before the PATCH committed stores it afterwards: refused.
    api.client.app.state.cache.keep_job(msgspec.json.decode(msgspec.json.encode(before), type=JobOut))
    assert cached(redis_server, job_key(None, "nightly")) is None
    assert ok(api.get("/jobs/nightly"))["priority"] == 5


# ---- tenants


def test_a_cached_row_is_served_only_to_its_tenant_and_to_keys_without_a_tenant(
    api: Api, conn: psycopg.Connection, redis_server: RedisServer
):
    run_id = finished_run(api, conn, as_="acme")
    ok(api.post("/jobs", json={"name": "acme-job", "task": "t", "every": 60}, as_="acme"), 201)
    seen_by_admin = ok(api.get(f"/runs/{run_id}", as_="read"))
    job_seen_by_acme = ok(api.get("/jobs/acme-job", as_="acme-read"))
    assert cached(redis_server, run_key(run_id))["tenant"] == "acme"
    assert cached(redis_server, job_key("acme", "acme-job"))["tenant"] == "acme"
    set_result_behind_the_apis_back(conn, run_id, 2)

    assert api.get(f"/runs/{run_id}", as_="beta").status_code == 404
    assert api.get("/jobs/acme-job", as_="beta").status_code == 404
    assert ok(api.get(f"/runs/{run_id}", as_="acme-read")) == seen_by_admin, "acme is served the cached row"
    assert ok(api.get("/jobs/acme-job", as_="read")) == job_seen_by_acme, "so is a key without a tenant"


def test_each_tenant_scope_caches_its_own_queue_list(api: Api, redis_server: RedisServer):
    ok(api.post("/runs", json={"task": "t", "queue": "acme-q"}, as_="acme"), 201)
    ok(api.post("/runs", json={"task": "t", "queue": "beta-q"}, as_="beta"), 201)
    everything = ok(api.get("/queues", as_="read"))
    assert [q["queue"] for q in everything["items"]] == ["acme-q", "beta-q"]
    assert [q["queue"] for q in ok(api.get("/queues", as_="acme-read"))["items"]] == ["acme-q"]
    assert [q["queue"] for q in ok(api.get("/queues", as_="beta"))["items"]] == ["beta-q"]
    assert [q["queue"] for q in cached(redis_server, queues_key("acme"))["items"]] == ["acme-q"]
    assert cached(redis_server, queues_key(None)) == everything


# ---- Redis failing and coming back


def test_requests_keep_succeeding_when_redis_dies_and_the_cache_returns_with_it(
    api: Api, conn: psycopg.Connection, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="pgsched.api")
    run_id = finished_run(api, conn)
    ok(api.get(f"/runs/{run_id}"))
    redis_server.stop()

    set_result_behind_the_apis_back(conn, run_id, 2)
    for _ in range(20):
        assert ok(api.get(f"/runs/{run_id}"))["result"] == 2, "PostgreSQL answers"
        assert api.get("/queues").status_code == 200
        assert api.get("/jobs/none").status_code == 404
    assert breaker(api).is_open
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "Redis at" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]

    redis_server.start()  # the same port, empty
    wait_until(
        lambda: api.get(f"/runs/{run_id}").status_code == 200 and cached(redis_server, run_key(run_id)) is not None,
        10,
        "the cache to come back with Redis",
        poll=0.02,
    )
    assert not breaker(api).is_open
    set_result_behind_the_apis_back(conn, run_id, 3)
    assert ok(api.get(f"/runs/{run_id}"))["result"] == 2, "served from Redis again"
    back = [r for r in caplog.records if r.levelno == logging.INFO and "answers again" in r.getMessage()]
    assert len(back) == 1


def test_a_hanging_redis_costs_one_timeout_not_one_per_request(
    api: Api, conn: psycopg.Connection, redis_server: RedisServer
):
    run_id = finished_run(api, conn)
    requests = 20
    redis_server.pause()  # connections are accepted and never answered
    try:
        started = time.monotonic()
        for _ in range(requests):
            assert ok(api.get(f"/runs/{run_id}"))["id"] == run_id
        elapsed = time.monotonic() - started
    finally:
        redis_server.resume()
    # Without the breaker each request would wait out a read and a write: 2 * 20 * 0.5 s = 20 s.
    assert elapsed < requests * TIMEOUT_S / 4, f"{requests} requests took {elapsed:.2f}s"
    assert breaker(api).is_open
    wait_until(
        lambda: api.get(f"/runs/{run_id}").status_code == 200 and cached(redis_server, run_key(run_id)) is not None,
        10,
        "the cache to come back",
        poll=0.02,
    )


def test_the_api_starts_and_serves_while_redis_is_unreachable(
    dsn: str, conn: psycopg.Connection, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
):
    redis_server.stop()
    settings = ApiSettings(dsn=dsn, auth=False, redis_url=redis_server.url, redis_timeout_s=TIMEOUT_S)
    with TestClient(create_app(settings)) as client:
        assert client.post("/runs", json={"task": "t"}).status_code == 201
        assert client.get("/queues").status_code == 200
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Redis at" in r.getMessage()]


def test_without_redis_nothing_is_cached(dsn: str, conn: psycopg.Connection):
    with TestClient(create_app(ApiSettings(dsn=dsn, auth=False))) as client:
        run_id = client.post("/runs", json={"task": "t"}).json()["id"]
        conn.execute(
            "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), result = '1' WHERE id = %s", (run_id,)
        )
        assert client.get(f"/runs/{run_id}").json()["result"] == 1
        set_result_behind_the_apis_back(conn, run_id, 2)
        assert client.get(f"/runs/{run_id}").json()["result"] == 2


def test_only_the_trial_call_decides_whether_an_open_breaker_closes() -> None:
    from pgsched.api.redis_tier import CircuitBreaker, Pass

    now = [0.0]
    breaker = CircuitBreaker("test", retry_s=5, clock=lambda: now[0])
    early = breaker.allow()  # began while Redis looked fine
    breaker.failed(ConnectionError("down"))
    assert breaker.is_open and breaker.allow() is None  # open, trial not due yet
    now[0] = 6.0
    trial = breaker.allow()
    assert (early, trial, breaker.allow()) == (Pass.CALL, Pass.TRIAL, None)  # one trial at a time
    assert early is not None and trial is not None
    breaker.succeeded(early)  # a late answer to a call from before: says nothing about Redis now
    breaker.abandoned(early)  # nor does a cancelled one free the trial's place
    assert breaker.is_open and breaker.allow() is None
    breaker.succeeded(trial)
    assert not breaker.is_open and breaker.allow() is Pass.CALL

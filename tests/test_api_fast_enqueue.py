"""The fast POST /runs (pgsched.api.fast) answers as the Litestar route does: the same 201 and
run, the same refusals (the route answers them), the request's id and trace context on the run,
the rate limit and library errors counted once and answered by the route's exception handlers.

Two apps share one database: one caches keys (its ordinary POSTs take the fast path), one does
not (key_cache_s=0: every authenticated request goes through the route)."""

from __future__ import annotations

import json
from typing import Any, Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient

from pgsched.api import ApiSettings, create_app
from pgsched.api.fast import FastEnqueue
from pgsched.api.settings import RateLimit
from tests.support.api import Api, count, make_keys
from tests.support.db import scratch_database

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# Differ from request to request: left out when the two paths' runs are compared.
PER_RUN = {"id", "created_at", "run_at", "request_id"}


class Apis:
    def __init__(self, fast: Api, route: Api, conn: psycopg.Connection, routed: list[str]) -> None:
        self.fast, self.route, self.conn, self.routed = fast, route, conn, routed


def _counting_routes(app: Litestar, routed: list[str]) -> None:
    """Note every request the fast app hands to Litestar's router."""
    fast = app.asgi_handler
    assert isinstance(fast, FastEnqueue)
    litestar = fast.litestar

    async def counted(scope: Any, receive: Any, send: Any) -> None:
        routed.append(scope["path"])
        await litestar(scope, receive, send)

    fast.litestar = counted


@pytest.fixture(scope="module")
def apis(postgresql_proc: Any) -> Iterator[Apis]:
    with scratch_database(postgresql_proc, "pgsched_api_fast") as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        keys = make_keys(conn)
        fast_app = create_app(ApiSettings(dsn=dsn, key_cache_s=60.0, max_body_bytes=1024 * 1024))
        routed: list[str] = []
        _counting_routes(fast_app, routed)
        route_app = create_app(ApiSettings(dsn=dsn, key_cache_s=0.0, max_body_bytes=1024 * 1024))
        with TestClient(fast_app) as fast, TestClient(route_app) as route:
            fast_api, route_api = Api(fast, keys), Api(route, keys)
            for kind in keys:  # the first request of each key reads it from the database and caches it
                fast_api.get("/runs?limit=1", as_=kind)
            yield Apis(fast_api, route_api, conn, routed)


def _run_fields(body: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in body.items() if name not in PER_RUN}


def test_an_ordinary_post_is_answered_by_the_fast_path_with_what_the_route_answers(apis: Apis):
    body = {"task": "t", "args": {"b": [1, 2.5, None], "a": "é"}, "queue": "q", "priority": 3, "delay": 60}
    apis.routed.clear()
    fast = apis.fast.post("/runs", json=body, as_="write")
    assert apis.routed == [], "the ordinary POST never reached Litestar's router"
    route = apis.route.post("/runs", json=body, as_="write")
    assert (fast.status_code, route.status_code) == (201, 201), (fast.text, route.text)
    assert _run_fields(fast.json()) == _run_fields(route.json())
    assert fast.headers["content-type"] == route.headers["content-type"] == "application/json"
    assert int(fast.headers["content-length"]) == len(fast.content)
    assert fast.json()["request_id"] == fast.headers["x-request-id"]
    # The answer is the committed row, as the route's is.
    stored = apis.conn.execute("SELECT queue, priority, args FROM pgsched.runs_all WHERE id = %s", (fast.json()["id"],))
    assert stored.fetchone() == ("q", 3, body["args"])


def test_the_request_id_and_trace_context_reach_the_run(apis: Apis):
    headers = {"X-Request-ID": "req-fast-1", "traceparent": TRACEPARENT}
    apis.routed.clear()
    response = apis.fast.post("/runs", json={"task": "t"}, as_="write", headers=headers)
    assert response.status_code == 201, response.text
    assert apis.routed == []
    assert response.headers["x-request-id"] == "req-fast-1"
    run = apis.conn.execute(
        "SELECT request_id, trace_context FROM pgsched.runs_all WHERE id = %s", (response.json()["id"],)
    ).fetchone()
    assert run == ("req-fast-1", TRACEPARENT)


def test_a_tenant_key_queues_for_its_tenant(apis: Apis):
    response = apis.fast.post("/runs", json={"task": "t"}, as_="acme")
    assert response.status_code == 201 and response.json()["tenant"] == "acme", response.text


# (request body or raw bytes, key kind, extra headers, query string): each refused or routed.
REFUSED: list[tuple[Any, str | None, dict[str, str], str]] = [
    ({"task": "t", "priority": "5"}, "write", {}, ""),  # the document's strict types
    ({"task": "t", "colour": "red"}, "write", {}, ""),  # an unknown field
    ({"args": {}}, "write", {}, ""),  # no task
    ({"task": "t", "run_at": "2030-01-01T00:00:00Z", "delay": 5}, "write", {}, ""),
    ({"task": "t", "queue": "no spaces allowed"}, "write", {}, ""),  # the library's 422
    ({"task": "t", "max_attempts": 0}, "write", {}, ""),
    ({"task": "t", "run_at": "2030-01-01T00:00:00"}, "write", {}, ""),  # no timezone
    ({"task": "t"}, "read", {}, ""),  # 403: a read key
    ({"task": "t"}, "acme-read", {}, ""),
    ({"task": "t"}, None, {}, ""),  # 401: no key
    ({"task": "t"}, None, {"Authorization": "Bearer pgs_unknown"}, ""),
    ({"task": "t"}, "write", {}, "colour=red"),  # an undocumented query parameter
    ({"task": "t"}, "write", {"X-Request-ID": "x" * 129}, ""),  # not a usable id: replaced, and queued
    ({"task": "t"}, "write", {"Host": "bad host/"}, ""),  # the router's Host check
    (b'{"task": "t",', "write", {}, ""),  # malformed JSON
    (b"[1, 2]", "write", {}, ""),
    (b"", "write", {}, ""),
    (b"\xff\xfe", "write", {}, ""),
    (b'{"task": "t", "args": ' + b"[" * 2000 + b"]" * 2000 + b"}", "write", {}, ""),  # too deep
]


def _post(api: Api, body: Any, kind: str | None, headers: dict[str, str], query: str) -> Any:
    path = f"/runs?{query}" if query else "/runs"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.post(path, as_=kind, content=content, headers={"Content-Type": "application/json", **headers})


def _answer(response: Any) -> tuple[int, Any]:
    if response.status_code == 201:
        return 201, _run_fields(response.json())
    return response.status_code, response.json()


@pytest.mark.parametrize("body, kind, headers, query", REFUSED)
def test_what_the_fast_path_does_not_take_is_answered_as_the_route_answers_it(
    apis: Apis, body: Any, kind: str | None, headers: dict[str, str], query: str
):
    before = count(apis.conn, "runs_all")
    fast = _post(apis.fast, body, kind, headers, query)
    route = _post(apis.route, body, kind, headers, query)
    assert _answer(fast) == _answer(route), (fast.text, route.text)
    assert "x-request-id" in fast.headers and "x-request-id" in route.headers  # refusals too
    written = count(apis.conn, "runs_all") - before
    assert written == (2 if fast.status_code == 201 else 0), fast.text


def test_an_idempotency_key_takes_the_route_and_a_repeat_returns_the_first_run(apis: Apis):
    headers = {"Idempotency-Key": "fast-idem-1"}
    apis.routed.clear()
    first = apis.fast.post("/runs", json={"task": "t"}, as_="write", headers=headers)
    again = apis.fast.post("/runs", json={"task": "t"}, as_="write", headers=headers)
    assert (first.status_code, again.status_code) == (201, 200), (first.text, again.text)
    assert first.json()["id"] == again.json()["id"]
    assert apis.routed == ["/runs", "/runs"]


def test_a_body_larger_than_the_fast_path_reads_is_queued_by_the_route(apis: Apis):
    apis.routed.clear()
    response = apis.fast.post("/runs", json={"task": "t", "args": {"blob": "x" * 100_000}}, as_="write")
    assert response.status_code == 201, response.text
    assert apis.routed == ["/runs"]


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    _json_containers,
    max_leaves=6,
)
FIELDS = ["task", "args", "queue", "priority", "max_attempts", "run_at", "delay", "concurrency_key", "other"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES | st.just("2030-01-01T00:00:00+02:00"), max_size=5))
def test_generated_bodies_are_answered_alike_by_both_paths(apis: Apis, body: dict[str, Any]):
    fast = _post(apis.fast, body, "write", {}, "")
    route = _post(apis.route, body, "write", {}, "")
    assert _answer(fast) == _answer(route), (body, fast.text, route.text)


def test_the_rate_limit_counts_a_fast_post_once_and_answers_429_as_the_route_does(postgresql_proc: Any):
    with (
        scratch_database(postgresql_proc, "pgsched_api_fast_limit") as dsn,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        keys = make_keys(conn)
        limit = RateLimit(3, 3600)
        fast_app = create_app(ApiSettings(dsn=dsn, key_cache_s=60.0, rate_limit=limit))
        routed: list[str] = []
        _counting_routes(fast_app, routed)
        route_app = create_app(ApiSettings(dsn=dsn, key_cache_s=0.0, rate_limit=limit))
        with TestClient(fast_app) as fast_client, TestClient(route_app) as route_client:
            fast, route = Api(fast_client, keys), Api(route_client, keys)
            assert fast.get("/runs?limit=1", as_="write").status_code == 200  # counted: 1 of 3, key cached
            routed.clear()
            statuses = [fast.post("/runs", json={"task": "t"}, as_="write").status_code for _ in range(3)]
            assert statuses == [201, 201, 429]
            assert routed == []
            for _ in range(4):  # the route's process counts on its own: its fourth is refused
                answered = route.post("/runs", json={"task": "t"}, as_="write")
            fast_429 = fast.post("/runs", json={"task": "t"}, as_="write")
            assert fast_429.status_code == answered.status_code == 429
            assert fast_429.json() == answered.json()
            assert fast_429.headers["retry-after"] == answered.headers["retry-after"]
            assert "x-request-id" in fast_429.headers
            assert count(conn, "runs_all") == 2 + 3


def test_a_tenant_over_its_quota_gets_the_routes_429_with_retry_after(apis: Apis):
    queued = apis.conn.execute("SELECT count(*) FROM pgsched.runs WHERE tenant = 'acme'").fetchone()[0]  # type: ignore[index]
    patched = apis.route.patch("/tenants/acme", json={"max_queued": queued}, as_="admin")
    assert patched.status_code == 200, patched.text
    try:
        apis.routed.clear()
        fast = apis.fast.post("/runs", json={"task": "t"}, as_="acme")
        route = apis.route.post("/runs", json={"task": "t"}, as_="acme")
        assert apis.routed == []
        assert fast.status_code == route.status_code == 429, (fast.text, route.text)
        assert fast.json() == route.json()
        assert fast.headers["retry-after"] == route.headers["retry-after"]
        assert fast.headers["x-request-id"]
    finally:
        apis.route.patch("/tenants/acme", json={"max_queued": None}, as_="admin")

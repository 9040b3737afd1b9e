"""Per-caller rate limits: 429 with Retry-After and the usual JSON error past the limit, per API key
(per client address without auth), counted in memory without Redis and in a real redis-server
(shared by two app instances) with it, falling back to memory while Redis is down; /health and
/ready never limited; the setting's format checked; `pgsched api --redis-url --rate-limit`."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient
from typer.testing import CliRunner

from pgsched.api import ApiSettings, create_app
from pgsched.api.settings import RateLimit
from pgsched.cli.main import cli
from pgsched.errors import ConfigError
from tests.support.api import TEST_SETTINGS, Api, make_keys, ok, serving_api
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

# 1000.5 s after the epoch: in a 60 s window that ends at 1020 s, so Retry-After is 20.
NOW = 1000.5


@contextmanager
def limited_api(dsn: str, keys: dict[str, str], limit: str, **settings: Any) -> Iterator[Api]:
    """An app whose limiter's clock stands still at NOW (no window ends during a test)."""
    options = {**TEST_SETTINGS, **settings}
    with TestClient(create_app(ApiSettings(dsn=dsn, rate_limit=RateLimit.parse(limit), **options))) as client:
        client.app.state.rate_limiter.clock = lambda: NOW
        yield Api(client, keys)


@pytest.fixture
def keys(conn: psycopg.Connection) -> dict[str, str]:
    return make_keys(conn)


def assert_limited(response: Any, retry_after: int = 20) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["Retry-After"] == str(retry_after)
    body = response.json()
    assert body["status_code"] == 429 and body["errors"] == [], body
    assert body["detail"].startswith("rate limit exceeded: at most "), body


def test_past_the_limit_a_key_gets_429_with_retry_after_and_other_keys_do_not(dsn: str, keys: dict[str, str]):
    with limited_api(dsn, keys, "3/60") as api:
        for _ in range(3):
            ok(api.get("/queues", as_="read"))
        limited = api.get("/queues", as_="read")
        assert_limited(limited)
        assert "per 60s for this API key; retry in 20s" in limited.json()["detail"]
        assert_limited(api.post("/runs", json={"task": "t"}, as_="read"))  # every route counts
        ok(api.get("/queues", as_="admin"))  # another key has its own budget
        for _ in range(10):
            ok(api.get("/health", as_=None))
            assert api.get("/ready", as_=None).status_code == 200


def test_without_auth_the_limit_is_per_client_address_and_health_does_not_count(dsn: str, keys: dict[str, str]):
    with limited_api(dsn, keys, "2/60", auth=False) as api:
        for _ in range(5):
            ok(api.get("/health", as_=None))
            ok(api.get("/ready", as_=None))
        ok(api.get("/queues", as_=None))
        ok(api.get("/runs", as_=None))
        limited = api.get("/queues", as_=None)
        assert_limited(limited)
        assert "for this client address" in limited.json()["detail"]


def test_without_redis_each_api_process_counts_on_its_own(dsn: str, keys: dict[str, str]):
    with limited_api(dsn, keys, "2/60") as first, limited_api(dsn, keys, "2/60") as second:
        for api in (first, second):
            ok(api.get("/queues", as_="read"))
            ok(api.get("/queues", as_="read"))
        assert_limited(first.get("/queues", as_="read"))
        assert_limited(second.get("/queues", as_="read"))


def test_with_redis_two_api_processes_share_one_count(dsn: str, keys: dict[str, str], redis_server: RedisServer):
    with (
        limited_api(dsn, keys, "4/60", redis_url=redis_server.url) as first,
        limited_api(dsn, keys, "4/60", redis_url=redis_server.url) as second,
    ):
        for api in (first, second, first, second):
            ok(api.get("/queues", as_="read"))
        assert_limited(first.get("/queues", as_="read"))
        assert_limited(second.get("/queues", as_="read"))
        ok(second.get("/queues", as_="admin"))
    with redis_server.client() as client:
        counts = {key.decode(): int(client.get(key)) for key in client.keys("pgsched:v1:rate:*")}
        assert all(0 < client.ttl(key) <= 61 for key in counts)
    window = int(NOW // 60)
    assert sorted(counts.values()) == [1, 6] and all(key.endswith(f":{window}") for key in counts), counts


def test_while_redis_is_down_the_limit_is_counted_in_each_process(
    dsn: str, keys: dict[str, str], redis_server: RedisServer
):
    with limited_api(dsn, keys, "3/60", redis_url=redis_server.url, redis_retry_s=0.2) as api:
        ok(api.get("/queues", as_="read"))
        ok(api.get("/queues", as_="read"))
        redis_server.stop()
        for _ in range(3):  # the in-process count starts from zero
            ok(api.get("/queues", as_="read"))
        assert_limited(api.get("/queues", as_="read"))
        assert api.client.app.state.rate_limiter.redis.breaker.is_open

        redis_server.start()  # empty: the shared count starts again
        # Each miss sends a request: the breaker's trial is the next request after its retry time.
        wait_until(
            lambda: not api.client.app.state.rate_limiter.redis.breaker.is_open,
            10,
            "the limiter to go back to Redis",
            poll=0.05,
            check=lambda: api.get("/queues", as_="admin"),
        )
        ok(api.get("/queues", as_="read"))
        with redis_server.client() as client:
            assert client.keys("pgsched:v1:rate:*"), "counted in Redis again"


@pytest.fixture
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pgsched api` hands its options to uvicorn's workers in these variables: unset, and
    restored after the test, whatever the command set."""
    for name in ("PGSCHED_DSN", "PGSCHED_API_AUTH", "PGSCHED_REDIS_URL", "PGSCHED_API_RATE_LIMIT"):
        monkeypatch.setenv(name, "")  # records the original value for the undo
        monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("600", "must be REQUESTS/SECONDS, e.g. '600/60'"),
        ("ten/60", "must be REQUESTS/SECONDS"),
        ("0/60", "1 to 10^9 requests per 1 to 86400 seconds"),
        ("5/0", "1 to 10^9 requests per 1 to 86400 seconds"),
        ("5/100000", "1 to 10^9 requests per 1 to 86400 seconds"),
    ],
)
def test_a_bad_rate_limit_is_refused_naming_the_problem(
    text: str, message: str, monkeypatch: pytest.MonkeyPatch, api_env: None
):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RateLimit.parse(text)
    monkeypatch.setenv("PGSCHED_DSN", "host=nowhere")
    monkeypatch.setenv("PGSCHED_API_RATE_LIMIT", text)
    with pytest.raises(ConfigError, match=r"^PGSCHED_API_RATE_LIMIT"):
        ApiSettings.from_env()
    monkeypatch.delenv("PGSCHED_API_RATE_LIMIT")
    refused = CliRunner().invoke(cli, ["api", "--rate-limit", text, "--dsn", "host=nowhere"])
    assert isinstance(refused.exception, ConfigError) and str(refused.exception).startswith("--rate-limit"), (
        refused.output
    )


def test_a_rate_limit_parses_with_spaces_and_bad_redis_settings_are_refused(api_env: None):
    assert RateLimit.parse(" 600 / 60 ") == RateLimit(600, 60)
    with pytest.raises(ConfigError, match="must start with redis://, rediss:// or unix://"):
        ApiSettings(dsn="host=x", redis_url="http://localhost:6379")
    with pytest.raises(ConfigError, match="redis_timeout_s must be > 0"):
        ApiSettings(dsn="host=x", redis_url="redis://localhost", redis_timeout_s=0)
    refused = CliRunner().invoke(cli, ["api", "--redis-url", "localhost:6379", "--dsn", "host=nowhere"])
    assert isinstance(refused.exception, ConfigError) and "--redis-url" in str(refused.exception), refused.output


# ---- `pgsched api` with Redis and a limit, over HTTP


def fetch(url: str) -> tuple[int, dict[str, str], Any]:
    """(status, headers by lower-case name, JSON body)"""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, json.loads(error.read())


def test_pgsched_api_limits_through_redis_with_its_options(dsn: str, redis_server: RedisServer):
    with serving_api("--no-auth", "--redis-url", redis_server.url, "--rate-limit", "2/86400", "--dsn", dsn) as (
        url,
        output,
    ):
        assert f"Redis at {redis_server.url}: caching reads there".encode() in output
        for _ in range(5):
            assert fetch(f"{url}/health")[0] == 200
        # Five requests against a limit of two: even across a window boundary one is refused.
        answers = [fetch(f"{url}/queues") for _ in range(5)]
        statuses = [status for status, _, _ in answers]
        assert statuses[:2] == [200, 200] and 429 in statuses, statuses
        _status, headers, body = next(answer for answer in answers if answer[0] == 429)
        assert int(headers["retry-after"]) >= 1 and body["status_code"] == 429
        with redis_server.client() as client:
            assert client.keys("pgsched:v1:rate:addr:127.0.0.1:*")


def test_in_process_counters_stay_bounded_when_every_caller_is_in_the_current_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pgsched.api import ratelimit

    monkeypatch.setattr(ratelimit, "_MAX_MEMORY_CALLERS", 1000)
    counters = ratelimit.MemoryCounters()
    for n in range(5000):
        assert counters.hit(f"caller-{n}", window=7) == 1
    assert len(counters._counts) <= 1000
    assert counters.hit("caller-4999", window=7) == 2  # recent callers keep their counts


def test_unknown_keys_from_one_address_get_429_without_a_lookup_once_past_the_failure_limit(
    dsn: str, keys: dict[str, str], conn: psycopg.Connection
) -> None:
    settings = ApiSettings(dsn=dsn, auth_failure_limit=RateLimit.parse("5/60"), **TEST_SETTINGS)
    with TestClient(create_app(settings)) as client:
        client.app.state.auth_failures.clock = lambda: NOW
        api = Api(client, {**keys, **{f"bogus-{i}": f"pgs_made_up_{i}" for i in range(8)}})
        for i in range(4):
            assert api.get("/queues", as_=f"bogus-{i}").status_code == 401
            ok(api.get("/queues", as_="read"))  # a key the database knows is no failure
        conn.execute("UPDATE pgsched.api_keys SET revoked_at = now() WHERE name = 'write'")
        assert api.get("/queues", as_="write").status_code == 401  # a revoked key is the fifth failure
        # Past the limit the address is refused before any lookup (TEST_SETTINGS caches no key):
        # 429, not 401, and a good key from the same address waits for the window like the rest.
        for name in ("bogus-5", "read"):
            refused = api.get("/queues", as_=name)
            assert refused.status_code == 429, refused.text
            assert refused.headers["Retry-After"] == "20"
            assert "too many requests with unknown API keys from this client address" in refused.json()["detail"]

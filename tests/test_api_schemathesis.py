"""Schemathesis fuzzes every operation of the REST API against the app's own OpenAPI document.

Valid and invalid requests (schemathesis' positive and negative modes, its coverage phase's
boundary values, and random fuzzing) go to the app in-process over ASGI, backed by a real
database, with an admin key and with a tenant's key. Every response must keep the document's
promises: no 5xx, a documented status code, the documented content type and a body that matches
the documented schema. Beyond the document: a 4xx wrote nothing, and after a 2xx every reader
behind the list endpoints still reads every row (issue #11).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.types import Receive, Scope, Send
from schemathesis.specs.openapi.checks import positive_data_acceptance

from pgsched.api import ApiSettings, create_app
from pgsched.api import keys as api_keys
from pgsched.api.metrics import render as render_metrics
from pgsched.api.settings import RateLimit
from pgsched.instants import READER_ADAPTERS
from pgsched.jobs import get_job, list_jobs
from pgsched.queues import list_queues
from pgsched.runs import get_run, list_runs

# Every stateless check schemathesis has (no 5xx; documented status codes, content types, headers
# and bodies; invalid requests refused; no route served without its key; the Allow header; ...)
# but one: "a request the schema allows is accepted". The document cannot say everything the
# library refuses with a 422: a cron expression that does not parse, a timezone that does not
# exist, run_at and delay together, a run id of 0. Those 422s are documented answers.
EXCLUDED_CHECKS = [positive_data_acceptance]
# Bounded for CI: examples per operation (the coverage phase adds its boundary cases), the same
# cases every run. PGSCHED_FUZZ_EXAMPLES=1000 digs deeper locally.
EXAMPLES = int(os.environ.get("PGSCHED_FUZZ_EXAMPLES", "50"))


@pytest.fixture(scope="module")
def keys(module_dsn: str) -> dict[str, str]:
    """An admin key, and a tenant's write key (which must get 403 from the cluster-wide routes)."""
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        # Something for the fuzzer's list and show requests to find besides 404s.
        conn.execute("INSERT INTO pgsched.jobs (name, task, every_s, tenant) VALUES ('j', 't', 60, 'acme')")
        conn.execute("INSERT INTO pgsched.runs (task, tenant) SELECT 't', 'acme' FROM generate_series(1, 5)")
        return {
            "admin": api_keys.create_key(conn, "admin", name="fuzz")[0],
            "acme": api_keys.create_key(conn, "write", tenant="acme", name="fuzz-acme")[0],
        }


class AppUnderTest:
    """The ASGI app schemathesis calls: it forwards to the app the ``app`` fixture builds over
    the test database. (Schemathesis needs its app when the module is imported, for the checks
    that send requests of their own; the database exists only once fixtures run. Its fixture
    loader, which would avoid this, does not work with pytest 9.)"""

    def __init__(self) -> None:
        self.app: Litestar | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "the app fixture builds the app before any request"
        await self.app(scope, receive, send)


APP_UNDER_TEST = AppUnderTest()


@pytest.fixture(scope="module")
def app(module_dsn: str) -> Iterator[Litestar]:
    # The fuzzer sends thousands of made-up keys from one address: the limit on those (its own
    # test is in test_api_ratelimit.py) would turn its 401 checks into 429s.
    APP_UNDER_TEST.app = create_app(
        ApiSettings(dsn=module_dsn, key_cache_s=60.0, auth_failure_limit=RateLimit(10**9, 60))
    )
    yield APP_UNDER_TEST.app
    APP_UNDER_TEST.app = None


def openapi_document() -> dict[str, Any]:
    """The document the app serves at /schema/openapi.json (building it needs no database)."""
    return create_app(ApiSettings(dsn="dbname=only-the-openapi-document")).openapi_schema.to_schema()


schema = schemathesis.openapi.from_dict(openapi_document())
schema.app = APP_UNDER_TEST
# Each test sends its own key in Authorization: schemathesis must not generate (or leave out) the
# header itself, or a request it made "invalid" by omitting it reaches the app valid.
schema.config.generation.update(with_security_parameters=False)

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# Every run and job, as one digest: what a refused request must leave as it was.
FINGERPRINT = """
    SELECT md5(coalesce((SELECT string_agg(r::text, ',' ORDER BY r.id) FROM pgsched.runs_all AS r), '')
               || coalesce((SELECT string_agg(j::text, ',' ORDER BY j.id) FROM pgsched.jobs AS j), ''))"""


@pytest.fixture(scope="module")
def watcher(module_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(module_dsn, autocommit=True, context=READER_ADAPTERS) as conn:
        yield conn


def call_and_check(case: Any, key: str, db: psycopg.Connection) -> None:
    """The documented contract, and what it cannot state: a 4xx wrote nothing, and after a 2xx
    every reader behind the list endpoints still reads every row."""
    before = db.execute(FINGERPRINT).fetchone()
    response = case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, excluded_checks=EXCLUDED_CHECKS)
    if 400 <= response.status_code < 500:
        assert db.execute(FINGERPRINT).fetchone() == before, f"{response.status_code} after a write: {case.path}"
    elif response.status_code < 300:
        for tenant in (None, "acme"):
            for run in list_runs(db, limit=1000, tenant=tenant):
                get_run(db, run["id"], tenant=tenant)
            list_queues(db, tenant=tenant)
            for job in list_jobs(db, tenant=tenant):
                get_job(db, job["name"], tenant=tenant)
        render_metrics(db)


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_keeps_its_documented_contract_for_an_admin_key(
    case: Any, app: Litestar, keys: dict[str, str], watcher: psycopg.Connection
) -> None:
    call_and_check(case, keys["admin"], watcher)


@schema.parametrize()
@FUZZ_SETTINGS
def test_every_operation_keeps_its_documented_contract_for_a_tenant_key(
    case: Any, app: Litestar, keys: dict[str, str], watcher: psycopg.Connection
) -> None:
    call_and_check(case, keys["acme"], watcher)

"""The app factory: ``create_app(settings)`` assembles controllers, the dashboard's routes
(pgsched.ui, under /ui), the connection pool (opened in the lifespan, kept on ``app.state``,
with the read replica's when there is one: pgsched.api.replica),
dependencies, authentication, error handlers and the OpenAPI document. It holds no logic of
its own.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anyio.to_thread
import msgspec
from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from psycopg.adapt import AdaptersMap
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import pgsched
from pgsched.api.access import AccessLines, access_log
from pgsched.api.auth import PUBLIC_PATHS, ApiKeyAuthentication, KeyCache, scope_middleware
from pgsched.api.batching import InsertBatcher
from pgsched.api.cache import CACHE_DEPENDENCY, ResponseCache
from pgsched.api.contract import correct_allow_header, document_strict_request_bodies, enforce_the_document
from pgsched.api.controllers.health import HealthController
from pgsched.api.controllers.jobs import JobController
from pgsched.api.controllers.queues import QueueController
from pgsched.api.controllers.runs import RunController
from pgsched.api.controllers.tasks import TaskController
from pgsched.api.controllers.tenants import TenantController, UsageController
from pgsched.api.controllers.workers import WorkerController
from pgsched.api.controllers.workflows import WorkflowController
from pgsched.api.correlation import correlation_middleware
from pgsched.api.deps import DEPENDENCIES
from pgsched.api.errors import EXCEPTION_HANDLERS
from pgsched.api.fast import FastEnqueue
from pgsched.api.ratelimit import RateLimiter, RateLimitMiddleware
from pgsched.api.redis_tier import RedisTier
from pgsched.api.replica import ReadReplica, Reads
from pgsched.api.settings import ApiSettings
from pgsched.app import App
from pgsched.instants import READER_ADAPTERS
from pgsched.ui import UI_PATHS, template_config, ui_routes
from pgsched.ui.insights import Insights

logger = logging.getLogger("pgsched.api")

CONTROLLERS = [
    HealthController,
    RunController,
    JobController,
    QueueController,
    TaskController,
    TenantController,
    UsageController,
    WorkerController,
    WorkflowController,
]


# Never server-side prepared (psycopg prepares a query run 5 times on a connection): the list
# queries' filters are "(%(x)s IS NULL OR column = %(x)s)", and a prepared statement can
# switch to PostgreSQL's generic plan, which cannot drop the unused filters and scans every run
# (measured on 200k runs: 15-60 ms instead of 0.05-0.4 ms through an index). Unprepared, each
# query is planned with its values; planning costs ~0.2 ms.
# READER_ADAPTERS: a row whose timestamp no datetime can hold is listed, not a 422 for everyone.
API_CONNECTION: dict[str, Any] = {"autocommit": True, "prepare_threshold": None, "context": READER_ADAPTERS}
# The enqueue handlers' pool reads the new runs' JSON columns with msgspec: the standard
# library's json.loads was ~15% of a fast POST /runs' CPU (cProfile, thread time); the values
# are the same (big integers, floats, escapes).
ENQUEUE_ADAPTERS = AdaptersMap(READER_ADAPTERS)
set_json_loads(msgspec.json.decode, ENQUEUE_ADAPTERS)
# Unprepared too, although an insert's plan cannot go generic: the API is documented to work
# through PgBouncer with no setting (docs/operations/pgbouncer.md), and a prepared insert fails
# there ("prepared statement _pg3_4 does not exist", 16 concurrent POSTs through PgBouncer 1.18;
# tests/test_pgbouncer.py). Preparing gave 16 in-process callers 2,150 -> 3,600 runs/s for the
# same API CPU per insert: the planning it saves is PostgreSQL's, not the API's.
ENQUEUE_CONNECTION: dict[str, Any] = {**API_CONNECTION, "context": ENQUEUE_ADAPTERS}


@asynccontextmanager
async def database_pool(app: Litestar) -> AsyncIterator[None]:
    """The process's connection pool, open while the app runs. Opening does not wait for the
    database: the API starts (and /health answers) while it is down, and /ready says so."""
    settings: ApiSettings = app.state.settings
    if not settings.auth:
        logger.warning(
            "AUTHENTICATION IS DISABLED (--no-auth): anyone who can reach this API can read and change "
            "every job and run. Use it for local development only."
        )
    pool = ConnectionPool(
        settings.dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_s,
        kwargs=API_CONNECTION,
        open=False,
        name="pgsched-api",
    )
    pool.open(wait=False)
    app.state.pool = pool
    replica = _read_replica(settings)
    app.state.reads = Reads(pool, replica)
    # The event loop's own pool, for the enqueue handlers (POST /runs, /runs/batch): a sync pool
    # driven from a worker thread cost a thread hop per request and ~0.1 ms of the API's CPU.
    async_pool = AsyncConnectionPool(
        settings.dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_s,
        kwargs=ENQUEUE_CONNECTION,
        open=False,
        name="pgsched-api-async",
    )
    await async_pool.open(wait=False)
    app.state.async_pool = async_pool
    app.state.insert_batcher = InsertBatcher(async_pool)  # the fast POST /runs' inserts
    try:
        yield
    finally:
        await async_pool.close()
        await anyio.to_thread.run_sync(pool.close)
        if replica is not None:
            await anyio.to_thread.run_sync(replica.pool.close)


def _read_replica(settings: ApiSettings) -> ReadReplica | None:
    """The replica's pool (PGSCHED_READ_DSN), opened without waiting: a replica that is down
    at start only sends reads to the primary until it is up."""
    if settings.read_dsn is None:
        return None
    pool = ConnectionPool(
        settings.read_dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs=API_CONNECTION,
        open=False,
        name="pgsched-api-replica",
    )
    pool.open(wait=False)
    return ReadReplica(pool, max_lag_s=settings.read_max_lag_s)


@asynccontextmanager
async def redis_tier(app: Litestar) -> AsyncIterator[None]:
    """The optional Redis and what uses it: the read cache and the rate limiter. Without Redis,
    or while it is down, both work from PostgreSQL and in-process counters."""
    settings: ApiSettings = app.state.settings
    redis = None
    if settings.redis_url is not None:
        redis = RedisTier(settings.redis_url, timeout_s=settings.redis_timeout_s, retry_s=settings.redis_retry_s)
        await redis.announce()
    app.state.cache = ResponseCache(redis)
    app.state.rate_limiter = RateLimiter(settings.rate_limit, redis) if settings.rate_limit else None
    app.state.auth_failures = RateLimiter(settings.auth_failure_limit, redis)
    try:
        yield
    finally:
        if redis is not None:
            await redis.aclose()


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="pgsched",
        version=pgsched.__version__,
        description="Jobs, runs, queues and workers of a pgsched installation. "
        "Send `Authorization: Bearer <key>` with a key from `pgsched keys create`.",
        components=Components(
            security_schemes={
                "BearerAuth": SecurityScheme(
                    type="http", scheme="bearer", description="An API key from `pgsched keys create`"
                )
            }
        ),
        security=[{"BearerAuth": []}],
        use_handler_docstrings=True,
    )


def create_app(settings: ApiSettings) -> Litestar:
    """The REST API over the database ``settings.dsn``."""
    middleware: list[Any] = []
    if settings.auth:
        # The dashboard's pages authenticate by session cookie instead (pgsched.ui.access).
        middleware.append(DefineMiddleware(ApiKeyAuthentication, exclude=[*PUBLIC_PATHS, *UI_PATHS]))
    if settings.rate_limit is not None:
        middleware.append(RateLimitMiddleware())  # after authentication: it counts per key
    if settings.auth:
        middleware.append(scope_middleware)  # the key's scope, once the request has counted
    access_lines = AccessLines() if settings.access_log else None
    app = Litestar(
        route_handlers=[*CONTROLLERS, *ui_routes()],
        template_config=template_config(),
        lifespan=[database_pool, redis_tier],
        on_shutdown=[access_lines.flush] if access_lines is not None else [],  # the lines of the last FLUSH_S
        state=State(
            {
                "settings": settings,
                "key_cache": KeyCache(settings.key_cache_s),
                # The enqueue API (no tasks registered: the API queues runs by task name).
                "pgsched": App(dsn=settings.dsn),
                # The dashboard's charts and anomaly flags, kept a few seconds per process.
                "insights": Insights(),
            }
        ),
        dependencies={**DEPENDENCIES, **CACHE_DEPENDENCY},
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        # Logging is the host process's business (`pgsched api` configures it): Litestar's default
        # would replace the root logger's handlers of whatever process builds an app.
        logging_config=None,
        before_request=enforce_the_document,
        before_send=[correct_allow_header],
    )
    document_strict_request_bodies(app.openapi_schema)
    # Around Litestar's own exception handler, not in the route's middleware: the 401, 403 and 429
    # that authentication and the rate limit raise (and a 404) are answered outside the route's
    # middleware stack, and carried no X-Request-ID there.
    litestar = app.asgi_handler
    # The ordinary POST /runs skips the rest.
    app.asgi_handler = FastEnqueue(app, correlation_middleware(litestar), litestar)
    if access_lines is not None:
        app.asgi_handler = access_log(app.asgi_handler, access_lines)  # outermost: every answer has its line
    return app


def create_app_from_env() -> Litestar:
    """The factory `pgsched api` gives uvicorn (each worker process builds its own app)."""
    return create_app(ApiSettings.from_env())

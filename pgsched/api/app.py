"""The app factory: ``create_app(settings)`` assembles controllers, the connection pool (opened
in the lifespan, kept on ``app.state``), dependencies, authentication, error handlers and the
OpenAPI document. It holds no logic of its own.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anyio.to_thread
from litestar import Litestar
from litestar.datastructures import State
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from psycopg_pool import ConnectionPool

import pgsched
from pgsched.api.auth import PUBLIC_PATHS, ApiKeyAuthentication, KeyCache
from pgsched.api.controllers.health import HealthController
from pgsched.api.controllers.jobs import JobController
from pgsched.api.controllers.queues import QueueController
from pgsched.api.controllers.runs import RunController
from pgsched.api.controllers.workers import WorkerController
from pgsched.api.deps import DEPENDENCIES
from pgsched.api.errors import EXCEPTION_HANDLERS
from pgsched.api.settings import ApiSettings
from pgsched.app import App

logger = logging.getLogger("pgsched.api")

CONTROLLERS = [HealthController, RunController, JobController, QueueController, WorkerController]


@asynccontextmanager
async def database_pool(app: Litestar) -> AsyncIterator[None]:
    """The process's connection pool, open while the app runs. Opening does not wait for the
    database: the API starts (and /health answers) while it is down, and /ready says so."""
    settings: ApiSettings = app.state.settings
    if not settings.auth:
        logger.warning("AUTHENTICATION IS DISABLED (--no-auth): anyone who can reach this API can read and change "
                       "every job and run. Use it for local development only.")
    pool = ConnectionPool(settings.dsn, min_size=settings.pool_min_size, max_size=settings.pool_max_size,
                          timeout=settings.pool_timeout_s, kwargs={"autocommit": True}, open=False, name="pgsched-api")
    pool.open(wait=False)
    app.state.pool = pool
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(pool.close)


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="pgsched",
        version=pgsched.__version__,
        description="Jobs, runs, queues and workers of a pgsched installation. "
                    "Send `Authorization: Bearer <key>` with a key from `pgsched keys create`.",
        components=Components(security_schemes={
            "BearerAuth": SecurityScheme(type="http", scheme="bearer",
                                         description="An API key from `pgsched keys create`")}),
        security=[{"BearerAuth": []}],
        use_handler_docstrings=True,
    )


def create_app(settings: ApiSettings) -> Litestar:
    """The REST API over the database ``settings.dsn``."""
    middleware: list[Any] = []
    if settings.auth:
        middleware.append(DefineMiddleware(ApiKeyAuthentication, exclude=PUBLIC_PATHS))
    return Litestar(
        route_handlers=CONTROLLERS,
        lifespan=[database_pool],
        state=State({"settings": settings, "key_cache": KeyCache(settings.key_cache_s),
                     # The enqueue API (no tasks registered: the API queues runs by task name).
                     "pgsched": App(dsn=settings.dsn)}),
        dependencies=DEPENDENCIES,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=openapi_config(),
        request_max_body_size=settings.max_body_bytes,
        # Logging is the host process's business (`pgsched api` configures it): Litestar's default
        # would replace the root logger's handlers of whatever process builds an app.
        logging_config=None,
    )


def create_app_from_env() -> Litestar:
    """The factory `pgsched api` gives uvicorn (each worker process builds its own app)."""
    return create_app(ApiSettings.from_env())

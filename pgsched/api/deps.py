"""What handlers receive by name: the pool, the reads (the replica's, when there is one), the
settings, the enqueue API and the caller's tenant.

A handler declares ``pool: Pool`` (etc.) and Litestar injects it; the providers below read
``app.state``, where the factory and the lifespan put them.
"""

from __future__ import annotations

from typing import Any, Optional

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgsched.api.keys import ApiKey
from pgsched.api.replica import Reads as ReadRouter
from pgsched.api.settings import ApiSettings
from pgsched.app import App

Pool = NamedDependency[ConnectionPool]
# Reads a handler may take from the read replica: ``reads(lambda conn: ...)`` (pgsched.api.replica).
Reads = NamedDependency[ReadRouter]
# The event loop's pool, for async handlers (the enqueues).
AsyncPool = NamedDependency[AsyncConnectionPool]
Settings = NamedDependency[ApiSettings]
Pgsched = NamedDependency[App]
# The caller's tenant; None: the key sees every tenant (or auth is off).
Tenant = NamedDependency[Optional[str]]


def provide_pool(state: State) -> ConnectionPool:
    return state.pool  # type: ignore[no-any-return]


def provide_reads(state: State) -> ReadRouter:
    return state.reads  # type: ignore[no-any-return]


def provide_async_pool(state: State) -> AsyncConnectionPool:
    return state.async_pool  # type: ignore[no-any-return]


def provide_settings(state: State) -> ApiSettings:
    return state.settings  # type: ignore[no-any-return]


def provide_pgsched(state: State) -> App:
    return state.pgsched  # type: ignore[no-any-return]


def provide_tenant(request: Request[Any, Any, Any]) -> Optional[str]:
    key: ApiKey | None = request.scope.get("auth")
    return key.tenant if key is not None else None


DEPENDENCIES = {
    "pool": Provide(provide_pool, sync_to_thread=False),
    "reads": Provide(provide_reads, sync_to_thread=False),
    "async_pool": Provide(provide_async_pool, sync_to_thread=False),
    "settings": Provide(provide_settings, sync_to_thread=False),
    "pgsched": Provide(provide_pgsched, sync_to_thread=False),
    "tenant": Provide(provide_tenant, sync_to_thread=False),
}

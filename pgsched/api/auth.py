"""Who is calling and what they may do: the ``Authorization: Bearer <key>`` middleware, which
also checks the key's scope against the route (the dashboard's pages call :func:`require_scope`).

A missing or unknown key is a 401; a key whose scope is too small is a 403. Unknown keys count
against their client address (``ApiSettings.auth_failure_limit``): past the limit the address
gets 429 without a database lookup, so made-up keys cannot load PostgreSQL. A route's scope is
``read`` for GET and ``write`` otherwise unless its ``opt`` says ``scope``; routes with
``opt={"cluster_wide": True}`` describe the whole installation (workers, metrics) and refuse
tenant keys. Keys found in the database are cached for ``ApiSettings.key_cache_s`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp, Receive, Scope, Send
from psycopg_pool import ConnectionPool

from pgsched.api import keys
from pgsched.api.keys import ApiKey
from pgsched.api.keys import Scope as KeyScope
from pgsched.api.ratelimit import RateLimiter, caller_of
from pgsched.api.settings import ApiSettings

# Paths anyone may fetch: the OpenAPI document and its viewers.
PUBLIC_PATHS = ["^/schema"]
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pgsched"'}


class KeyCache:
    """Live keys seen recently, by digest, each for ``ttl_s`` seconds (unknown keys are not
    cached: every request with one asks the database)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[bytes, tuple[ApiKey, float]] = {}

    def get(self, digest: bytes) -> ApiKey | None:
        entry = self._entries.get(digest)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, digest: bytes, key: ApiKey) -> None:
        if self.ttl_s > 0:
            if len(self._entries) > 10_000:  # bounded: many keys or a slow leak of stale ones
                self._entries.clear()
            self._entries[digest] = (key, time.monotonic() + self.ttl_s)


def _authenticate(pool: ConnectionPool, presented: str) -> ApiKey | None:
    with pool.connection() as conn:
        return keys.authenticate(conn, presented)


class ApiKeyAuthentication(AbstractAuthenticationMiddleware):
    """Sets ``request.auth`` to the caller's :class:`ApiKey`, or answers 401."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise NotAuthorizedException("an API key is required: send Authorization: Bearer <key>", headers=_CHALLENGE)
        scheme, _, presented = header.partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise NotAuthorizedException("the Authorization header must be 'Bearer <key>'", headers=_CHALLENGE)
        cache: KeyCache = connection.app.state.key_cache
        digest = keys.digest(presented)
        key = cache.get(digest)
        if key is None:
            failures: RateLimiter = connection.app.state.auth_failures
            address = f"unknown-key:{caller_of(connection.scope)}"
            retry_after = await failures.exceeded(address)
            if retry_after is not None:
                raise TooManyRequestsException(
                    f"too many requests with unknown API keys from this client address (at most "
                    f"{failures.limit.requests} per {failures.limit.window_s}s); retry in {retry_after}s",
                    headers={"Retry-After": str(retry_after)},
                )
            key = await anyio.to_thread.run_sync(_authenticate, connection.app.state.pool, presented)
            if key is None:
                await failures.hit(address)
                raise NotAuthorizedException("unknown or revoked API key", headers=_CHALLENGE)
            cache.put(digest, key)
        return AuthenticationResult(user=key, auth=key)


def needed_scope(handler: BaseRouteHandler) -> KeyScope:
    scope = handler.opt.get("scope")
    if scope is not None:
        return keys.check_scope(scope)
    methods = handler.http_methods if isinstance(handler, HTTPRouteHandler) else set()
    return "read" if methods <= {"GET", "HEAD"} else "write"


def require_scope(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The guard of every protected route."""
    settings: ApiSettings = connection.app.state.settings
    if not settings.auth or connection.scope.get("method") == "OPTIONS":
        # OPTIONS (Litestar's automatic handler: the Allow header, a CORS preflight) is answered
        # without a key, as browsers send preflights without credentials; the authentication
        # middleware skips it too, so there is no key to check here.
        return
    check_key_scope(connection.scope, handler, connection.auth)


def check_key_scope(scope: Scope, handler: BaseRouteHandler, key: ApiKey) -> None:
    """403 unless ``key`` may call ``handler``."""
    needed = needed_scope(handler)
    if not key.allows(needed):
        raise PermissionDeniedException(
            f"this API key's scope is {key.scope!r}; {scope.get('method', 'this')} "
            f"{ASGIConnection(scope).url.path} needs {needed!r}"
        )
    if handler.opt.get("cluster_wide") and key.tenant is not None:
        raise PermissionDeniedException(
            f"{ASGIConnection(scope).url.path} describes the whole installation: it needs a key without a tenant"
        )


def scope_middleware(app: ASGIApp) -> ASGIApp:
    """The key's scope checked against the route, for every route the key middleware protects
    (after it and after the rate limit, as a guard would be). Not a route guard: Litestar copies
    the route handler for each guard call (copy.copy of a large object, ~6% of a POST's CPU)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        key = scope.get("auth")
        if isinstance(key, ApiKey) and scope.get("method") != "OPTIONS":
            check_key_scope(scope, scope["route_handler"], key)
        await app(scope, receive, send)

    return middleware

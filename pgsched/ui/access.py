"""Who is looking at the dashboard and what they may do.

A page's guard finds the session from its cookie (``sessions.session_key``) and puts the
session's API key where the REST API's authentication puts a presented key
(``connection.scope["auth"]``); from there the REST API's own rules apply unchanged: its
scope guard (``require_scope``: GET needs read, POST write; cluster-wide pages refuse tenant
keys) and its tenant dependency. Every POST must also carry the session's CSRF token (a form
field or the ``X-CSRF-Token`` header htmx sends) and must not come from another site
(``Sec-Fetch-Site``); without either it is refused with 403.
"""

from __future__ import annotations

import hmac
from typing import Any

import anyio.to_thread
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.handlers import BaseRouteHandler
from psycopg_pool import ConnectionPool

from pgsched.api.auth import require_scope
from pgsched.api.keys import ApiKey
from pgsched.api.settings import ApiSettings
from pgsched.ui.sessions import csrf_token, session_key

COOKIE = "pgsched_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# What a browser says a request's initiator was; absent (older browsers, curl) is allowed.
_SAME_SITE = {"same-origin", "none"}


class SignInRequired(NotAuthorizedException):
    """Sign in to see the dashboard."""


def refuse_cross_site(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    site = connection.headers.get("sec-fetch-site")
    if site is not None and site not in _SAME_SITE:
        raise PermissionDeniedException(f"refused: a dashboard form must be sent from the dashboard (came {site})")


def _lookup(pool: ConnectionPool, token: str) -> ApiKey | None:
    with pool.connection() as conn:
        return session_key(conn, token)


async def require_session(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The guard of every dashboard page and action (except the sign-in pages)."""
    settings: ApiSettings = connection.app.state.settings
    token = connection.cookies.get(COOKIE)
    if settings.auth:
        key = await anyio.to_thread.run_sync(_lookup, connection.app.state.pool, token) if token else None
        if key is None:
            raise SignInRequired("sign in with an API key")
        connection.scope["auth"] = connection.scope["user"] = key
    connection.state.csrf = csrf_token(token) if token else ""
    if connection.scope.get("method") == "POST":
        await _check_csrf(connection, settings)
    require_scope(connection, handler)


async def _check_csrf(connection: ASGIConnection[Any, Any, Any, Any], settings: ApiSettings) -> None:
    refuse_cross_site(connection)
    if not settings.auth:  # no session, no token: Sec-Fetch-Site is the protection left
        return
    presented = connection.headers.get(CSRF_HEADER)
    if presented is None:
        form = await connection.form()  # type: ignore[attr-defined]  # a POST is always a Request
        value = form.get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not presented or not hmac.compare_digest(presented, connection.state.csrf):
        raise PermissionDeniedException("refused: this form's CSRF token is missing or wrong; reload the page")


def viewer(connection: ASGIConnection[Any, Any, Any, Any]) -> dict[str, Any]:
    """What every page template needs to know about who is looking."""
    key: ApiKey | None = connection.scope.get("auth")
    return {
        "key": key,
        "can_act": key is None or key.allows("write"),
        "cluster_wide": key is None or key.tenant is None,
        "csrf": getattr(connection.state, "csrf", ""),
    }

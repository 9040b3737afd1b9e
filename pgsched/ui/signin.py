"""Signing in and out: the login form (an API key starts a session), the one-time link
`pgsched dev` prints, and Log out. The session cookie is HttpOnly and SameSite=Strict, and
Secure when the dashboard is served over https."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Controller, Request, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect, Template
from psycopg_pool import ConnectionPool

from pgsched.api import keys
from pgsched.api.deps import Pool, Settings
from pgsched.api.ratelimit import RateLimiter, caller_of
from pgsched.ui.access import COOKIE, refuse_cross_site, require_session
from pgsched.ui.render import page
from pgsched.ui.sessions import SESSION_TTL_S, consume_sign_in_token, end_session, start_session


class SignInController(Controller):
    path = "/ui"
    include_in_schema = False

    @get("/login")
    async def form(self, request: Request[Any, Any, Any], settings: Settings) -> Template | Redirect:
        if not settings.auth:
            return Redirect("/ui")
        return page(request, "login.html", error=None)

    @post("/login")
    async def login(self, request: Request[Any, Any, Any], pool: Pool) -> Template | Redirect:
        """A good API key starts a session; an unknown one shows the form again (401), and
        counts against the client address as it does on the REST API."""
        refuse_cross_site(request)
        failures: RateLimiter = request.app.state.auth_failures
        address = f"unknown-key:{caller_of(request.scope)}"
        if await failures.exceeded(address) is not None:
            return page(
                request, "login.html", error="Too many unknown keys from this address; wait a minute.", status_code=429
            )
        presented = str((await request.form()).get("key") or "").strip()
        token = await anyio.to_thread.run_sync(_sign_in, pool, presented)
        if token is None:
            await failures.hit(address)
            return page(request, "login.html", error="Unknown or revoked API key.", status_code=401)
        return _signed_in(request, token)

    @get("/sign-in/{token:str}", sync_to_thread=True)
    def sign_in_link(self, request: Request[Any, Any, Any], token: FromPath[str], pool: Pool) -> Template | Redirect:
        """A one-time link: its first use starts a session; later ones show the login form."""
        with pool.connection() as conn:
            key_id = consume_sign_in_token(conn, token)
            session = None if key_id is None else start_session(conn, key_id)
        if session is None:
            return page(
                request, "login.html", error="This sign-in link was used already or has expired.", status_code=401
            )
        return _signed_in(request, session)

    @post("/logout", guards=[require_session], sync_to_thread=True)
    def logout(self, request: Request[Any, Any, Any], pool: Pool) -> Redirect:
        token = request.cookies.get(COOKIE)
        if token:
            with pool.connection() as conn:
                end_session(conn, token)
        return Redirect("/ui/login", status_code=303, cookies=[_cookie(request, "", max_age=0)])


def _sign_in(pool: ConnectionPool, presented: str) -> str | None:
    with pool.connection() as conn:
        key = keys.authenticate(conn, presented)
        return None if key is None else start_session(conn, key.id)


def _signed_in(request: Request[Any, Any, Any], token: str) -> Redirect:
    return Redirect("/ui", status_code=303, cookies=[_cookie(request, token, max_age=int(SESSION_TTL_S))])


def _cookie(request: Request[Any, Any, Any], value: str, *, max_age: int) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path="/ui",
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )

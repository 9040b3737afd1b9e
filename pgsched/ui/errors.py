"""Errors on dashboard pages, as pages: bad input is a 400 that says what was wrong, another
tenant's run a 404, a refused action a 403, a page that took too long a 503, and no session
a trip to the login form (for an htmx poll: an HX-Redirect, so the whole page goes there)."""

from __future__ import annotations

import logging
from typing import Any, Callable

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException
from litestar.response import Redirect, Template

from pgsched.api.errors import STATUS_BY_ERROR
from pgsched.errors import InvalidInput, PgschedError
from pgsched.ui.render import page

logger = logging.getLogger("pgsched.ui")

_TITLES = {400: "Bad request", 403: "Not allowed", 404: "Not found", 409: "Not now", 503: "Try again"}


def error_page(request: Request[Any, Any, Any], status: int, message: str) -> Template:
    return page(request, "error.html", status_code=status, title=_TITLES.get(status, "Error"), message=message)


def on_pgsched_error(request: Request[Any, Any, Any], exc: PgschedError) -> Template:
    # The REST API's mapping, except that bad input is a 400 here (a page, not a field error).
    status = (
        400
        if isinstance(exc, InvalidInput)
        else next((code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls)), 500)
    )
    return error_page(request, status, str(exc))


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotAuthorizedException):
        if request.headers.get("hx-request") == "true":
            return Response(b"", status_code=401, headers={"HX-Redirect": "/ui/login"})
        return Redirect("/ui/login", status_code=303)
    status = 400 if exc.status_code in (400, 422) else exc.status_code
    return error_page(request, status, str(exc.detail))


def on_database_error(request: Request[Any, Any, Any], exc: psycopg.Error) -> Template:
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return error_page(request, 503, "This page took longer than its time limit; narrow the filter and try again.")
    if isinstance(exc, (psycopg.DataError, psycopg.errors.ProgramLimitExceeded)):
        return error_page(request, 400, f"The database refused a value: {exc.diag.message_primary or exc}")
    if isinstance(exc, psycopg.OperationalError):
        return error_page(request, 503, "The database is unavailable; try again shortly.")
    logger.error("unexpected database error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_page(request, 500, "internal server error")


UI_EXCEPTION_HANDLERS: dict[type[Exception], Callable[..., Response[Any]]] = {
    PgschedError: on_pgsched_error,
    HTTPException: on_http_exception,
    psycopg.Error: on_database_error,
}

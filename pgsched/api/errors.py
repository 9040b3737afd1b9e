"""Every error a request can meet, turned into a JSON response in one place.

The body is always ``{"status_code", "detail", "errors": [{"field", "message", "source"}]}``:
a validation failure names the field (body), query parameter, path parameter or header at
fault. pgsched's own errors map by class: bad input 422, not found 404, state conflicts 409,
an unreachable or unmigrated database 503, a tenant over a quota 429 with Retry-After (its
error's field is the quota: max_queued or runs_per_day). Nothing a client sends should produce a 500; one
that does is a bug, logged with its traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable

import psycopg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from pgsched.api.keys import ApiKeyNotFound
from pgsched.api.schemas import ErrorOut, FieldError
from pgsched.api.store import IdempotencyKeyConflict
from pgsched.errors import (
    DatabaseUnavailable,
    InvalidInput,
    PgschedError,
    QuotaExceeded,
    RunNotFound,
    RunStateConflict,
    SchemaNotReady,
    WorkflowNotFound,
)
from pgsched.jobs import JobNameAmbiguous, JobNameTaken, JobNotFound
from pgsched.quotas import retry_after_s

logger = logging.getLogger("pgsched.api")

STATUS_BY_ERROR: dict[type[PgschedError], int] = {
    InvalidInput: HTTP_422_UNPROCESSABLE_ENTITY,
    QuotaExceeded: HTTP_429_TOO_MANY_REQUESTS,
    RunNotFound: HTTP_404_NOT_FOUND,
    WorkflowNotFound: HTTP_404_NOT_FOUND,
    JobNotFound: HTTP_404_NOT_FOUND,
    ApiKeyNotFound: HTTP_404_NOT_FOUND,
    RunStateConflict: HTTP_409_CONFLICT,
    JobNameTaken: HTTP_409_CONFLICT,
    JobNameAmbiguous: HTTP_409_CONFLICT,
    IdempotencyKeyConflict: HTTP_409_CONFLICT,
    SchemaNotReady: HTTP_503_SERVICE_UNAVAILABLE,
    DatabaseUnavailable: HTTP_503_SERVICE_UNAVAILABLE,
}

# The library's messages start with the field they are about ("priority must be ...",
# "queue 'x' is not a valid name ..."); these find it. Order matters: first match wins.
_FIELDS = (
    "task",
    "args",
    "queue",
    "priority",
    "max_attempts",
    "run_at",
    "delay",
    "unique_key",
    "status",
    "limit",
    "cursor",
    "misfire",
    "max_catchup",
    "every",
    "at",
    "tz",
    "cron",
    "name",
    "scope",
    "tenant",
    "job",
    "created_after",
    "created_before",
    "finished_after",
    "finished_before",
)
_FIELD_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"^args\[(\d+)\]"), lambda m: f"args[{m[1]}]"),
    (re.compile(rf"^({'|'.join(_FIELDS)})\b"), lambda m: m[1]),
    (re.compile(rf"^the database rejected the run: ({'|'.join(_FIELDS)})_"), lambda m: m[1]),
    (re.compile(r"^a run id\b"), lambda m: "id"),
    (re.compile(r"^a job name\b"), lambda m: "name"),
    (re.compile(r"^invalid cron expression\b"), lambda m: "cron"),
    (re.compile(r"^unknown timezone\b"), lambda m: "tz"),
    (re.compile(r"^a schedule needs exactly one of\b"), lambda m: "cron|every|at"),
    # jsonb refuses a NUL character (\u0000) inside a string: only args are parsed as JSON.
    (re.compile(r"^(?:the database rejected the run: )?unsupported Unicode escape sequence"), lambda m: "args"),
)
# The wire names of library parameters that the API takes under another name.
_WIRE_NAMES = {"unique_key": "Idempotency-Key"}
_QUERY_FIELDS = {"status", "limit", "cursor"}


def field_of(message: str) -> str | None:
    """The field a library error message is about, by its wire name (None: not one field)."""
    for pattern, name in _FIELD_PATTERNS:
        match = pattern.match(message)
        if match:
            field = name(match)
            return _WIRE_NAMES.get(field, field)
    return None


def _locate(field: str | None, request: Request[Any, Any, Any]) -> tuple[str | None, str | None]:
    """``(field, source)``: where in the request the field was."""
    if field is None:
        return None, None
    if field == "id" and "run_id" in request.path_params:
        return "run_id", "path"
    if field in request.path_params:
        return field, "path"
    if field in _WIRE_NAMES.values():
        return field, "header"
    if field in _QUERY_FIELDS or request.method == "GET":
        return field, "query"
    return field, "body"


def error_response(
    status_code: int, detail: str, errors: list[FieldError] | None = None, headers: dict[str, str] | None = None
) -> Response[ErrorOut]:
    return Response(
        ErrorOut(status_code=status_code, detail=detail, errors=errors or []), status_code=status_code, headers=headers
    )


def on_pgsched_error(request: Request[Any, Any, Any], exc: PgschedError) -> Response[ErrorOut]:
    status = next(
        (code for cls, code in STATUS_BY_ERROR.items() if isinstance(exc, cls)), HTTP_500_INTERNAL_SERVER_ERROR
    )
    message = str(exc)
    if status == HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("unexpected pgsched error on %s %s: %s", request.method, request.url.path, message)
    errors = []
    if isinstance(exc, InvalidInput):
        field, source = _locate(field_of(message), request)
        errors = [FieldError(field=field, message=message, source=source)]  # type: ignore[arg-type]
    if isinstance(exc, QuotaExceeded):  # the quota is the "field": max_queued or runs_per_day
        headers = {"Retry-After": str(retry_after_s(exc))}
        return error_response(status, message, [FieldError(field=exc.quota, message=message)], headers=headers)
    return error_response(status, message, errors)


# Litestar reports body-level problems under the key "data" (the handler's parameter name).
_BACKTICKED_FIELD = re.compile(r"(?:missing required|unknown) field `([^`]+)`")
_PATTERN_MESSAGES = (  # msgspec quotes the regex a string failed (schemas.NO_NUL, JOB_NAME): say what it means
    ("x00/]", "must not contain a NUL character (\\u0000) or '/'"),
    ("x00]", "must not contain a NUL character (\\u0000)"),
)
# Litestar names a header by the handler's parameter; clients know it by the header's name.
_HEADERS = {"idempotency_key": "Idempotency-Key"}


def _validation_errors(exc: ValidationException) -> list[FieldError]:
    errors = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        message = str(item.get("message", "invalid"))
        key, source = item.get("key"), item.get("source")
        if key == "data":
            named = _BACKTICKED_FIELD.search(message)
            key = named[1] if named else "body"
            if message == "'data'":  # what Litestar says for an empty body
                message = "a JSON body is required"
        if "regex" in message:
            message = next((text for pattern, text in _PATTERN_MESSAGES if pattern in message), message)
        if source == "header":
            key = _HEADERS.get(key, key)
        errors.append(
            FieldError(
                field=key, message=message, source=source if source in ("body", "query", "path", "header") else None
            )
        )
    return errors


def on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorOut]:
    errors: list[FieldError] = []
    detail = exc.detail
    if isinstance(exc, ValidationException):
        errors = _validation_errors(exc)
    elif exc.status_code == HTTP_400_BAD_REQUEST:  # malformed JSON
        errors = [FieldError(field="body", message=detail, source="body")]
    return error_response(exc.status_code, detail, errors, headers=exc.headers)


def on_undecodable_body(request: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[ErrorOut]:
    # Litestar lets a body that is not UTF-8 escape its JSON decoding as a bare UnicodeDecodeError.
    message = f"the body is not valid UTF-8: {exc.reason} at byte {exc.start}"
    return error_response(HTTP_400_BAD_REQUEST, message, [FieldError(field="body", message=message, source="body")])


def on_too_deep(request: Request[Any, Any, Any], exc: RecursionError) -> Response[ErrorOut]:
    # JSON nested deeper than Python's recursion limit: decoding (or encoding the args) gives up.
    message = "the body is nested too deeply"
    return error_response(HTTP_400_BAD_REQUEST, message, [FieldError(field="body", message=message, source="body")])


def on_database_error(request: Request[Any, Any, Any], exc: psycopg.Error) -> Response[ErrorOut]:
    if isinstance(exc, (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.ProgramLimitExceeded)):
        # A value the database refuses (out of range, too long, a NUL character) is bad input.
        reason = (exc.diag.message_primary or str(exc)).strip()
        message = f"the database refused a value: {reason}"
        field, source = _locate(field_of(reason) or field_of(exc.diag.constraint_name or ""), request)
        logger.info("%s %s: %s", request.method, request.url.path, message)
        located = FieldError(field=field, message=message, source=source)  # type: ignore[arg-type]
        return error_response(HTTP_422_UNPROCESSABLE_ENTITY, message, [located])
    if isinstance(exc, psycopg.errors.UndefinedTable):
        detail = "the pgsched schema is missing or out of date in this database: run `pgsched migrate`"
    elif isinstance(exc, psycopg.OperationalError):  # including the pool's PoolTimeout
        detail = "the database is unavailable; try again shortly"
    else:
        return on_unexpected(request, exc)
    logger.warning("%s %s: %s (%s)", request.method, request.url.path, detail, exc)
    return error_response(HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": "1"})


def on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorOut]:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


EXCEPTION_HANDLERS: dict[type[Exception], Callable[..., Response[ErrorOut]]] = {
    PgschedError: on_pgsched_error,
    HTTPException: on_http_exception,
    UnicodeDecodeError: on_undecodable_body,
    RecursionError: on_too_deep,
    psycopg.Error: on_database_error,
    Exception: on_unexpected,
}

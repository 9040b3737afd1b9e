"""``POST /runs`` without Litestar's per-request machinery, for the requests that are sure to succeed.

Litestar spends most of a POST /runs' CPU around the handler: its middleware layers (each
building a connection object and parsing the headers again), the ``before_request`` body check,
the signature model and kwargs, the Response object and its headers. :class:`FastEnqueue` is the
app's outermost ASGI handler and answers a ``POST /runs`` itself when everything about it is
ordinary: no query string, no Idempotency-Key, a usable or absent X-Request-ID, a key found in
the key cache whose scope allows the route, and a small body that the strict body model
accepts. It does what the route does (the key, the rate limit, the scope, the body, the one
``INSERT … RETURNING`` in the request's correlation context) and answers the same bytes.

Anything else goes to Litestar untouched (the body read here is replayed) before anything is
counted or written, so every refusal (401, 403, 400, 413, 422) comes from the route as before.
Past the rate limit's count, an error is answered by Litestar's exception handler with the
route's own handlers: the 429 of the rate limit or a quota, the 422 of a value the library
refuses, the 503 of an unreachable database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import msgspec
from litestar._asgi.utils import is_valid_host  # the router's own check (private: Litestar has no public one)
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPRequestEvent,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)
from litestar.utils.scope.state import ScopeState

from pgsched.api.auth import KeyCache, needed_scope
from pgsched.api.batching import InsertBatcher
from pgsched.api.correlation import REQUEST_ID_HEADER, new_request_id
from pgsched.api.keys import KEY_PREFIX, ApiKey, digest
from pgsched.api.ratelimit import RateLimiter, caller_of, too_many_requests
from pgsched.api.schemas import RunCreate, RunOut, from_row
from pgsched.app import App
from pgsched.context import is_request_id
from pgsched.enqueue import _insert_params
from pgsched.tracing import continued

if TYPE_CHECKING:
    from litestar import Litestar

# Larger bodies (a big args object) take the route: reading them here would buy little.
FAST_BODY_MAX = 64 * 1024
_JSON_TYPE = (b"content-type", b"application/json")
_WANTED = frozenset(
    (
        b"authorization",
        b"content-length",
        b"transfer-encoding",
        b"idempotency-key",
        b"x-request-id",
        b"traceparent",
        b"host",
    )
)
_decode_json = msgspec.json.Decoder().decode
_encode_json = msgspec.json.Encoder().encode


class FastEnqueue:
    """The app's ASGI handler: ``POST /runs`` here when it is ordinary, everything else to
    ``litestar`` (Litestar's own handler inside the correlation wrapper). ``exception_handler``
    is Litestar's exception handler around its router: it answers the errors raised here after
    the rate limit's count as it answers the route's."""

    def __init__(self, app: Litestar, litestar: ASGIApp, exception_handler: ASGIApp) -> None:
        self.app = app
        self.litestar = litestar
        # Litestar's exception handler answers post-write errors as it answers the route's.
        self._answer_error: Callable[..., Any] = exception_handler.handle_request_exception  # type: ignore[attr-defined]
        self._route: tuple[Any, ...] | None = None  # the router's answer for POST /runs, once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or scope.get("method") != "POST"
            or scope["path"] != "/runs"
            or scope["query_string"]
            or scope.get("root_path")
        ):
            await self.litestar(scope, receive, send)
            return
        headers = {name: value for name, value in scope["headers"] if name in _WANTED}
        known, key = self._caller(headers)
        given_id = headers.get(REQUEST_ID_HEADER)
        if (
            not known
            or b"idempotency-key" in headers
            or b"transfer-encoding" in headers
            or not is_valid_host(headers.get(b"host", b""))  # Litestar's router answers a bad one
            or not _small(headers.get(b"content-length"), self.app.state.settings.max_body_bytes)
            or (given_id is not None and not is_request_id(given_id.decode("latin-1")))  # the route logs it
        ):
            await self.litestar(scope, receive, send)
            return
        body, gone = await _read_body(receive)
        if gone:
            return
        receive = _replaying(body, receive)
        wanted = _ordinary_body(body)
        handler = self._routed(scope)
        if wanted is None or (key is not None and not key.allows(needed_scope(handler))):
            await self.litestar(scope, receive, send)
            return
        request_id = given_id.decode("latin-1") if given_id is not None else new_request_id()
        id_header = (REQUEST_ID_HEADER, given_id or request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        trace = headers.get(b"traceparent")
        # Inside the request's context, as in the route: log lines (the access line too) carry its id.
        with continued(request_id, trace.decode("latin-1") if trace is not None else None):
            try:
                row = await self._enqueue(scope, key, wanted)
            except Exception as exc:  # noqa: BLE001 - answered as the route answers it
                await self._answer_error(
                    litestar_app=self.app, scope=scope, receive=receive, send=send_with_id, exc=exc
                )
                return
            body = _encode_json(from_row(RunOut, row))
            start = [_JSON_TYPE, (b"content-length", str(len(body)).encode()), id_header]
            await send(HTTPResponseStartEvent(type="http.response.start", status=201, headers=start))
            await send(HTTPResponseBodyEvent(type="http.response.body", body=body, more_body=False))

    def _caller(self, headers: dict[bytes, bytes]) -> tuple[bool, ApiKey | None]:
        """(known, key): the request's key from the key cache (None without authentication);
        not known: the route decides (no usable key, or one the cache does not hold)."""
        if not self.app.state.settings.auth:
            return True, None
        header = headers.get(b"authorization", b"")
        if header[:7].lower() != b"bearer ":
            return False, None
        presented = header[7:].strip().decode("latin-1")
        if not presented.startswith(KEY_PREFIX) or len(presented) > 100:
            return False, None
        cache: KeyCache = self.app.state.key_cache
        key = cache.get(digest(presented))
        return key is not None, key

    def _routed(self, scope: Scope) -> Any:
        """The route's handler, set on the scope as Litestar's router sets it (its exception
        handlers answer the errors raised here)."""
        if self._route is None:  # the routes are final once the app serves
            _, handler, _, _, template = self.app.asgi_router.handle_routing(path="/runs", method="POST")
            self._route = handler, template, handler.resolve_exception_handlers()
        handler, template, exception_handlers = self._route
        scope["path_params"] = {}
        scope["route_handler"] = handler
        scope["path_template"] = template
        ScopeState.from_scope(scope).exception_handlers = exception_handlers
        return handler

    async def _enqueue(self, scope: Scope, key: ApiKey | None, wanted: RunCreate) -> dict[str, Any]:
        state = self.app.state
        if key is not None:
            scope["user"] = scope["auth"] = key  # as the authentication middleware sets them
        limiter: RateLimiter | None = state.rate_limiter
        if limiter is not None and (retry_after := await limiter.hit(caller_of(scope))) is not None:
            raise too_many_requests(limiter, scope, retry_after)
        app: App = state.pgsched
        options = app._options(  # the library's checks and defaults, as App.enqueue_returning_async's
            wanted.task,
            queue=wanted.queue,
            priority=wanted.priority,
            max_attempts=wanted.max_attempts,
            run_at=wanted.run_at,
            delay=wanted.delay,
            tenant=key.tenant if key is not None else None,
            concurrency_key=wanted.concurrency_key,
            args=wanted.args,
        )
        params = _insert_params(wanted.task, app._encode(wanted.task, wanted.args), options)  # with its origin
        batcher: InsertBatcher = state.insert_batcher
        return await batcher.insert(params)


def _small(length: bytes | None, max_body_bytes: int) -> bool:
    """A Content-Length this path reads (Litestar answers a missing or too large one)."""
    return length is not None and length.isdigit() and int(length) <= min(FAST_BODY_MAX, max_body_bytes)


def _ordinary_body(body: bytes) -> RunCreate | None:
    """The body as the route takes it (the document's strict types: pgsched.api.contract), or
    None: the route answers (malformed JSON, a wrong type, an unknown field, run_at and delay both)."""
    try:
        wanted = msgspec.convert(_decode_json(body), RunCreate, strict=True)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    if wanted.run_at is not None and wanted.delay is not None:
        return None
    return wanted


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request's body, and True if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """``receive`` for Litestar: the body read here, then the client's own messages."""
    pending = [HTTPRequestEvent(type="http.request", body=body, more_body=False)]

    async def replay() -> ReceiveMessage:
        return pending.pop() if pending else await receive()

    return replay

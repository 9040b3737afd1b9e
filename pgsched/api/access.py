"""The API's access log: a line per HTTP request, the text uvicorn's access log writes
(``INFO:     127.0.0.1:51234 - "POST /runs HTTP/1.1" 201 Created [request=…]``), without
logging's machinery and without a write per line.

uvicorn logs each request through ``logging``: a LogRecord, the correlation filter, its
formatter and a flushed ``write``, 23 µs a line (timeit on the 2-core benchmark machine), ~7%
of a fast POST /runs' API CPU. Here the line is formatted from the ASGI scope and the response's
status, in the request's context (so it ends with the same correlation suffix as every line the
request logs: :func:`pgsched.logs.text_suffix`), and kept in a buffer written at most
``FLUSH_S`` after its first line, in writes of whole lines of at most ``PIPE_BUF`` bytes: the
lines of several API processes sharing one pipe never interleave mid-line.

A process killed with SIGKILL loses at most its last ``FLUSH_S`` of lines; a graceful stop
writes them all (the app's shutdown hook). `pgsched api` writes its access log this way, to
standard output as uvicorn did, uncoloured on a terminal too.
"""

from __future__ import annotations

import asyncio
import http
import select
import sys
from typing import TextIO

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from pgsched.logs import context_fields, text_suffix

# Lines wait at most this long (a burst of ~100 lines at 2,000 requests/s is then one write or two).
FLUSH_S = 0.05
# A write to a pipe of at most PIPE_BUF bytes is atomic; a line's characters are ASCII or, in a
# path, Latin-1 (at most 2 bytes each in UTF-8), so this many characters always fit.
_CHUNK_CHARS = select.PIPE_BUF // 2
_PHRASES = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}


def access_line(scope: HTTPScope, status: int) -> str:
    """uvicorn's access line for ``scope`` answered with ``status`` (level prefix, client
    address, request line, status and phrase), and the correlation suffix of the context."""
    request = f"{scope['method']} {get_path_with_query_string(scope)} HTTP/{scope['http_version']}"  # type: ignore[arg-type]
    phrase = _PHRASES.get(status) or f"{status} "
    return f'INFO:     {get_client_addr(scope)} - "{request}" {phrase}{text_suffix(context_fields())}\n'  # type: ignore[arg-type]


class AccessLines:
    """Lines buffered for at most ``FLUSH_S``, then written to ``stream`` (standard output as
    it is at the time of writing, by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def add(self, line: str) -> None:
        self._lines.append(line)
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_S, self.flush)
            except RuntimeError:  # no event loop in this thread: nothing would flush it later
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        lines, self._lines = self._lines, []
        stream = self._stream or sys.stdout
        for chunk in _chunks(lines):
            stream.write(chunk)
            stream.flush()


def _chunks(lines: list[str]) -> list[str]:
    """Whole lines joined into pieces of at most ``_CHUNK_CHARS`` (a longer line alone)."""
    chunks: list[str] = []
    start, size = 0, 0
    for end, line in enumerate(lines):
        if size + len(line) > _CHUNK_CHARS and end > start:
            chunks.append("".join(lines[start:end]))
            start, size = end, 0
        size += len(line)
    if start < len(lines):
        chunks.append("".join(lines[start:]))
    return chunks


def access_log(app: ASGIApp, lines: AccessLines) -> ASGIApp:
    """``app`` with a line in ``lines`` for every HTTP response, when it starts (as uvicorn
    logs it), or a 500 when ``app`` fails before answering (uvicorn answers that one)."""

    async def logged_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        http_scope = scope  # narrowed by the test above
        started = False

        async def logged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                lines.add(access_line(http_scope, message["status"]))
            await send(message)

        try:
            await app(scope, receive, logged)
        except Exception:
            if not started:
                lines.add(access_line(http_scope, 500))
            raise

    return logged_app

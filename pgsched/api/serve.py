"""Serving the API with uvicorn, in one process or several."""

from __future__ import annotations

import http
import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.logging import AccessFormatter
from uvicorn.supervisors import Multiprocess

_PHRASES = {status.value: f"{status.value} {status.phrase}" for status in http.HTTPStatus}


class LeanAccessFormatter(AccessFormatter):
    """uvicorn's access line, the same text, without its cost: uvicorn's formatter copies the
    record twice and looks the status phrase up per line (~8% of a POST /runs' CPU). The record
    is the access logger's own (one handler, no propagation), so its fields are set in place."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        if self.use_colors:
            return super().formatMessage(record)  # a terminal: colours, at uvicorn's price
        client_addr, method, full_path, http_version, status_code = record.args  # type: ignore[misc]
        code = int(status_code)  # type: ignore[arg-type]
        fields = record.__dict__
        fields["client_addr"] = client_addr
        fields["request_line"] = f"{method} {full_path} HTTP/{http_version}"
        fields["status_code"] = _PHRASES.get(code) or f"{code} "
        fields["levelprefix"] = record.levelname + ":" + " " * (8 - len(record.levelname))
        return self._style.format(record)


class TcpConfig(uvicorn.Config):
    """uvicorn's config with a listener that says it is TCP. With several worker processes
    uvicorn binds the shared socket itself, with protocol 0, and asyncio sets TCP_NODELAY on
    accepted connections only when the listener's protocol is IPPROTO_TCP: without it every
    keep-alive response waited ~40 ms for the client's delayed ACK (uvicorn issue #3149)."""

    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            return socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        return sock


def serve(factory: str, *, workers: int, **options: Any) -> None:
    """Serve the app that ``factory`` ("module:function") builds, as ``uvicorn.run`` would
    (without its reloader), in ``workers`` processes."""
    config = TcpConfig(factory, factory=True, workers=workers, **options)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=[config.bind_socket()]).run()
        else:
            server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it caught, once it has shut down
        pass
    if config.workers == 1 and not server.started:  # the port is taken, say: uvicorn logged why
        sys.exit(STARTUP_FAILURE)

"""Serving the API with uvicorn, in one process or several."""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess


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

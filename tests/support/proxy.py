"""A plain TCP forwarder in a thread: something between a client and PostgreSQL, as PgBouncer
or a port mapping is, for the checks that must notice one."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from typing import Iterator


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, target):
            end.close()


@contextmanager
def forwarding(host: str, port: int) -> Iterator[int]:
    """Listen on a free local port and forward each connection to ``host:port``; yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            server = socket.create_connection((host, port))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=_pipe, args=(source, target), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        acceptor.join()
        listener.close()

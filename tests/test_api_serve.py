"""How `pgsched api` listens: the shared socket of several worker processes is a TCP one,
so asyncio turns Nagle off on every connection it accepts."""

from __future__ import annotations

import socket

from pgsched.api.serve import TcpConfig


def test_the_listener_of_several_workers_is_marked_tcp() -> None:
    config = TcpConfig("pgsched.api.app:create_app_from_env", factory=True, host="127.0.0.1", port=0, workers=2)
    sock = config.bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0  # still bound where asked
    finally:
        sock.close()

"""How `pgsched api` listens and answers: the shared socket of several worker processes is a
TCP one, so asyncio turns Nagle off on every connection it accepts; a response's head and body
go out in one write."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from pgsched.api.serve import OneWriteProtocol, TcpConfig
from tests.support.waiting import wait_until_async


def test_the_listener_of_several_workers_is_marked_tcp() -> None:
    config = TcpConfig("pgsched.api.app:create_app_from_env", factory=True, host="127.0.0.1", port=0, workers=2)
    sock = config.bind_socket()
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockname()[0] == "127.0.0.1" and sock.getsockname()[1] > 0  # still bound where asked
    finally:
        sock.close()


class RecordingTransport(asyncio.Transport):
    """What the protocol writes and when it closes, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[bytes | str] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.events.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.events.append("close")

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-length", b"5")]})
    await send({"type": "http.response.body", "body": b"hello"})


def test_a_response_goes_out_in_one_write_and_before_the_connection_closes() -> None:
    async def exchange() -> list[bytes | str]:
        config = Config(hello, access_log=False, log_config=None)
        config.load()
        protocol = OneWriteProtocol(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)

        async def seen(count: int) -> bool:
            return len(transport.events) >= count

        protocol.data_received(b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await wait_until_async(lambda: seen(1), 5, "the first response")
        protocol.data_received(b"POST /runs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await wait_until_async(lambda: seen(3), 5, "the second response and the close")
        return transport.events

    first, second, closed = asyncio.run(exchange())
    for response in (first, second):
        assert isinstance(response, bytes) and response.startswith(b"HTTP/1.1 201 Created\r\n")
        assert response.endswith(b"\r\n\r\nhello")  # the head and the body in the same write
    assert closed == "close"

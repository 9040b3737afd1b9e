"""A real, throwaway redis-server for tests: started on a free port, stopped, paused (SIGSTOP: a
Redis that accepts connections and never answers) and restarted on the same port. Never the
machine's Redis on 6379, never an in-process fake.

The binary is the system's ``redis-server`` (Debian's package); without it the tests that need
it are skipped, saying so.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import redis

from tests.support.processes import free_port
from tests.support.waiting import wait_until


def redis_server_binary() -> str | None:
    return shutil.which("redis-server") or next(
        (path for path in ("/usr/bin/redis-server", "/usr/local/bin/redis-server") if os.access(path, os.X_OK)), None
    )


class RedisServer:
    """One redis-server process on 127.0.0.1, without persistence."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        log = open(self.directory / "redis.log", "ab")
        self._process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_until_it_answers()

    def _wait_until_it_answers(self) -> None:
        def running() -> None:
            assert self._process is not None and self._process.poll() is None, (
                self.directory / "redis.log"
            ).read_text()

        with self.client() as client:
            wait_until(
                client.ping, 10, "redis-server to answer", poll=0.01, check=running, ignoring=(redis.ConnectionError,)
            )

    def stop(self) -> None:
        if self._process is None:
            return
        self.resume()  # a stopped process cannot act on SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def pause(self) -> None:
        """Freeze the server: connections are accepted by the kernel but never answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)


@contextmanager
def running_redis(directory: Path) -> Iterator[RedisServer]:
    """A started server, stopped afterwards; skips the test when redis-server is not installed."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server); "
            "the Redis cache tier tests need a real server"
        )
    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(binary, directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()

"""The benchmark client's side of the orchestrator protocol (standard library only).

The client runs in the system's venv: ``python -m benchmarks.peers_drivers.<name> client``.
It reads one JSON command per line on stdin ({"cmd": "bulk", "n": 20000}) and answers one
JSON object per line on stdout ({"ok": true, ...} or {"ok": false, "error": "..."}). Library
output that would land on stdout is moved to stderr so it cannot corrupt the protocol.
Handlers may be coroutines: they all run on one event loop, so connections opened by
``setup`` stay usable.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import socket
import sys
import time
import traceback
from typing import Any, Awaitable, Callable

LATENCY_WARMUP = 5


def serve(handlers: object) -> None:
    """Answer commands with ``handlers.<cmd>(**args)`` until stdin closes or "quit"."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # print() from a library goes to stderr from here on
    sys.stdout = sys.stderr
    with asyncio.Runner() as runner:
        for line in sys.stdin:
            if not line.strip():
                continue
            request = json.loads(line)
            cmd = request.pop("cmd")
            if cmd == "quit":
                break
            try:
                result = getattr(handlers, cmd)(**request)
                if inspect.isawaitable(result):
                    result = runner.run(_await(result))
                answer = {"ok": True, **(result or {})}
            except Exception as exc:  # noqa: BLE001 - reported to the orchestrator, which stops the run
                traceback.print_exc()
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out.write(json.dumps(answer) + "\n")
        close = getattr(handlers, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                runner.run(_await(result))


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


class StampReceiver:
    """The unix datagram socket the ``stamp`` tasks report their start time to."""

    def __init__(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)

    def discard_pending(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(64)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def wait(self, timeout_s: float) -> float:
        self.sock.settimeout(timeout_s)
        try:
            return float(self.sock.recv(64))
        except TimeoutError:
            raise TimeoutError(f"no task started within {timeout_s:g}s") from None

    def close(self) -> None:
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


async def measure_latency(
    enqueue_stamp: Callable[[], Any],
    is_idle: Callable[[], Any],
    n: int,
    socket_path: str,
    startup_timeout_s: float = 90.0,
) -> dict[str, Any]:
    """Milliseconds from the enqueue call to the task starting, one at a time, idle worker.

    The first stamp waits for the worker to come up; a few more warm it before sampling.
    Before each sample the previous run must be finished (``is_idle``), then 2 ms pass.
    """
    receiver = StampReceiver(socket_path)
    try:
        await maybe_await(enqueue_stamp())
        receiver.wait(startup_timeout_s)
        samples: list[float] = []
        for i in range(LATENCY_WARMUP + n):
            deadline = time.monotonic() + 10
            while not await maybe_await(is_idle()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the previous latency run did not finish within 10 s")
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.002)
            receiver.discard_pending()
            sent = time.time()
            await maybe_await(enqueue_stamp())
            started = receiver.wait(10)
            if i >= LATENCY_WARMUP:
                samples.append((started - sent) * 1000)
        return {"samples_ms": samples}
    finally:
        receiver.close()


def timed_rate(n: int, seconds: float) -> dict[str, float]:
    return {"per_s": n / seconds if seconds > 0 else float("inf"), "seconds": seconds}


def package_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)

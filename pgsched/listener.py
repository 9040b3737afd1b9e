"""Notify → wake: a dedicated autocommit connection LISTENs on a channel.

The worker listens on ``pgsched``, whose payloads are queue names (sent by the runs table's
trigger); the beat on ``pgsched_jobs``. A notification sets a wake event, so many arriving
before the waiter runs collapse into one wake-up. Notifications sent while disconnected are
lost, so every (re)connect also wakes the waiter once, which then polls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, LiteralString

import psycopg


logger = logging.getLogger("pgsched.listener")

RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class Listener:
    """Runs ``listen_query`` (a named LISTEN) on its own connection and calls ``wake`` for every
    notification whose payload ``accept`` takes (every one, by default)."""

    def __init__(self, dsn: str, listen_query: LiteralString, wake: Callable[[], None],
                 accept: Callable[[str], bool] | None = None) -> None:
        self._dsn = dsn
        self._listen_query = listen_query
        self._wake = wake
        self._accept = accept
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff when the connection drops."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(self._listen_query)
                    failures = 0
                    self.connected.set()
                    self._wake()  # anything sent while we were not listening: poll once
                    async for notify in conn.notifies():
                        if self._accept is None or self._accept(notify.payload):
                            self._wake()
            except psycopg.OperationalError as exc:
                self.connected.clear()
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

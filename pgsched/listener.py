"""Notify → wake: a dedicated autocommit connection LISTENs on channel ``pgsched``.

Payloads are queue names (sent by the runs table's trigger). A notification for one of our
queues sets the fetcher's wake event; many notifications before the fetcher runs collapse
into one wake-up. Notifications sent while disconnected are lost, so every (re)connect also
wakes the fetcher once, which then polls.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Collection

import psycopg

from pgsched.sql import queries

logger = logging.getLogger("pgsched.listener")

RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class Listener:
    def __init__(self, dsn: str, queues: Collection[str], wake: Callable[[], None]) -> None:
        self._dsn = dsn
        self._queues = frozenset(queues)
        self._wake = wake
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff when the connection drops."""
        failures = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._dsn, autocommit=True) as conn:
                    await conn.execute(queries["listener_listen"])
                    failures = 0
                    self.connected.set()
                    self._wake()  # anything sent while we were not listening: poll once
                    async for notify in conn.notifies():
                        if notify.payload in self._queues:
                            self._wake()
            except psycopg.OperationalError as exc:
                self.connected.clear()
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

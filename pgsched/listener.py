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
    """Runs ``listen_query`` (named LISTEN statements) on its own connection, calls
    ``on_notify(channel, payload)`` for every notification and ``on_connect()`` after every
    (re)connect."""

    def __init__(
        self,
        dsn: str,
        listen_query: LiteralString,
        on_notify: Callable[[str, str], None],
        on_connect: Callable[[], None],
    ) -> None:
        self._dsn = dsn
        self._listen_query = listen_query
        self._on_notify = on_notify
        self._on_connect = on_connect
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
                    self._on_connect()  # anything sent while we were not listening: poll once
                    async for notify in conn.notifies():
                        self._on_notify(notify.channel, notify.payload)
            except psycopg.OperationalError as exc:
                self.connected.clear()
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)

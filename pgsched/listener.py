"""Notify → wake: a dedicated autocommit connection LISTENs on a channel.

The worker listens on ``pgsched``, whose payloads are queue names (sent by the runs table's
trigger); the beat on ``pgsched_jobs``. A notification sets a wake event, so many arriving
before the waiter runs collapse into one wake-up. Notifications sent while disconnected are
lost, so every (re)connect also wakes the waiter once, which then polls.

The same session says when its worker waits (:meth:`Listener.advertise`): the insert trigger
notifies a queue only while some worker holds that queue's waiting lock (schema 0027), and
the lock lives on this connection, so it goes when the LISTEN goes. A statement runs between
two reads of notifications: reading is paused for it (a notification arriving meanwhile is
kept by psycopg and handed on right after).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Callable, LiteralString

import psycopg

from pgsched.sql import queries

logger = logging.getLogger("pgsched.listener")

RECONNECT_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)


class NotListening(Exception):
    """The listener has no connection now: nothing can be advertised on it."""


_Request = tuple[LiteralString, dict[str, Any], "asyncio.Future[None] | None"]


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
        self._requests: asyncio.Queue[_Request] = asyncio.Queue()
        # The queues this session holds the waiting lock of; None: none (also after a reconnect,
        # since a session lock goes with its session).
        self._advertised: frozenset[str] | None = None

    @property
    def advertised(self) -> bool:
        """Whether this session holds the waiting locks (they go with a lost connection)."""
        return self._advertised is not None

    async def advertise(self, queues: Sequence[str]) -> None:
        """Hold the waiting lock of ``queues`` on this session (returns once held). Raises
        :class:`NotListening` when there is no connection, or the connection's error."""
        if not self.connected.is_set():
            raise NotListening()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests.put_nowait((queries["worker_advertise_waiting"], {"queues": list(queues)}, done))
        await done
        self._advertised = frozenset(queues)

    def withdraw(self) -> None:
        """Let go of the waiting locks (not awaited: the worker has runs to start)."""
        if self._advertised is not None:
            self._advertised = None
            self._requests.put_nowait((queries["worker_withdraw_waiting"], {}, None))

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
                    await self._serve(conn)
            except psycopg.OperationalError as exc:
                self._lost()
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                logger.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
            finally:
                self._lost()

    def _lost(self) -> None:
        self.connected.clear()
        self._advertised = None
        while not self._requests.empty():  # asked of a session that is gone
            _, _, done = self._requests.get_nowait()
            if done is not None and not done.done():
                done.set_exception(NotListening())

    async def _serve(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Hand on notifications; between two reads, run what was asked of this session."""
        while True:
            reading = asyncio.ensure_future(self._read(conn))
            asked = asyncio.ensure_future(self._requests.get())
            try:
                await asyncio.wait((reading, asked), return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _stopped(asked)
                await _stopped(reading)
            request = asked.result() if not asked.cancelled() else None
            if not reading.cancelled() and reading.exception() is not None:
                if request is not None:
                    self._requests.put_nowait(request)  # failed by _lost: the session is gone
                reading.result()
            if request is not None:
                await self._execute(conn, request)

    async def _read(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for notify in conn.notifies():
            self._on_notify(notify.channel, notify.payload)

    async def _execute(self, conn: psycopg.AsyncConnection[Any], request: _Request) -> None:
        query, params, done = request
        try:
            await conn.execute(query, params)
        except psycopg.OperationalError as exc:
            if done is not None and not done.done():
                done.set_exception(exc)
            raise  # the connection is gone: reconnect
        except psycopg.Error as exc:
            logger.warning("listener statement failed: %s", exc)
            if done is not None and not done.done():
                done.set_exception(exc)
            return
        if done is not None and not done.done():
            done.set_result(None)


async def _stopped(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` unless it is done, and wait until it is (its outcome stays in it)."""
    if not task.done():
        task.cancel()
    await asyncio.wait((task,))

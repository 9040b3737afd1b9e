"""Reads from a streaming replica (``PGSCHED_READ_DSN``): the API's lists and statistics, and
the dashboard's list pages, run on a standby so the primary keeps its CPU for claims and
completions. Everything else stays on the primary: every write, a read of what the same
request wrote (it runs on the writing connection), single runs and jobs (a client that just
queued a run reads it back at once), ``/metrics`` and ``/ready`` (they describe the primary:
its sessions, its locks, its vacuum), and the beat leader (a lock only the primary holds).

When the replica cannot serve, the read goes to the primary, with a warning in the log when
that starts and a line when it ends; never an error for the caller:

- it cannot be reached (a connection not had within ``connect_timeout_s``): left alone for
  ``retry_s``, then one request tries again;
- it lags: more than ``max_lag_s`` behind in replay, or not streaming at all (no WAL receiver:
  its upstream went away, so it no longer knows how far behind it is). Checked at most every
  ``check_s`` per process, on the replica itself (``replica_lag``);
- a read fails there (the replica stopped mid-query, or the query was cancelled by a conflict
  with recovery): the same read runs again on the primary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from pgsched.sql import queries

logger = logging.getLogger("pgsched.api")

T = TypeVar("T")


@dataclass
class ReadReplica:
    """The replica's pool and what this process last learned of it."""

    pool: ConnectionPool
    max_lag_s: float = 5.0
    check_s: float = 1.0
    retry_s: float = 5.0
    connect_timeout_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _good_until: float = float("-inf")  # usable without another lag check until then
    _down_until: float = float("-inf")  # not tried again until then
    _falling_back: bool = False  # reads go to the primary now (logged once per episode)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, primary: ConnectionPool, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``query`` on a replica connection if the replica can serve, else on the primary."""
        if self._usable():
            try:
                with self.pool.connection(timeout=self.connect_timeout_s) as conn:
                    result = query(conn)
                self._serving()
                return result
            except psycopg.OperationalError as exc:  # PoolTimeout, a lost connection, a recovery conflict
                self._failed(f"a read failed there ({exc})")
        with primary.connection() as conn:
            return query(conn)

    def _usable(self) -> bool:
        with self._lock:
            now = self.clock()
            if now < self._down_until:
                return False
            if now < self._good_until:
                return True
            problem = self._check()
            if problem is None:
                self._good_until = now + self.check_s
                return True
        self._failed(problem)
        return False

    def _check(self) -> str | None:
        """Why the replica cannot serve now (None: it can)."""
        try:
            with self.pool.connection(timeout=self.connect_timeout_s) as conn:
                with conn.cursor(row_factory=dict_row) as cur:
                    row = cur.execute(queries["replica_lag"]).fetchone()
        except psycopg.OperationalError as exc:
            return f"it cannot be reached ({exc})"
        assert row is not None
        if not row["in_recovery"]:
            return None  # not a standby (promoted, or the primary itself): current by definition
        if not row["receiving"]:
            return "it is not streaming from its primary (no WAL receiver): how far behind it is is unknown"
        if row["lag_s"] > self.max_lag_s:
            return f"it is {row['lag_s']:.1f} s behind (the bound is {self.max_lag_s:g} s)"
        return None

    def _failed(self, problem: str) -> None:
        with self._lock:
            self._down_until = self.clock() + self.retry_s
            self._good_until = float("-inf")
            first = not self._falling_back
            self._falling_back = True
        if first:
            logger.warning("reads go to the primary: the read replica cannot serve them: %s", problem)

    def _serving(self) -> None:
        if self._falling_back:
            with self._lock:
                self._falling_back = False
            logger.info("reads go to the read replica again")


def read_on(primary: ConnectionPool, replica: ReadReplica | None, query: Callable[[psycopg.Connection[Any]], T]) -> T:
    """``query`` on the replica when one is configured and can serve, else on the primary."""
    if replica is None:
        with primary.connection() as conn:
            return query(conn)
    return replica.read(primary, query)


class Reads:
    """What a handler that only reads receives (``reads``): ``reads(query)`` runs ``query(conn)``
    on the replica when there is one that can serve, else on the primary pool. (A plain class:
    Litestar would try to validate a dataclass dependency field by field.)"""

    __slots__ = ("primary", "replica")

    def __init__(self, primary: ConnectionPool, replica: ReadReplica | None = None) -> None:
        self.primary = primary
        self.replica = replica

    def __call__(self, query: Callable[[psycopg.Connection[Any]], T]) -> T:
        return read_on(self.primary, self.replica, query)

"""Fetch: the claim hop. Wakes on a notification (or its poll), claims up to the free slots
in one statement (``run_claim``), and hands each claimed run to the worker to start.

    listener ─► notify_enqueued / wake ─► claim (run_claim, LIMIT = free slots) ─► start(run)

When to claim: as soon as it is woken, if a slot is free. When the last claim filled every
free slot there is a backlog, and the fetcher waits for a batch of slots (half of them)
before claiming again. It also waits while the outcomes not yet written reach their bound, so
a slow database slows the claims instead of filling memory. The poll interval is a safety net:
notifications normally wake it, and when only deferred runs are queued it sleeps until the
earliest one is due.

Queue settings (:mod:`pgsched.queue_settings`): the fetcher keeps which of its queues are
paused or limited, reloaded on a ``pgsched_queues`` notification, after a reconnect and once
per poll interval. The copy only decides which claims to make: the claims themselves read the
settings as they are in the database, so a stale copy can delay runs, never break a setting.
A paused queue is not claimed from. A limited queue (``max_running``) is claimed first, in a
transaction of its own that locks its settings row (``queue_lock_for_claim``) so the claims of
every worker for that queue take turns, then counts its running runs and claims no more than
the limit leaves (``run_claim_limited``); the other queues take the remaining slots
(``run_claim``, which passes over paused and limited queues). A queue without settings pays
one primary-key probe per claim.

Process pool: runs of the process-pool tasks are claimed apart, no more than the idle children
could start (a run waiting here for a child is a run another worker could be executing); the
other tasks' runs take the remaining slots.

The fetcher owns no run once it is started: what it needs of the worker (free slots, free
children, whether writes are backed up, how to start a run) comes in as :class:`Capacity`,
so the arrows point one way — worker → fetcher → :mod:`pgsched.run_types`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched.claim_cursor import ClaimCursors
from pgsched.config import connection_kwargs
from pgsched.run_types import ClaimedRun
from pgsched.sql import queries

logger = logging.getLogger("pgsched.worker")

# The fetcher's own connection commits claims without waiting for the WAL flush. Safe: if
# PostgreSQL crashed before flushing a claim, the run is simply 'queued' again and runs again,
# which at-least-once allows; completions stay durable (and their flush covers the claim).
# Saves an fsync per claim: enqueue->start latency and claim throughput both gain.
#
# The claim has one right plan (the claim index, whatever the parameters) but PostgreSQL's
# "auto" plan cache kept re-planning it on every execution: the generic plan halves an
# idle claim (measured 0.57 -> 0.34 ms).
#
# Through a transaction-mode pooler neither startup option can be sent (PgBouncer refuses
# them) and no statement stays prepared: each claim is then a transaction that skips the flush
# with SET LOCAL, and is planned anew (see Fetcher._claim_transaction).
CLAIM_CONNECTION: dict[str, Any] = {
    "autocommit": True,
    "options": "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan",
}
LOCKED_BY_OTHERS_PAUSE_S = 0.05
# While a limited queue is at its limit (or another worker has its turn), look again this often,
# or as soon as this worker's own outcomes are written: a slot freed by another worker sends no
# notification (yet). A claim that finds the queue at its limit costs 0.5-0.9 ms (measured with 160
# runs running: BEGIN, the row lock, the count, COMMIT): at most 20 a second per worker.
HELD_BY_LIMIT_PAUSE_S = 0.05
# The fetcher's connection is its own: waiting for it means the database is unreachable, and
# the fetch loop (which notices a stop request between claims) retries with backoff anyway.
FETCHER_CONNECTION_WAIT_S = 1.0


def claim_pool(dsn: str, pgbouncer: bool) -> AsyncConnectionPool:
    """The fetcher's own connection (a pool of one, so a broken connection is replaced)."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        kwargs=connection_kwargs(pgbouncer, **CLAIM_CONNECTION),
        name="pgsched-fetcher",
        open=False,
    )


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the fetcher asks the worker before and after each claim."""

    free_slots: Callable[[], int]  # runs the worker may start now
    free_children: Callable[[], int]  # idle process-pool children not yet taken by a run
    writes_backed_up: Callable[[], bool]  # outcomes not yet written have reached their bound
    start: Callable[[ClaimedRun], None]  # hand a claimed run to the executor


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """What the fetcher claims for: its worker's queues and options."""

    queues: Sequence[str]
    lease_s: float
    poll_interval_s: float
    concurrency: int
    pgbouncer: bool = False
    process_tasks: Sequence[str] = ()  # tasks that run in the process pool, claimed apart


class Fetcher:
    def __init__(self, settings: FetchSettings, capacity: Capacity, stopping: asyncio.Event) -> None:
        self._settings = settings
        self._capacity = capacity
        self._stopping = stopping
        self._queue_set = frozenset(settings.queues)
        self._process_tasks = sorted(settings.process_tasks)
        # With a backlog, claim once half the slots are free, not a few at a time: sync tasks
        # free their slots one by one, and claims of a handful cost the database a statement
        # per handful (sync no-op drain +30% against a quarter; async runs free theirs together).
        self._min_batch = max(1, settings.concurrency // 2)
        self._worker_id = 0  # known once the worker has registered (see run)
        self._wake = asyncio.Event()
        self._backlog = False  # the last claim filled every free slot
        self._waiting_for_capacity = False  # asleep until a slot, a child or the completer frees up
        self._paused: frozenset[str] = frozenset()  # of our queues, as last loaded
        self._limited: tuple[str, ...] = ()  # of our queues, with max_running set (and not paused)
        self._settings_stale = True  # reload the queue settings before the next claim
        self._settings_loaded_at = 0.0  # loop time of the last load
        self._held = False  # the last claim left due runs of a limited queue behind its limit
        self._cursors = ClaimCursors()  # where each open queue's next claim starts in the claim index

    # ---- wake-ups

    def wake(self) -> None:
        """Look for runs now (a reconnected listener, a stop request). Settings changed while
        the listener was away went unheard: reload them too."""
        self._settings_stale = True
        self._wake.set()

    def queue_settings_changed(self, queue: str) -> None:
        """A notification: ``queue``'s settings changed (paused, resumed, limit set or cleared)."""
        if queue in self._queue_set:
            self._settings_stale = True
            self._wake.set()

    def notify_enqueued(self, queue: str) -> None:
        """A notification: runs were enqueued on ``queue``."""
        if queue in self._queue_set:
            self._wake.set()

    def capacity_freed(self) -> None:
        """A slot, a child or room for outcomes freed up: wake if that is what we wait for."""
        if self._waiting_for_capacity:
            self._wake.set()

    def outcomes_written(self) -> None:
        """The completer wrote outcomes: room for more, and in the database the slots of a
        limited queue that its runs held (what a held claim waits for)."""
        if self._waiting_for_capacity or self._held:
            self._wake.set()

    # ---- the loop: wake → claim → start

    async def run(self, pool: AsyncConnectionPool, worker_id: int) -> None:
        """Claim runs for ``worker_id`` and start them until ``stopping`` is set. ``pool`` is
        :func:`claim_pool`'s."""
        self._worker_id = worker_id
        capacity = self._capacity
        failures = 0
        while not self._stopping.is_set():
            free = capacity.free_slots()
            if free < (self._min_batch if self._backlog else 1) or capacity.writes_backed_up():
                self._waiting_for_capacity = True
                # Clear first: a wake-up left set (a notify while full) would return at once,
                # without yielding, and this loop would spin and starve the event loop.
                self._wake.clear()
                await self._sleep_until_woken(None)
                continue
            self._waiting_for_capacity = False
            self._wake.clear()
            try:
                await self._load_queue_settings_if_due(pool)
                runs = await self._claim(pool, free)
                failures = 0
            except psycopg.OperationalError as exc:
                failures += 1
                logger.warning("claim failed (%s); retrying", exc)
                await self._sleep_until_woken(min(0.1 * 2**failures, self._settings.poll_interval_s))
                continue
            for run in runs:
                capacity.start(run)
            await asyncio.sleep(0)  # let the new tasks start before anything else goes out
            self._backlog = len(runs) == free
            if self._backlog:
                continue
            if self._held:
                await self._sleep_until_woken(min(HELD_BY_LIMIT_PAUSE_S, self._settings.poll_interval_s))
            elif self._process_tasks and capacity.free_children() == 0:
                # Due runs may be waiting for a child: a child freeing up wakes us (as a slot
                # does), new runs notify; the poll interval catches deferred runs coming due.
                self._waiting_for_capacity = True
                await self._sleep_until_woken(self._settings.poll_interval_s)
            else:
                await self._sleep_until_woken(await self._seconds_until_due(pool))

    # ---- queue settings

    async def _load_queue_settings_if_due(self, pool: AsyncConnectionPool) -> None:
        """Reload which of our queues are paused or limited: when told, and once per poll interval."""
        now = asyncio.get_running_loop().time()
        if not self._settings_stale and now - self._settings_loaded_at < self._settings.poll_interval_s:
            return
        async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
            cursor = await conn.execute(queries["queue_settings_of_worker"], {"queues": self._settings.queues})
            rows = await cursor.fetchall()
        self._paused = frozenset(name for name, paused, _ in rows if paused)
        self._limited = tuple(name for name, paused, max_running in rows if not paused and max_running is not None)
        self._settings_stale = False
        self._settings_loaded_at = now

    def _open_queues(self) -> list[str]:
        """Our queues neither paused nor limited, as last loaded (``run_claim`` checks again)."""
        return [q for q in self._settings.queues if q not in self._paused and q not in self._limited]

    # ---- claims

    async def _claim(self, pool: AsyncConnectionPool, limit: int) -> list[ClaimedRun]:
        """Up to ``limit`` due runs. With a process pool, runs of its tasks only as many as it
        has children not yet taken, then the other tasks' runs for the remaining slots."""
        self._held = False
        if not self._process_tasks:
            return await self._claim_runs(pool, limit)
        children = min(limit, self._capacity.free_children())
        runs = await self._claim_runs(pool, children, only_tasks=self._process_tasks) if children > 0 else []
        if len(runs) < limit:
            runs += await self._claim_runs(pool, limit - len(runs), skip_tasks=self._process_tasks)
        return runs

    async def _claim_runs(
        self,
        pool: AsyncConnectionPool,
        limit: int,
        *,
        only_tasks: list[str] | None = None,
        skip_tasks: list[str] | None = None,
    ) -> list[ClaimedRun]:
        """Limited queues first (each takes at most what its limit leaves, so a backlog in an
        open queue cannot starve them), then the open queues for the remaining slots."""
        runs: list[ClaimedRun] = []
        for queue in self._limited:
            if len(runs) >= limit:
                break
            runs += await self._claim_limited(pool, queue, limit - len(runs), only_tasks, skip_tasks)
        open_queues = self._open_queues()
        if len(runs) < limit and open_queues:
            runs += await self._claim_open(pool, open_queues, limit - len(runs), only_tasks, skip_tasks)
        return runs

    def _claim_params(self, limit: int, only_tasks: list[str] | None, skip_tasks: list[str] | None) -> dict[str, Any]:
        return {
            "limit": limit,
            "worker_id": self._worker_id,
            "lease_s": self._settings.lease_s,
            "now": None,
            "only_tasks": only_tasks,
            "skip_tasks": skip_tasks,
        }

    async def _claim_open(
        self,
        pool: AsyncConnectionPool,
        queues: list[str],
        limit: int,
        only_tasks: list[str] | None,
        skip_tasks: list[str] | None,
    ) -> list[ClaimedRun]:
        kind = "only" if only_tasks is not None else "skip" if skip_tasks is not None else ""
        params = {
            "queues": queues,
            **self._cursors.params(queues, kind),
            **self._claim_params(limit, only_tasks, skip_tasks),
        }
        async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn, self._claim_transaction(conn):
            cursor = await conn.execute(queries["run_claim"], params)
            runs = [ClaimedRun(*row) for row in await cursor.fetchall()]
        self._cursors.advance(queues, runs, kind)
        return runs

    async def _claim_limited(
        self,
        pool: AsyncConnectionPool,
        queue: str,
        limit: int,
        only_tasks: list[str] | None,
        skip_tasks: list[str] | None,
    ) -> list[ClaimedRun]:
        """Up to ``limit`` runs of ``queue``, within its max_running; sets ``_held`` when the
        limit (or another worker's turn) holds back due runs."""
        async with (
            pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn,
            self._claim_transaction(conn, always=True),
        ):
            cursor = await conn.execute(queries["queue_lock_for_claim"], {"queue": queue})
            locked = await cursor.fetchone()
            if locked is None:
                # Another worker is claiming for this queue now (or it was paused or its
                # limit cleared: the notification reloads the settings). Look again shortly.
                self._held = True
                return []
            params = {"queue": queue, "max_running": locked[0], **self._claim_params(limit, only_tasks, skip_tasks)}
            cursor = await conn.execute(queries["run_claim_limited"], params)
            rows = await cursor.fetchall()
        headroom, more_due = rows[0][0], rows[0][1]  # before this claim; due runs left behind
        runs = [ClaimedRun(*row[2:]) for row in rows if row[2] is not None]
        if more_due and len(runs) == headroom < limit:
            self._held = True  # at the limit now, with due runs waiting behind it
        return runs

    @asynccontextmanager
    async def _claim_transaction(self, conn: psycopg.AsyncConnection, *, always: bool = False) -> AsyncIterator[None]:
        """Direct: nothing unless ``always``, the claim commits on its own (its connection skips
        the flush from the start). Through a pooler: a transaction that skips the flush for
        itself, since a session setting would stay behind on a server connection other clients
        then use. A limited queue's claim is always a transaction: its row lock must be held
        until its claim commits."""
        if not self._settings.pgbouncer and not always:
            yield
            return
        async with conn.transaction():
            if self._settings.pgbouncer:
                await conn.execute(queries["run_claim_skip_flush"])
            yield

    async def _seconds_until_due(self, pool: AsyncConnectionPool) -> float:
        """How long the fetcher may sleep: until the next queued run is due, at most a poll interval."""
        poll_s = self._settings.poll_interval_s
        try:
            async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
                queues = [q for q in self._settings.queues if q not in self._paused]
                cursor = await conn.execute(queries["run_next_due"], {"queues": queues})
                row = await cursor.fetchone()
        except psycopg.OperationalError:
            return poll_s
        due_in = row[0] if row else None
        if due_in is None:
            return poll_s
        if due_in <= 0:
            # Due runs we did not claim: locked by another worker's claim right now (they are
            # taken: look again shortly rather than spinning on them), or sorting behind where
            # our claims start (a deferred run of a lower priority number came due): the next
            # claim walks from the start.
            self._cursors.rewind()
            return min(LOCKED_BY_OTHERS_PAUSE_S, poll_s)
        return min(float(due_in), poll_s)

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

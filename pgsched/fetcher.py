"""Fetch: the claim hop. Wakes on a notification (or its poll), claims up to the free slots
in one statement (``run_claim``), and hands each claimed run to the worker to start.

    listener ─► notify_enqueued / wake ─► claim (run_claim, LIMIT = free slots) ─► start(run)

When to claim: as soon as it is woken, if a slot is free. When the last claim filled every
free slot there is a backlog, and the fetcher waits for a batch of slots (half of them)
before claiming again. It also waits while the outcomes not yet written reach their bound, so
a slow database slows the claims instead of filling memory. The poll interval is a safety net:
notifications normally wake it, and when only deferred runs are queued it sleeps until the
earliest one is due.

Queue and task settings (:mod:`pgsched.queue_settings`): the fetcher keeps which of its queues
and which tasks are paused or limited (:class:`~pgsched.limited_claim.Limits`), reloaded on a
``pgsched_queues`` notification, after a reconnect and once per poll interval. The copy only
decides which claims to make: the claims themselves read the settings as they are in the
database, so a stale copy can delay runs, never break a queue's setting (a task's limit set a
moment ago applies once the notification is heard, within milliseconds). Paused queues and
tasks are not claimed from. Runs behind a limit (max_running, rate, key_max_running) are
claimed first, by :mod:`pgsched.limited_claim`, one transaction per limited queue or task that
locks its settings rows so every worker's claims for it take turns; the other runs take the
remaining slots (``run_claim``, which passes over paused and limited queues, and over paused
and limited tasks when there are any). A queue without settings pays one primary-key probe per
claim. A unit held back by a rate is not claimed again before its next token is due. Each
unit's claim in claim order starts at its own cursor (:mod:`pgsched.claim_cursor`), as the open
queues' does, so runs it may not take (a limited tenant's, queued ahead) are walked past only
on a full pass.

The hand-off (schema 0050): while a limited queue's max_running holds due runs back, the
completer asks :meth:`Fetcher.plan_handoff` for the queue's claim when it writes runs of it
that ended, and makes it in the completion's transaction; :meth:`Fetcher.handoff_claimed`
starts what it took. The slots it may take are kept from the fetcher's own claims meanwhile.

Process pool: runs of the process-pool tasks are claimed apart, no more than the idle children
could start (a run waiting here for a child is a run another worker could be executing); the
other tasks' runs take the remaining slots.

Waiting, said out loud (schema 0027): the insert trigger notifies a queue only while some worker
waits on it, so before it sleeps with free slots the fetcher advertises its queues (a lock on
the listener's session, :class:`Advertiser`), waits for the inserts already past the trigger's
look (``worker_await_enqueuers``), and claims once more; anything committed after that
notifies. A claim that fills every free slot (a backlog), or no free slot, withdraws: a busy
worker claims again after each batch anyway, and an enqueue nobody waits for sends no NOTIFY
(each one takes a database-wide lock at commit, which serialized concurrent enqueuers).

The fetcher owns no run once it is started: what it needs of the worker (free slots, free
children, whether writes are backed up, how to start a run) comes in as :class:`Capacity`,
so the arrows point one way — worker → fetcher → :mod:`pgsched.run_types`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
import psycopg.errors
from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg_pool import AsyncConnectionPool

from pgsched.claim_cursor import ClaimCursors
from pgsched.config import connection_kwargs
from pgsched.instants import READER_ADAPTERS
from pgsched.limited_claim import (
    Handoff,
    LimitedClaim,
    Limits,
    Unit,
    claim_limited,
    handoff_outcome,
    handoff_params,
    takes,
)
from pgsched.run_types import ClaimedRun
from pgsched.sql import queries, text_array

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
# The session's TimeZone is UTC: psycopg makes a claimed run_at with datetime.timezone.utc
# then, and with a ZoneInfo of the server's zone otherwise (initdb takes the system's: 'Etc/UTC' here,
# which psycopg does not take for UTC), converting every value through it: a claimed row loads in
# 2.5 -> 1.7 µs (0.71x, range 0.57-0.94: 10 interleaved rounds of 200 fetches of 100 rows).
# Nothing on this connection reads the session's zone: the claims compare and add instants, and
# the cursor's instants go back with their offset.
#
# Through a transaction-mode pooler none of these startup options can be sent (PgBouncer refuses
# them) and no statement stays prepared: each claim is then a transaction that skips the flush
# with SET LOCAL, and is planned anew (see Fetcher._claim_transaction).
CLAIM_CONNECTION: dict[str, Any] = {
    "autocommit": True,
    "options": "-c synchronous_commit=off -c plan_cache_mode=force_generic_plan -c TimeZone=UTC",
}
LOCKED_BY_OTHERS_PAUSE_S = 0.05
# While this worker's hand-offs take the slots its runs free (one filled in the last second),
# its own claims held back by max_running look again this often instead of every 50 ms: they
# found nothing 2 times in 3 and held the settings row meanwhile, which the hand-offs then
# had to wait for. A slot another worker frees still wakes it (the slot-freed notification).
HANDOFF_HELD_PAUSE_S = 0.25
HANDOFF_RECENT_S = 1.0
# How long the last look before sleeping waits for inserts in flight into our queues (an
# insert commits within a millisecond or so; one in a longer transaction makes the fetcher
# look again every LOCKED_BY_OTHERS_PAUSE_S until it has committed).
AWAIT_ENQUEUERS_TIMEOUT = "20ms"
# The fetcher's connection is its own: waiting for it means the database is unreachable, and
# the fetch loop (which notices a stop request between claims) retries with backoff anyway.
FETCHER_CONNECTION_WAIT_S = 1.0


class _ArgsLoader(Loader):
    """jsonb on the fetcher's connection, where it is the claimed runs' args: most runs have
    none, and ``{}`` is made here instead of parsed. psycopg's jsonb loader (json.loads of the
    bytes) cost 4 µs a run in a claim of 100, ~10% of the worker's CPU in a no-op drain."""

    def load(self, data: Buffer) -> Any:
        if data == b"{}":
            return {}
        return json.loads(bytes(data))


# The fetcher's connection reads as every pgsched connection does, and args as above.
CLAIM_ADAPTERS = AdaptersMap(READER_ADAPTERS)
CLAIM_ADAPTERS.register_loader("jsonb", _ArgsLoader)


def claim_pool(dsn: str, pgbouncer: bool) -> AsyncConnectionPool:
    """The fetcher's own connection (a pool of one, so a broken connection is replaced)."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=1,
        kwargs=connection_kwargs(pgbouncer, **CLAIM_CONNECTION, context=CLAIM_ADAPTERS),
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


class Advertiser(Protocol):
    """Where the fetcher says it waits for runs (the worker's :class:`~pgsched.listener.Listener`)."""

    @property
    def advertised(self) -> bool: ...

    async def advertise(self, queues: Sequence[str]) -> None: ...

    def withdraw(self) -> None: ...


@dataclass(frozen=True, slots=True)
class FetchSettings:
    """What the fetcher claims for: its worker's queues and options."""

    queues: Sequence[str]
    lease_s: float
    poll_interval_s: float
    concurrency: int
    pgbouncer: bool = False
    process_tasks: Sequence[str] = ()  # tasks that run in the process pool, claimed apart


def _array_literals(arrays: dict[str, list[Any]]) -> dict[str, str]:
    """The claim cursor's arrays as literals (see :func:`pgsched.sql.text_array`): psycopg's
    ListDumper took ~65 µs a claim for these five one-element arrays. The statement casts each
    to its type (a quoted element reads as any type: "0" as a smallint, an ISO instant as a
    timestamptz)."""
    return {name: text_array([None if v is None else _text(v) for v in values]) for name, values in arrays.items()}


def _text(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _cursor_kind(unit: Unit, only_tasks: list[str] | None) -> str | None:
    """The cursor of a limited claim (0040), apart from the open queues' and from each other
    unit's: each walks its own runs. None: a tenant's claim, which walks only its runs anyway."""
    if unit.tenant is not None:
        return None
    return f"limited {unit.task or ''} {unit.queue_limited} {only_tasks is not None}"


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
        self._limits = Limits()  # which queues and tasks are paused or limited, as last loaded
        self._settings_stale = True  # reload the queue settings before the next claim
        self._settings_loaded_at = 0.0  # loop time of the last load
        self._held = False  # the last claim left due runs behind max_running or a key's limit
        self._cursors = ClaimCursors()  # where each open queue's next claim starts in the claim index
        self._retry_at: float | None = None  # loop time to claim again for runs held back
        self._token_due: dict[Unit, float] = {}  # a unit held by a rate: not claimed before then
        # Units whose last claim found no due run: a round the retry timer starts (for another
        # unit held by a limit) passes them over; any other round (a notification, a run coming
        # due, the poll) tries them again. A limited task in a limited queue where it has no runs
        # then costs no claim per token of the queue's rate.
        self._empty: set[tuple[Unit, bool]] = set()  # (unit, for the process pool's tasks only)
        self._retry_round = False
        self._advertiser: Advertiser | None = None  # None: no LISTEN, the poll is the wake-up
        self._looked_after_advertising = False  # a claim ran after the inserts in flight ended
        self._handed_off = 0  # slots kept for the hand-off claims in flight (see plan_handoff)
        self._handoff_filled = False  # the last hand-off took every slot its limits left
        self._handoff_filled_at = -HANDOFF_RECENT_S  # loop time of the last hand-off that did

    # ---- wake-ups

    def wake(self) -> None:
        """Look for runs now (a reconnected listener, a stop request). Settings changed while
        the listener was away went unheard: reload them too."""
        self._settings_stale = True
        self._wake.set()

    def queue_settings_changed(self, queue: str) -> None:
        """A notification: ``queue``'s settings changed (paused, resumed, limit set or cleared),
        or a task's (payload ``task:NAME``: its runs may be in any of our queues), or a tenant's
        max_running (``tenant:NAME``, the same)."""
        if queue in self._queue_set or queue.startswith(("task:", "tenant:")):
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

    def outcomes_written(self) -> bool:
        """The completer wrote outcomes: room for more, and in the database the slots of a
        limited queue that its runs held (what a held claim waits for), unless the batch's
        hand-off claim took every one of them. Whether it did (then nobody needs waking)."""
        filled, self._handoff_filled = self._handoff_filled, False
        if self._waiting_for_capacity or (self._held and not filled):
            self._wake.set()
        return filled

    def handoff_unit(self, run: ClaimedRun) -> Unit | None:
        """The unit whose claim may take the slot ``run`` frees, in its completion's transaction:
        its queue's when only that queue's limits count it (a limited task's or tenant's run, or
        the process pool's, takes the usual way)."""
        limits = self._limits
        if run.tenant_limited or run.queue not in limits.limited_queues or run.task in limits.limited_tasks:
            return None
        return None if run.task in self._process_tasks else Unit((run.queue,), None, True)

    def plan_handoff(self, unit: Unit) -> Handoff | None:
        """The claim of ``unit`` to make with a completion that frees its slots: only while its
        limits hold due runs back (else the fetcher's own claims keep up, and a completion
        stays one plain UPDATE), for the free slots, which it keeps until handoff_claimed."""
        self._handoff_filled = False
        if self._stopping.is_set():  # a stopping worker starts nothing: its grace is for what runs
            return None
        free = self._capacity.free_slots() - self._handed_off
        due = self._token_due.get(unit)
        if not self._held or free < 1 or (due is not None and due > self._now()):
            return None
        if unit not in self._limits.units(self._settings.queues) or self._capacity.writes_backed_up():
            return None
        params = self._claim_params(free, None, None)
        kind = _cursor_kind(unit, None)
        if kind is not None:
            params.update(_array_literals(self._cursors.params(unit.queues, kind)))
        self._handed_off += free
        return Handoff(unit, free, handoff_params(unit, self._limits, params), kind)

    def handoff_claimed(self, handoff: Handoff, rows: list[tuple[Any, ...]] | None) -> set[int]:
        """The hand-off's rows (None: its statement failed): start what it claimed, note when to
        look again as after any claim of the unit; the ids the completion changed."""
        self._handed_off -= handoff.limit
        if rows is None:
            return set()
        completed, claim, filled = handoff_outcome(rows, handoff.limit)
        self._handoff_filled = filled
        if filled:
            self._handoff_filled_at = self._now()
        for run in self._settled(handoff.unit, claim, handoff.cursor_kind, None):
            self._capacity.start(run)
        return completed

    def limits_hold(self, run: ClaimedRun) -> bool:
        """Whether a limit counts ``run`` (its queue's, its task's as last loaded, or its
        tenant's): its end frees a slot other workers may be waiting for."""
        return run.tenant_limited or run.queue in self._limits.limited_queues or run.task in self._limits.limited_tasks

    @property
    def held(self) -> bool:
        """Whether the last claim left due runs behind max_running or a key's limit: then
        other workers likely wait for slots too (a limit that never binds sends no wake-ups)."""
        return self._held

    # ---- the loop: wake → claim → start

    async def run(self, pool: AsyncConnectionPool, worker_id: int, advertiser: Advertiser | None = None) -> None:
        """Claim runs for ``worker_id`` and start them until ``stopping`` is set. ``pool`` is
        :func:`claim_pool`'s; ``advertiser`` is where it says it waits (None: nowhere, it polls)."""
        self._worker_id = worker_id
        self._advertiser = advertiser
        capacity = self._capacity
        failures = 0
        while not self._stopping.is_set():
            free = capacity.free_slots() - self._handed_off
            if free < (self._min_batch if self._backlog else 1) or capacity.writes_backed_up():
                self._waiting_for_capacity = True
                self._withdraw()  # no room: a notification would wake nothing to do
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
                self._withdraw()  # busy: it claims again after this batch, no notification needed
                continue
            if not await self._advertised_and_looked(pool):
                continue  # claim once more: what committed before the advertisement
            if self._retry_at is not None:
                retry_in = max(0.0, self._retry_at - asyncio.get_running_loop().time())
                woken = await self._sleep_until_woken(min(retry_in, self._settings.poll_interval_s))
                self._retry_round = not woken and retry_in < self._settings.poll_interval_s
            elif self._process_tasks and capacity.free_children() == 0:
                # Due runs may be waiting for a child: a child freeing up wakes us (as a slot
                # does), new runs notify; the poll interval catches deferred runs coming due.
                self._waiting_for_capacity = True
                await self._sleep_until_woken(self._settings.poll_interval_s)
            else:
                await self._sleep_until_woken(await self._seconds_until_due(pool))

    # ---- saying it waits

    async def _advertised_and_looked(self, pool: AsyncConnectionPool) -> bool:
        """Whether it may sleep: it holds its queues' waiting lock and a claim ran after every
        insert that looked for waiters before it took the lock. False: claim once more first."""
        advertiser = self._advertiser
        if advertiser is None:
            return True
        if advertiser.advertised and self._looked_after_advertising:
            return True
        if not advertiser.advertised:
            self._looked_after_advertising = False
            try:
                await advertiser.advertise(self._settings.queues)
            except Exception as exc:  # noqa: BLE001 -- no session: the listener's reconnect wakes us
                logger.debug("could not advertise waiting (%s); sleeping until woken or the poll", exc)
                return True
        try:
            async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
                await conn.execute(
                    queries["worker_await_enqueuers"],
                    {"queues": self._settings.queues, "timeout": AWAIT_ENQUEUERS_TIMEOUT},
                )
        except psycopg.errors.LockNotAvailable:
            # An insert into one of our queues in a longer transaction: it sends no NOTIFY when
            # it commits, so look again shortly (new inserts do notify meanwhile).
            await self._sleep_until_woken(LOCKED_BY_OTHERS_PAUSE_S)
            return False
        except psycopg.OperationalError as exc:
            logger.warning("waiting for inserts in flight failed (%s)", exc)
            return True  # the claim meets the same error and backs off
        self._looked_after_advertising = True
        return False

    def _withdraw(self) -> None:
        self._looked_after_advertising = False
        if self._advertiser is not None and self._advertiser.advertised:
            self._advertiser.withdraw()

    # ---- queue settings

    async def _load_queue_settings_if_due(self, pool: AsyncConnectionPool) -> None:
        """Reload which of our queues are paused or limited: when told, and once per poll interval."""
        now = asyncio.get_running_loop().time()
        if not self._settings_stale and now - self._settings_loaded_at < self._settings.poll_interval_s:
            return
        async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
            cursor = await conn.execute(queries["queue_settings_of_worker"], {"queues": self._settings.queues})
            rows = await cursor.fetchall()
        self._limits = Limits.from_rows(rows)
        self._token_due.clear()  # a rate may have changed: ask the bucket again
        self._settings_stale = False
        self._settings_loaded_at = now

    # ---- claims

    async def _claim(self, pool: AsyncConnectionPool, limit: int) -> list[ClaimedRun]:
        """Up to ``limit`` due runs. With a process pool, runs of its tasks only as many as it
        has children not yet taken, then the other tasks' runs for the remaining slots."""
        self._held = False
        self._retry_at = None
        if not self._retry_round:
            self._empty.clear()
        self._retry_round = False
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
        """Runs behind limits first (each unit takes at most what its limits leave, so a
        backlog in an open queue cannot starve them), then the open queues for the remaining
        slots."""
        runs: list[ClaimedRun] = []
        for unit in self._limits.units(self._settings.queues):
            if len(runs) >= limit:
                break
            if not takes(unit, only_tasks, skip_tasks) or (unit, only_tasks is not None) in self._empty:
                continue
            token_due = self._token_due.get(unit)
            if token_due is not None and token_due > self._now():
                self._note_retry(token_due)  # no claim before the token: nothing could start
                continue
            runs += await self._claim_limited(pool, unit, limit - len(runs), only_tasks, skip_tasks)
        open_queues = self._limits.open_queues(self._settings.queues)
        if len(runs) < limit and open_queues:
            skipped = self._limits.skipped_tasks(skip_tasks)
            runs += await self._claim_open(pool, open_queues, limit - len(runs), only_tasks, skipped)
        return runs

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _note_retry(self, retry_at: float) -> None:
        self._retry_at = retry_at if self._retry_at is None else min(self._retry_at, retry_at)

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
            "queues": text_array(queues),
            **_array_literals(self._cursors.params(queues, kind)),
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
        unit: Unit,
        limit: int,
        only_tasks: list[str] | None,
        skip_tasks: list[str] | None,
    ) -> list[ClaimedRun]:
        """Up to ``limit`` runs of ``unit``, within its limits; notes when to look again if
        limits hold back due runs (a rate: not before the next token is due)."""
        params = self._claim_params(limit, only_tasks, skip_tasks)
        kind = _cursor_kind(unit, only_tasks)
        if kind is not None:
            params.update(_array_literals(self._cursors.params(unit.queues, kind)))
        async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
            claim = await claim_limited(conn, unit, self._limits, params, pgbouncer=self._settings.pgbouncer)
        return self._settled(unit, claim, kind, only_tasks)

    def _settled(
        self, unit: Unit, claim: LimitedClaim, kind: str | None, only_tasks: list[str] | None
    ) -> list[ClaimedRun]:
        """``claim``'s runs, its cursor advanced and when to look again noted."""
        if kind is not None and claim.looked:
            self._cursors.advance(unit.queues, claim.runs, kind)
        if unit.tenant is not None:
            for run in claim.runs:
                run.tenant_limited = True
        self._token_due.pop(unit, None)
        if not claim.runs and claim.retry_in is None:
            self._empty.add((unit, only_tasks is not None))
        if claim.retry_in is not None:
            retry_at = self._now() + claim.retry_in
            if claim.by_rate:
                self._token_due[unit] = retry_at
            else:
                self._held = True
                if self._now() - self._handoff_filled_at < HANDOFF_RECENT_S:
                    retry_at = self._now() + max(claim.retry_in, HANDOFF_HELD_PAUSE_S)
            self._note_retry(retry_at)
        return claim.runs

    @asynccontextmanager
    async def _claim_transaction(self, conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
        """Direct: nothing, the claim commits on its own (its connection skips the flush from
        the start). Through a pooler: a transaction that skips the flush for itself, since a
        session setting would stay behind on a server connection other clients then use. (A
        limited claim makes its own transaction: :func:`pgsched.limited_claim.claim_limited`.)"""
        if not self._settings.pgbouncer:
            yield
            return
        async with conn.transaction():
            await conn.execute(queries["run_claim_skip_flush"])
            yield

    async def _seconds_until_due(self, pool: AsyncConnectionPool) -> float:
        """How long the fetcher may sleep: until the next queued run is due, at most a poll interval."""
        poll_s = self._settings.poll_interval_s
        try:
            async with pool.connection(timeout=FETCHER_CONNECTION_WAIT_S) as conn:
                queues = [q for q in self._settings.queues if q not in self._limits.paused_queues]
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

    async def _sleep_until_woken(self, timeout: float | None) -> bool:
        """Whether woken (False: the timeout passed)."""
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

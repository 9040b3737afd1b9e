"""Complete: the last hop. Buffers outcomes and writes each batch in one fenced UPDATE.

While one batch is being written, new outcomes pile up and go out together in the next one,
so the batch size follows the load with no fixed delay. The worker stops claiming while too
many outcomes wait here, so memory stays bounded; on shutdown it drains what is left.

A batch that ends runs of a limited queue whose limit holds runs back goes out with that
queue's next claim in the same transaction (:class:`HandoffSource`, schema 0050): one round
trip and one flush hand the freed slots to the next runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, LiteralString, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched.limited_claim import Handoff
from pgsched.run_types import Outcome
from pgsched.sql import number_array, queries, text_array

logger = logging.getLogger("pgsched.worker")

MAX_BATCH = 1000
RETRY_DELAYS_S = (0.1, 0.5, 1.0, 2.0, 5.0)

# Called after each batch with the batch and the ids the fenced UPDATE actually changed.
OnWritten = Callable[[list[Outcome], set[int]], None]


class HandoffSource(Protocol):
    """Who plans a batch's hand-off claim and takes its runs (the worker, for its fetcher)."""

    def plan_handoff(self, batch: list[Outcome]) -> Handoff | None: ...

    def handoff_claimed(self, handoff: Handoff, rows: list[tuple[Any, ...]] | None) -> set[int]: ...


class Completer:
    def __init__(
        self, pool: AsyncConnectionPool, worker_id: int, on_written: OnWritten, handoff: HandoffSource | None = None
    ) -> None:
        self._pool = pool
        self._worker_id = worker_id
        self._on_written = on_written
        self._handoff = handoff
        self._pending: list[Outcome] = []
        self._writing: list[Outcome] = []  # the batch being written
        self._has_pending = asyncio.Event()
        self._unwritten = 0
        self._all_written = asyncio.Event()
        self._all_written.set()

    @property
    def unwritten(self) -> int:
        """Outcomes added and not yet committed (the fetcher stops claiming past a limit)."""
        return self._unwritten

    def unwritten_ids(self) -> list[int]:
        """The runs whose outcome is not yet committed: still 'running' in the table, and
        their leases must hold until it is (the heartbeat extends them)."""
        return [o.run_id for o in self._writing] + [o.run_id for o in self._pending]

    def add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        self._unwritten += 1
        # Each Event call is a Python method: only the first outcome of a batch needs them.
        if self._unwritten == 1:
            self._all_written.clear()
        if len(self._pending) == 1:
            self._has_pending.set()

    async def drain(self) -> None:
        """Wait until every outcome added so far is written (``run`` must be running)."""
        await self._all_written.wait()

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            await self._has_pending.wait()
            batch = self._writing = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            if not self._pending:
                self._has_pending.clear()
            try:
                written = await self._write_until_taken(batch)
            finally:
                self._writing = []
            self._unwritten -= len(batch)
            if self._unwritten == 0:
                self._all_written.set()
            self._on_written(batch, written)

    async def _write_until_taken(self, batch: list[Outcome]) -> set[int]:
        """A finished task's outcome is never dropped because the database blipped: keep it
        and retry until the database takes it."""
        failures = 0
        while True:
            try:
                return await self._write(batch)
            except (psycopg.OperationalError, psycopg.errors.CheckViolation) as exc:
                if isinstance(exc, psycopg.errors.CheckViolation) and not _partition_moved(exc):
                    raise
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                logger.warning("writing %d outcomes failed (%s); retrying in %.1fs", len(batch), exc, delay)
                await asyncio.sleep(delay)

    async def _write(self, batch: list[Outcome]) -> set[int]:
        handoff = self._handoff.plan_handoff(batch) if self._handoff is not None else None
        if handoff is not None:
            return await self._write_and_claim(batch, handoff)
        async with self._pool.connection() as conn:
            cursor = await conn.execute(*_statement(self._worker_id, batch))
            return {row[0] for row in await cursor.fetchall()}

    async def _write_and_claim(self, batch: list[Outcome], handoff: Handoff) -> set[int]:
        """``batch`` written with ``handoff``'s claim, in one statement (the source starts the
        runs it took, and gets its slots back whatever happens)."""
        assert self._handoff is not None
        rows: list[tuple[Any, ...]] | None = None
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(
                    queries["run_complete_and_claim_limited"], {**_arrays(self._worker_id, batch), **handoff.params}
                )
                rows = await cursor.fetchall()
        finally:
            completed = self._handoff.handoff_claimed(handoff, rows)
        return completed


def _partition_moved(error: psycopg.errors.CheckViolation) -> bool:
    """A run the move routed to runs_history's DEFAULT partition while the leader attached its
    day there ("new row for relation ... violates partition constraint"): the statement rolled
    back whole, and the same batch goes to the new day's partition on the next try. Any other
    check is the outcome's own, and would fail again."""
    return "violates partition constraint" in (error.diag.message_primary or "")


def _statement(worker_id: int, batch: list[Outcome]) -> tuple[LiteralString, dict[str, Any]]:
    """The fenced UPDATE for ``batch``: the lean one when every outcome succeeded (3 arrays
    to build and unnest instead of 6), else the general one."""
    if all(o.status == "succeeded" for o in batch):
        params = {
            "worker_id": worker_id,
            "ids": number_array([o.run_id for o in batch]),
            "attempts": number_array([o.attempt for o in batch]),
            "results": text_array([o.result for o in batch]),
        }
        return queries["run_complete_succeeded"], params
    return queries["run_complete_many"], _arrays(worker_id, batch)


def _arrays(worker_id: int, batch: list[Outcome]) -> dict[str, Any]:
    """run_complete_many's parameters for ``batch``."""
    return {
        "worker_id": worker_id,
        "ids": number_array([o.run_id for o in batch]),
        "attempts": number_array([o.attempt for o in batch]),
        "statuses": text_array([o.status for o in batch]),
        "results": text_array([o.result for o in batch]),
        "errors": text_array([o.error for o in batch]),
        "retry_delays_s": number_array([float(o.retry_delay_s) for o in batch]),
    }

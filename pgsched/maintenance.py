"""Maintenance: idempotent, batched steps that keep the tables healthy. The beat's leader
runs them all; workers also run the lease rescue, so at-least-once never depends on a beat
being deployed (one sweeper at a time either way, under an advisory lock). The dashboard's
per-minute rollup is written here too, off the workers' hot path, and the workflow repair that
releases or cancels what a lost trigger (or a plain UPDATE) left waiting."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg_pool import AsyncConnectionPool

from pgsched.sql import queries

logger = logging.getLogger("pgsched.maintenance")

# Advisory-lock key for the lease sweep (an arbitrary constant only pgsched uses).
SWEEP_LOCK_KEY = 0x70677363_73776570 & 0x7FFF_FFFF_FFFF_FFFF
RESCUE_BATCH = 1000
PRUNE_BATCH = 5000
WORKFLOW_PRUNE_BATCH = 100  # workflows (of up to 100,000 steps each: their edges go too)
EXPIRE_BATCH = 1000
# Minutes the rollup recounts each round: the current one and a margin for runs that finished
# while the leader was between rounds (or changing hands).
ROLLUP_MINUTES = 3
# Workflow repair: only runs waiting this long are looked at (a healthy release takes
# milliseconds), at most this many per round.
REPAIR_MIN_AGE_S = 60.0
REPAIR_BATCH = 1000
# runs_history (schema 0029): day partitions exist this many days ahead of today (UTC), so a
# leader that is down for up to that long leaves no run in the DEFAULT partition.
HISTORY_DAYS_AHEAD = 3
# A partition change waits at most this long for its lock, then waits for the next round (every
# few seconds): DROP takes ACCESS EXCLUSIVE on runs_history, and while it waits in the lock
# queue every reader and every move queues behind it. 200 ms bounds that stall.
HISTORY_LOCK_TIMEOUT = "200ms"
DAY_S = 86400.0
# The move of runs that ended before schema 0030 (an existing installation's history): this
# many a statement, each its own transaction (row locks only, held for the statement: ~0.2 s
# each, 10^6 runs in 42 s with a worker draining), and at most this many statements a round, so
# that a long history delays the leader's other duties (firing jobs) by a few seconds a round.
MOVE_BATCH = 5000
MOVE_BATCHES_PER_ROUND = 20


async def rescue_expired(
    pool: AsyncConnectionPool, *, stale_worker_s: float, restart_grace_s: float = 30.0, now: datetime | None = None
) -> tuple[int, int]:
    """Requeue (or fail) runs whose lease expired, forget workers not seen for a while, and
    cancel the queued runs whose ``expires_at`` passed (:func:`cancel_expired`).

    One sweeper at a time: the others find the advisory lock taken and skip. Returns
    (requeued, failed); (0, 0) when another sweeper holds the lock.
    """
    requeued = failed = 0
    async with pool.connection() as conn:
        async with conn.transaction():
            cursor = await conn.execute(queries["run_rescue_try_lock"], {"key": SWEEP_LOCK_KEY})
            if not (await cursor.fetchone())[0]:  # type: ignore[index]
                return 0, 0
            while True:
                cursor = await conn.execute(
                    queries["run_rescue_expired"],
                    {"now": now, "limit": RESCUE_BATCH, "restart_grace_s": restart_grace_s},
                )
                batch_requeued, batch_failed, _ = await cursor.fetchone()  # type: ignore[misc]
                requeued += batch_requeued
                failed += batch_failed
                if batch_requeued + batch_failed < RESCUE_BATCH:
                    break
            await conn.execute(queries["worker_remove_stale"], {"now": now, "stale_s": stale_worker_s})
            await cancel_expired(conn, now=now)
    if requeued or failed:
        logger.warning(
            "lease sweep: %d runs back to the queue, %d failed (their worker stopped heartbeating)", requeued, failed
        )
    return requeued, failed


async def cancel_expired(conn: psycopg.AsyncConnection, *, now: datetime | None = None) -> int:
    """End the queued runs whose ``expires_at`` passed as 'cancelled' (reason: expired), a batch
    per statement. The claim already passes them over; this gives them their final status."""
    cancelled = 0
    while True:
        cursor = await conn.execute(queries["run_cancel_expired"], {"now": now, "limit": EXPIRE_BATCH})
        cancelled += cursor.rowcount
        if cursor.rowcount < EXPIRE_BATCH:
            break
    if cancelled:
        logger.info("%d runs expired before a worker started them: cancelled", cancelled)
    return cancelled


async def prune_finished(conn: psycopg.AsyncConnection, *, retention_s: float, now: datetime | None = None) -> int:
    """Delete finished runs older than the retention, a batch per statement (short locks);
    first the workflows that ended before it, with their steps' edges (:func:`prune_workflows`).
    In runs_history only the DEFAULT partition is pruned row by row, with a retention of a day
    or more: :func:`maintain_history` drops its day partitions whole."""
    await prune_workflows(conn, retention_s=retention_s, now=now)
    pruned = 0
    statements = ["run_prune_finished", "history_prune_default" if retention_s >= DAY_S else "history_prune_rows"]
    for statement in statements:
        while True:
            cursor = await conn.execute(
                queries[statement], {"now": now, "retention_s": retention_s, "limit": PRUNE_BATCH}
            )
            batch = int((await cursor.fetchone())[0])  # type: ignore[index]
            pruned += batch
            if batch < PRUNE_BATCH:
                break
    if pruned:
        logger.info("pruned %d finished runs older than %.0fs", pruned, retention_s)
    return pruned


async def prune_workflows(conn: psycopg.AsyncConnection, *, retention_s: float, now: datetime | None = None) -> int:
    """Forget workflows that ended before the retention and their steps' edges, a batch per statement."""
    pruned = 0
    while True:
        cursor = await conn.execute(
            queries["workflow_prune"], {"now": now, "retention_s": retention_s, "limit": WORKFLOW_PRUNE_BATCH}
        )
        batch = int((await cursor.fetchone())[0])  # type: ignore[index]
        pruned += batch
        if batch < WORKFLOW_PRUNE_BATCH:
            return pruned


async def refresh_rollup(
    conn: psycopg.AsyncConnection, *, minutes: int = ROLLUP_MINUTES, now: datetime | None = None
) -> None:
    """Recount the dashboard's per-minute rollup (``pgsched.run_rollup``) for the last
    ``minutes`` minutes from the runs that finished in them, and forget rollup rows, sessions
    and sign-in links past their time."""
    await conn.execute(queries["rollup_refresh"], {"minutes": minutes, "now": now})
    await conn.execute(queries["rollup_prune"], {"now": now})
    await conn.execute(queries["ui_session_prune"], {"now": now})


async def repair_workflows(
    conn: psycopg.AsyncConnection, *, min_age_s: float = REPAIR_MIN_AGE_S, limit: int = REPAIR_BATCH
) -> int:
    """Recompute, from their edges, the workflow steps left waiting longer than ``min_age_s``
    whose parents have all ended (or one ended against its condition), wherever they are (runs
    or runs_history), and settle workflows whose steps have all ended (schema 0058's
    pgsched.workflow_repair_v2). On a healthy system it finds nothing: the statement that ends a
    parent releases or cancels its dependents."""
    cursor = await conn.execute(queries["workflow_repair"], {"min_age_s": min_age_s, "limit": limit})
    repaired = int((await cursor.fetchone())[0])  # type: ignore[index]
    if repaired:
        logger.warning("workflow repair: %d waiting runs or workflows recomputed from their edges", repaired)
    return repaired


@dataclass(frozen=True, slots=True)
class HistoryRound:
    """What one round of :func:`maintain_history` did: partitions created and dropped, and the
    changes it gave up on a lock timeout (retried on the next round)."""

    created: list[str]
    dropped: list[str]
    timed_out: list[str]


async def maintain_history(
    conn: psycopg.AsyncConnection,
    *,
    retention_s: float,
    now: datetime | None = None,
    days_ahead: int = HISTORY_DAYS_AHEAD,
    lock_timeout: str = HISTORY_LOCK_TIMEOUT,
) -> HistoryRound:
    """Create runs_history's day partitions from today (UTC) to ``days_ahead`` days ahead, and
    drop those whose whole day ended more than ``retention_s`` ago: retention by partition, in
    whole days (a run is kept up to a day past the retention). Each change is a transaction of
    its own under ``lock_timeout``: one that cannot get its lock is left for the next round.
    ``conn`` is an autocommit connection."""
    at = now or datetime.now(UTC)
    today = at.astimezone(UTC).date()
    created: list[str] = []
    dropped: list[str] = []
    timed_out: list[str] = []
    for offset in range(days_ahead + 1):
        day = today + timedelta(days=offset)
        name = f"runs_history_{day:%Y%m%d}"
        made = await _history_change(conn, "history_partition_create", {"day": day}, lock_timeout)
        if made is None:
            timed_out.append(name)
        elif made:
            created.append(name)
    before = at - timedelta(seconds=retention_s)
    cursor = await conn.execute(queries["history_partition_list"])
    for name, _day, ends_at in await cursor.fetchall():
        if ends_at > before:
            break  # oldest first: the rest are younger
        gone = await _history_change(conn, "history_partition_drop", {"name": name, "before": before}, lock_timeout)
        if gone is None:
            timed_out.append(name)
        elif gone:
            dropped.append(name)
    if created or dropped:
        logger.info("runs_history: partitions created %s, dropped %s", created or "none", dropped or "none")
    if timed_out:
        logger.warning(
            "runs_history: %s waited more than %s for a lock (readers or moves held it): next round",
            ", ".join(timed_out),
            lock_timeout,
        )
    return HistoryRound(created, dropped, timed_out)


async def _history_change(
    conn: psycopg.AsyncConnection, statement: str, params: dict[str, object], lock_timeout: str
) -> bool | None:
    """One partition change in its own transaction; None when it timed out on a lock."""
    try:
        async with conn.transaction():
            await conn.execute(queries["history_lock_timeout"], {"timeout": lock_timeout})
            cursor = await conn.execute(queries[statement], params)
            return bool((await cursor.fetchone())[0])  # type: ignore[index]
    except psycopg.errors.LockNotAvailable:
        return None


async def history_mover_version(conn: psycopg.AsyncConnection) -> int:
    """Which finished runs move to runs_history in this database (``history_mover_ready``): 0
    none (before schema 0030's post-deploy file), 1 those without a unique_key, 2 those with one
    too (0049, post-deploy). The leader reads it once a maintenance round, for both moves."""
    cursor = await conn.execute(queries["history_mover_ready"])
    return int((await cursor.fetchone())[0])  # type: ignore[index]


@dataclass(slots=True)
class HistoryMover:
    """The leader's move of the runs that ended before runs started moving on their own (schema
    0030, post-deploy): one pass over runs in id order, :data:`MOVE_BATCH` runs a statement,
    resumed from where the last round stopped. Before that file, it moves nothing: the previous
    release, maybe still running, reads finished runs in runs. Once 0049 (post-deploy) moves
    runs with a unique_key too, one more pass moves those that ended before it."""

    after_id: int = 0
    done: bool = False
    version: int = 0  # which runs the pass moves: history_mover_ready's answer when it started

    async def round(
        self,
        conn: psycopg.AsyncConnection,
        *,
        version: int | None = None,
        batch: int = MOVE_BATCH,
        batches: int = MOVE_BATCHES_PER_ROUND,
    ) -> int:
        """Move up to ``batches`` batches of ``batch`` runs; return how many moved. ``conn`` is
        an autocommit connection: each batch commits on its own. ``version``: the round's
        :func:`history_mover_version` (read here when not given)."""
        if version is None:
            version = await history_mover_version(conn)
        if version > self.version:  # a post-deploy file moves more runs: a new pass from the start
            self.version, self.after_id, self.done = version, 0, False
        if self.done or not self.version:
            return 0
        statement = queries["history_move_finished_v2" if self.version >= 2 else "history_move_finished"]
        moved = 0
        for _ in range(batches):
            cursor = await conn.execute(statement, {"after_id": self.after_id, "batch": batch})
            count, reached = await cursor.fetchone()  # type: ignore[misc]
            moved += count
            if reached is None or count < batch:
                self.done = True
                break
            self.after_id = reached
        if moved:
            logger.info(
                "runs_history: moved %d runs that had ended before schema 0030%s",
                moved,
                "" if self.done else f" (next round from id {self.after_id})",
            )
        return moved


async def move_workflow_steps(
    conn: psycopg.AsyncConnection,
    *,
    version: int | None = None,
    batch: int = MOVE_BATCH,
    batches: int = MOVE_BATCHES_PER_ROUND,
) -> int:
    """Move the steps of workflows that succeeded to runs_history (schema 0047), up to
    ``batches`` batches of ``batch``; return how many moved. Like :class:`HistoryMover`, nothing
    moves before schema 0030's post-deploy file: the previous release reads steps in runs. Steps
    with a unique_key move from schema 0049 (post-deploy) on. ``version``: the round's
    :func:`history_mover_version` (read here when not given)."""
    if version is None:
        version = await history_mover_version(conn)
    if not version:
        return 0
    statement = queries["history_move_workflow_steps_v2" if version >= 2 else "history_move_workflow_steps"]
    moved = 0
    for _ in range(batches):
        cursor = await conn.execute(statement, {"batch": batch})
        count = (await cursor.fetchone())[0]  # type: ignore[index]
        moved += count
        if count < batch:
            break
    if moved:
        logger.info("runs_history: moved %d steps of workflows that succeeded", moved)
    return moved

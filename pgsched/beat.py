"""The beat: fires scheduled jobs (``pgsched.jobs``) as runs, under one elected leader.

Leadership
----------
Every beat process holds a dedicated connection and asks ``pg_try_advisory_lock`` (a
session lock keyed on "pgsched.beat") every ``lock_interval_s``. The holder leads::

    follower --lock taken--> leader --any error on the lock connection--> follower
       ^                        |
       +---- lock busy ---------+ (stop: unlock, resign, exit)

The lock lives and dies with the leader's connection: if the leader process dies or its
connection breaks, PostgreSQL releases the lock and the next follower to ask takes over
within ``lock_interval_s``. The leader runs a statement on its lock connection every round;
any error there means it may no longer hold the lock, so it steps down at once rather than
act on stale leadership.

Leadership is an efficiency, not the guarantee: each (job, scheduled_for) run is unique in
the runs table and a firing applies only if the job's ``next_run_at`` is still what the leader
read (compare-and-set in the firing statement), so even two beats that briefly both think they
lead fire every fire time once.

Firing
------
The leader sleeps until the nearest ``next_run_at`` (or a NOTIFY on ``pgsched_jobs`` when a
definition changes, or ``max_sleep_s``), reads the due jobs, then, in one statement (one
transaction) per due job, inserts its runs and advances ``next_run_at`` (a one-off that has
fired is then disabled by a second, guarded statement). Fire times no older than
``misfire_grace_s`` are on time and always fire, one run each (a failover of a second or two
loses nothing). Older ones were missed — the beat was down or the job paused — and the job's misfire policy decides:
``coalesce`` (one run, for the newest missed time), ``skip`` (none) or ``all`` (each, the
newest ``max_catchup`` of them). A row inserted by SQL without ``next_run_at`` gets one; a
row whose schedule is invalid is disabled with the reason in ``last_error``.

Maintenance (leader only, every ``maintenance_interval_s``): rescue runs whose lease
expired, prune finished runs older than ``retention_s``, forget workers not seen for a while,
recount the dashboard's per-minute rollup of the last few minutes.

Behind PgBouncer (transaction mode): the lock connection and the LISTEN need a session of
their own, so they use the direct DSN; firings and maintenance go through the pooler. With
no direct DSN the beat refuses to start (:func:`check_leader_lock_possible`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgsched.config import DIRECT_DSN_ENV, connection_kwargs, session_dsn
from pgsched.errors import ConfigError, InvalidInput
from pgsched.jobs import schedule_of
from pgsched.listener import Listener
from pgsched.maintenance import (
    HistoryMover,
    history_mover_version,
    maintain_history,
    move_workflow_steps,
    prune_finished,
    refresh_rollup,
    repair_workflows,
    rescue_expired,
)
from pgsched.quotas import fold_usage, quota_error
from pgsched.schedule import Schedule
from pgsched.sql import queries

logger = logging.getLogger("pgsched.beat")

DUE_BATCH = 500
FIRING_CONNECTIONS = 4
# The leader's firings (and its maintenance) commit without waiting for the WAL flush: a firing
# lost in a PostgreSQL crash left next_run_at where it was, so the next round fires the same
# fire times again, and the unique (job_id, scheduled_for) index keeps it to one run each.
# Saves a disk flush per due job, the largest part of a round with many jobs due at once.
# Through a transaction-mode pooler that option cannot be sent, and firings commit durably.
FIRING_CONNECTION: dict[str, Any] = {"autocommit": True, "options": "-c synchronous_commit=off"}
ON_TIME_LIMIT = 10_000  # on-time fire times per job per round: bounded by the grace window anyway


@dataclass
class BeatOptions:
    lock_interval_s: float = 0.5
    misfire_grace_s: float = 5.0
    max_sleep_s: float = 5.0
    maintenance_interval_s: float = 5.0
    retention_s: float = 7 * 24 * 3600.0
    stale_worker_s: float = 120.0
    restart_grace_s: float = 30.0  # no lease rescue this soon after PostgreSQL starts (the default lease)

    def __post_init__(self) -> None:
        for name in ("lock_interval_s", "max_sleep_s", "maintenance_interval_s", "retention_s", "stale_worker_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.misfire_grace_s < 0:
            raise ValueError("misfire_grace_s must be >= 0")


def check_leader_lock_possible(direct_dsn: str | None, pgbouncer: bool) -> None:
    """Refuse to run a beat through a transaction-mode pooler without a direct DSN: the pooler
    runs each statement on any server connection, so the session lock would be taken on one
    and released on another (it leaks, and nobody else can lead), and the LISTEN hears nothing."""
    if pgbouncer and not direct_dsn:
        raise ConfigError(
            f"the beat cannot lead through PgBouncer: set {DIRECT_DSN_ENV} (or --direct-dsn) to a DSN "
            "that reaches PostgreSQL directly, for its leader lock"
        )


def leader_status(conn: psycopg.Connection[Any]) -> dict[str, Any] | None:
    """The beat leader's record (host, pid, since, leading_for, last_seen_at), or None when no
    beat holds the leader lock (a beat that died without resigning leaves its row, not its
    lock). One home for the question, so ``pgsched beat status`` and any other caller agree."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["leader_status"]).fetchone()


def run_beat(dsn: str, options: BeatOptions, *, direct_dsn: str | None = None, pgbouncer: bool = False) -> None:
    """Run a beat in this process until SIGTERM/SIGINT."""

    async def main() -> None:
        beat = Beat(dsn, options, direct_dsn=direct_dsn, pgbouncer=pgbouncer)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, beat.request_stop)
        await beat.run()

    asyncio.run(main())


class Beat:
    """``dsn`` carries the firings and maintenance; the leader lock and the LISTEN need a session
    of their own: ``direct_dsn`` when ``pgbouncer`` says ``dsn`` goes through a pooler."""

    def __init__(
        self, dsn: str, options: BeatOptions | None = None, *, direct_dsn: str | None = None, pgbouncer: bool = False
    ) -> None:
        check_leader_lock_possible(direct_dsn, pgbouncer)
        self.dsn = dsn
        self._pgbouncer = pgbouncer
        self._session_dsn = session_dsn(dsn, direct_dsn, pgbouncer) or dsn
        self.options = options or BeatOptions()
        self.leading = False
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._mover = HistoryMover()  # the move of runs that ended before schema 0030
        self._identity = {"host": socket.gethostname(), "pid": os.getpid()}

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        """Follow, lead when the lock is free, until :meth:`request_stop`."""
        async with AsyncConnectionPool(
            self.dsn,
            min_size=1,
            max_size=FIRING_CONNECTIONS,
            kwargs=connection_kwargs(self._pgbouncer, **FIRING_CONNECTION),
            name="pgsched-beat",
            open=False,
        ) as pool:
            await pool.open(wait=True)
            listener = Listener(self._session_dsn, queries["beat_listen"], self._on_jobs_changed, self._wake.set)
            listening = asyncio.create_task(listener.run())
            try:
                while not self._stop.is_set():
                    await self._try_to_lead(pool)
                    # A follower waits for its next try or a stop, not on _wake: the listener
                    # sets _wake (on connect, on every job change) and only _lead clears it, so
                    # waiting on it here made followers reconnect for the lock in a busy loop.
                    try:
                        async with asyncio.timeout(self.options.lock_interval_s):
                            await self._stop.wait()
                    except TimeoutError:
                        pass
            finally:
                listening.cancel()
                await asyncio.gather(listening, return_exceptions=True)

    def _on_jobs_changed(self, channel: str, payload: str) -> None:
        self._wake.set()

    async def _try_to_lead(self, pool: AsyncConnectionPool) -> None:
        try:
            # Asynchronous commit too: the per-round heartbeat is a write, and a lost one is harmless.
            lock_conn = await psycopg.AsyncConnection.connect(self._session_dsn, **FIRING_CONNECTION)
        except psycopg.OperationalError as exc:
            logger.warning("beat cannot connect (%s); retrying", exc)
            return
        async with lock_conn:
            try:
                if not (await (await lock_conn.execute(queries["leader_try_lock"])).fetchone())[0]:  # type: ignore[index]
                    return
                await lock_conn.execute(queries["leader_record"], self._identity)
                self.leading = True
                logger.info("beat %s:%s leads", self._identity["host"], self._identity["pid"])
                await self._lead(lock_conn, pool)
                await lock_conn.execute(queries["leader_resign"], self._identity)
                await lock_conn.execute(queries["leader_unlock"])
                logger.info("beat resigned leadership (stopping)")
            except psycopg.Error as exc:
                if self.leading:
                    logger.warning("beat steps down after a database error (%s)", exc)
            except Exception:
                # Not the lock's fault, but the lead loop is gone: step down (closing the lock
                # connection frees the lock for another beat) and try again on the next turn.
                logger.exception("beat steps down after an unexpected error")
            finally:
                self.leading = False

    async def _lead(self, lock_conn: psycopg.AsyncConnection, pool: AsyncConnectionPool) -> None:
        next_maintenance = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            # Proof of leadership for this round: raises (→ step down) if the connection is gone.
            await lock_conn.execute(queries["leader_heartbeat"], self._identity)
            self._wake.clear()
            # A round's errors are not the lock's: the leader keeps leading and tries again. Only
            # the lock connection's errors (above, and in _try_to_lead) make it step down.
            try:
                await fire_due_jobs_concurrently(pool, misfire_grace_s=self.options.misfire_grace_s)
                if loop.time() >= next_maintenance:
                    next_maintenance = loop.time() + self.options.maintenance_interval_s
                    await self._maintain(pool)
                async with pool.connection() as conn:
                    due_in = (await (await conn.execute(queries["job_next_due_in"])).fetchone())[0]  # type: ignore[index]
            except (psycopg.Error, PoolTimeout) as exc:
                logger.warning("beat round failed (%s); retrying", exc)
                due_in = self.options.lock_interval_s
            except Exception:
                logger.exception("beat round failed on an unexpected error; retrying")
                due_in = self.options.lock_interval_s
            await self._sleep(
                self.options.max_sleep_s if due_in is None else min(max(due_in, 0.0), self.options.max_sleep_s)
            )

    async def _maintain(self, pool: AsyncConnectionPool) -> None:
        await rescue_expired(
            pool, stale_worker_s=self.options.stale_worker_s, restart_grace_s=self.options.restart_grace_s
        )
        async with pool.connection() as conn:
            await maintain_history(conn, retention_s=self.options.retention_s)
            # Read once for both moves: they act on one answer, in one round trip (each read it).
            version = await history_mover_version(conn)
            await self._mover.round(conn, version=version)
            await move_workflow_steps(conn, version=version)
            await prune_finished(conn, retention_s=self.options.retention_s)
            await refresh_rollup(conn)
            await repair_workflows(conn)
            # Last, so a fold that fails never holds up the prune; it reads runs finished since
            # its last round, which a retention of minutes or more leaves in place.
            await fold_usage(conn)

    async def _sleep(self, seconds: float) -> None:
        if self._stop.is_set():  # a stop during a round had its wake-up cleared by _lead
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass


@dataclass(frozen=True, slots=True)
class Firing:
    """What firing one due job writes, planned from the row ``job_due`` read."""

    job: dict[str, Any]
    times: list[datetime]  # fire times to create runs for
    next_run_at: datetime | None  # None: a one-off that is done
    error: str | None = None  # the job's schedule is invalid: disable it with this reason


async def fire_due_jobs(conn: psycopg.AsyncConnection, *, misfire_grace_s: float, now: datetime | None = None) -> int:
    """Fire every due job, one transaction each; returns the number of runs created."""
    created = 0
    for firing in plan_firings(await _due_jobs(conn, now), misfire_grace_s):
        created += await write_firing(conn, firing)
    return created


async def fire_due_jobs_concurrently(pool: AsyncConnectionPool, *, misfire_grace_s: float) -> int:
    """:func:`fire_due_jobs` over several connections at once: each firing is one statement
    (one round trip), and those of different jobs overlap."""
    async with pool.connection() as conn:
        firings = plan_firings(await _due_jobs(conn, None), misfire_grace_s)

    async def fire_share(share: list[Firing]) -> int:
        created = 0
        async with pool.connection() as conn:
            for firing in share:
                created += await write_firing(conn, firing)
        return created

    shares = [firings[i::FIRING_CONNECTIONS] for i in range(FIRING_CONNECTIONS)]
    return sum(await asyncio.gather(*(fire_share(share) for share in shares if share)))


async def _due_jobs(conn: psycopg.AsyncConnection, now: datetime | None) -> list[dict[str, Any]]:
    """The due jobs, after disabling those whose instants cannot be read (see job_disable_unreadable).
    Disabled in SQL, not read through READER_ADAPTERS' nearest datetime: the beat must not fire
    on an instant it made up, and ``conn`` may be any connection."""
    async with conn.cursor(row_factory=dict_row) as cur:
        for job in await (await cur.execute(queries["job_disable_unreadable"], {"now": now})).fetchall():
            logger.warning("job %r disabled: %s", job["name"], job["last_error"])
        return await (await cur.execute(queries["job_due"], {"now": now, "limit": DUE_BATCH})).fetchall()


def plan_firings(jobs: list[dict[str, Any]], misfire_grace_s: float) -> list[Firing]:
    """The firing of each due job. On-time jobs on the same schedule and due at the same
    instant share one computation (a hundred every-minute jobs is a common sight, and cron
    arithmetic is most of a round's CPU); a late job is planned (and logged) on its own."""
    planned: dict[tuple[Any, ...], tuple[list[datetime], datetime | None]] = {}
    firings = []
    for job in jobs:
        # Whatever one job's row does to the planning (a bad schedule, a next instant past what
        # a datetime holds) belongs to that job: it is disabled, the others fire.
        try:
            schedule = schedule_of(job)
            if not _on_time(job, misfire_grace_s):
                firings.append(Firing(job, *_plan(schedule, job, misfire_grace_s)))
                continue
            key = (schedule, job["next_run_at"], job["now"])
            if key not in planned:
                planned[key] = _plan(schedule, job, misfire_grace_s)
            firings.append(Firing(job, *planned[key]))
        except InvalidInput as exc:
            firings.append(Firing(job, [], None, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - whatever it is, it is this job's: disable it, fire the others
            firings.append(Firing(job, [], None, error=f"its schedule cannot be computed: {type(exc).__name__}: {exc}"))
    return firings


def _on_time(job: dict[str, Any], misfire_grace_s: float) -> bool:
    """Due within the grace window: its misfire policy plays no part in its firing."""
    next_run_at: datetime | None = job["next_run_at"]
    return next_run_at is not None and next_run_at > job["now"] - timedelta(seconds=misfire_grace_s)


def _plan(schedule: Schedule, job: dict[str, Any], misfire_grace_s: float) -> tuple[list[datetime], datetime | None]:
    now: datetime = job["now"]
    if job["next_run_at"] is None:  # inserted by SQL: give it its first fire time
        if schedule.at is not None:
            # A one-off that already fired (its definition re-applied, say) stays done.
            return [], schedule.at if job["last_scheduled_for"] is None else None
        return [], schedule.next_after(now)
    return fire_times(schedule, job, now, misfire_grace_s), schedule.next_after(now, anchor=job["next_run_at"])


async def write_firing(conn: psycopg.AsyncConnection, firing: Firing) -> int:
    """Write one firing; a job changed since ``job_due`` read it is left alone. A job whose
    runs the database refuses (a row inserted by SQL with a task name or args no run can
    take) is disabled with the reason, like an invalid schedule: one bad row must not stop
    every other job from firing."""
    job = firing.job
    if firing.error is not None:
        await _disable(conn, job, firing.error)
        return 0
    try:
        cursor = await conn.execute(
            queries["job_fire"],
            {
                "id": job["id"],
                "seen_next_run_at": job["next_run_at"],
                "times": firing.times,
                "next_run_at": firing.next_run_at,
                "last_scheduled_for": firing.times[-1] if firing.times else None,
            },
        )
    except psycopg.Error as exc:
        over_quota = quota_error(exc)
        if over_quota is not None:
            await _skip(conn, firing, str(over_quota))
            return 0
        if not _belongs_to_the_job(exc):
            raise
        await _disable(conn, job, f"its runs are refused: {str(exc).strip().splitlines()[0]}")
        return 0
    advanced, created = await cursor.fetchone()  # type: ignore[misc]
    if advanced and firing.next_run_at is None:  # a one-off that has fired has no next time: it is done
        await conn.execute(queries["job_finish"], {"id": job["id"]})
    return int(created)


def _belongs_to_the_job(exc: psycopg.Error) -> bool:
    """An error the job's own values caused (a constraint, a value out of range, a row too
    large), not the connection's or the server's: retrying would fail the same way."""
    return exc.sqlstate is not None and exc.sqlstate[:2] in {"22", "23", "54", "P0"}


async def _skip(conn: psycopg.AsyncConnection, firing: Firing, reason: str) -> None:
    """A firing its tenant's quota refused: the fire times pass without runs, the job stays
    enabled (a quota is a state of the tenant, not a fault of the job)."""
    job = firing.job
    logger.warning("job %r: %d fire time(s) skipped: %s", job["name"], len(firing.times), reason)
    cursor = await conn.execute(
        queries["job_skip_firing"],
        {
            "id": job["id"],
            "seen_next_run_at": job["next_run_at"],
            "next_run_at": firing.next_run_at,
            "last_scheduled_for": firing.times[-1] if firing.times else None,
            "error": f"fire time(s) skipped at {job['now'].isoformat()}: {reason}",
        },
    )
    if cursor.rowcount and firing.next_run_at is None:
        await conn.execute(queries["job_finish"], {"id": job["id"]})


async def _disable(conn: psycopg.AsyncConnection, job: dict[str, Any], reason: str) -> None:
    logger.warning("job %r disabled: %s", job["name"], reason)
    await conn.execute(
        queries["job_disable_invalid"], {"id": job["id"], "error": reason, "seen_next_run_at": job["next_run_at"]}
    )


def fire_times(schedule: Schedule, job: dict[str, Any], now: datetime, misfire_grace_s: float) -> list[datetime]:
    """The fire times to create runs for now, per the job's misfire policy (see module doc)."""
    since: datetime = job["next_run_at"]
    cutoff = now - timedelta(seconds=misfire_grace_s)
    on_time = schedule.recent(max(since, cutoff + timedelta(microseconds=1)), now, ON_TIME_LIMIT, anchor=since)
    if since > cutoff or job["misfire"] == "skip":
        return on_time
    limit = job["max_catchup"] if job["misfire"] == "all" else 1
    missed = schedule.recent(since, cutoff, limit, anchor=since)
    if missed:
        logger.info(
            "job %r: %s missed fire time(s) since %s",
            job["name"],
            "running the newest" if job["misfire"] == "coalesce" else f"running {len(missed)}",
            since,
        )
    return missed + on_time

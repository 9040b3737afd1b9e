"""The worker process: listener + fetcher + executor + completer + heartbeat, in one event loop.

    notify ─► listener ─► wake ─► fetcher: claim up to the free slots (run_claim)
                                      └─► execute (event loop / thread pool / process pool) ─► completer

Slots: at most ``concurrency`` tasks execute at once; a slot frees when its task ends, so
the next claim overlaps the completer's write. Outcomes not yet committed are bounded too
(twice ``concurrency``, at least MIN_UNWRITTEN): past that the fetcher waits for the completer. When and how
much to claim is the fetcher's business (:mod:`pgsched.fetcher`); the worker tells it how many
slots and children are free and starts what it claims.

Leases: a claimed run's lease is extended by the heartbeat; a worker that dies stops
extending it, and the sweep (any worker, one at a time under an advisory lock) puts the
run back to the queue, or fails it when its attempts are used up.

Shutdown: the first SIGTERM/SIGINT stops claiming and lets running tasks finish for
``grace_s``; what is still running then is handed back to the queue without using up an
attempt. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pgsched.app import POOLS, App
from pgsched.beat import Beat, BeatOptions, check_leader_lock_possible
from pgsched.completer import Completer
from pgsched.config import DIRECT_DSN_ENV, connection_kwargs, session_dsn
from pgsched.context import RunContext, enter_run
from pgsched.errors import PgschedError
from pgsched.executor import cancelled_on_request, execute
from pgsched.fetcher import Capacity, Fetcher, FetchSettings, claim_pool
from pgsched.limited_claim import Handoff
from pgsched.listener import Listener
from pgsched.logs import about
from pgsched.maintenance import rescue_expired
from pgsched.process_pool import ProcessPool
from pgsched.run_types import ClaimedRun, Outcome
from pgsched.sql import number_array, queries
from pgsched.threads import TaskThreads
from pgsched.tracing import run_span
from pgsched.workflow_results import bind_parent_results, read_parent_results

logger = logging.getLogger("pgsched.worker")

SUMMARY_INTERVAL_S = 10.0
BEAT_RESTART_S = 1.0
# How long a stopping worker waits for the database to take its last writes when the grace
# period is shorter (a brief outage passes; a long one must not keep it from exiting).
SHUTDOWN_WRITE_TIMEOUT_S = 5.0
# The fewest outcomes a worker may hold unwritten before it stops claiming. Twice the
# concurrency alone kept a small worker in lockstep with its completions: at concurrency 10 it
# claimed 10, then 10 more, then waited for each fsync'd write of 10 (1 x 10 drained at 0.31-0.5x
# of 1 x 80, every completion a statement for 10 runs). With room for a few hundred, claims go on
# while a write is in flight and the next write takes what piled up meanwhile. The cost: more
# finished runs run again if the worker is killed before it writes them (at-least-once).
MIN_UNWRITTEN = 200


class WorkerFailed(PgschedError):
    """The worker stopped because a part of it failed (logged, with its traceback, when it did):
    the CLI prints it on one line and exits 1."""


@dataclass
class WorkerOptions:
    concurrency: int = 100
    queues: list[str] | None = None  # None: "default" plus every queue the app's tasks use
    poll_interval_s: float = 2.0
    # The poll interval when no notification can arrive: a pooled DSN without a direct one.
    fallback_poll_interval_s: float = 0.5
    lease_s: float = 30.0
    grace_s: float = 30.0
    sweep_interval_s: float | None = None  # default: half the lease
    pool: str = "thread"  # where sync tasks without their own pool= run: "thread" or "process"
    processes: int | None = None  # size of the process pool; None: the CPU count
    app_path: str | None = None  # module:attribute the process pool imports the app by (None: found in sys.modules)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.pool not in POOLS:
            raise ValueError(f"pool must be 'thread' or 'process', got {self.pool!r}")
        if self.processes is not None and self.processes < 1:
            raise ValueError("processes must be at least 1")
        for name in ("poll_interval_s", "fallback_poll_interval_s", "lease_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.grace_s < 0:
            raise ValueError("grace_s must be >= 0")


@dataclass(slots=True)
class _Execution:
    run: ClaimedRun
    context: RunContext
    task: asyncio.Task[None] | None = None
    in_process: bool = False  # runs in the process pool
    entered: bool = False  # its task has begun _execute, whose end frees the slot
    watched: bool = False  # cancelled before that: a done callback frees the slot instead


@dataclass
class _State:
    executing: dict[int, _Execution] = field(default_factory=dict)  # one per busy slot


class Worker:
    def __init__(self, app: App, options: WorkerOptions | None = None, beat: BeatOptions | None = None) -> None:
        self.app = app
        self.options = options or WorkerOptions()
        self._beat_options = beat  # host a beat in this process (``pgsched worker --beat``)
        # Behind a transaction-mode pooler, LISTEN needs the direct DSN; without one the fetcher
        # polls, so the poll interval becomes the wake-up latency and has to be short.
        self._pgbouncer = app.pgbouncer
        self._direct_dsn = app.direct_dsn
        if self._pgbouncer and not self._direct_dsn:
            self.options = replace(
                self.options, poll_interval_s=min(self.options.poll_interval_s, self.options.fallback_poll_interval_s)
            )
        if beat is not None:
            check_leader_lock_possible(self._direct_dsn, self._pgbouncer)  # refuse now, not when it tries to lead
        self.queues = sorted(set(self.options.queues or {"default", *(t.queue for t in app.tasks.values())}))
        self.worker_id: int | None = None
        self._state = _State()
        self._pool: AsyncConnectionPool | None = None  # the worker's pool, once open
        # Runs started here that a limit counts (by id), and the notifications sent when they
        # end (kept so they are not collected while in flight).
        self._limited_runs: dict[int, ClaimedRun] = {}
        self._background_notifies: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._failure: BaseException | None = None  # a background part's, see _on_background_ended
        self._threads = TaskThreads(max_threads=self.options.concurrency)
        self._processes = ProcessPool.for_app(
            app, default_pool=self.options.pool, size=self.options.processes, app_path=self.options.app_path
        )
        self._process_runs = 0  # executing runs that hold or wait for a child process
        # Room for one batch being written while the next ones execute.
        self._max_unwritten = max(2 * self.options.concurrency, MIN_UNWRITTEN)
        self._abandoned_threads = False
        self._stop_beat: Callable[[], None] | None = None
        self._background_checks: set[asyncio.Task[None]] = set()
        self._succeeded = 0
        self._fetcher = Fetcher(
            FetchSettings(
                queues=self.queues,
                lease_s=self.options.lease_s,
                poll_interval_s=self.options.poll_interval_s,
                concurrency=self.options.concurrency,
                pgbouncer=self._pgbouncer,
                process_tasks=tuple(self._processes.tasks) if self._processes is not None else (),
            ),
            Capacity(
                free_slots=self._free_slots,
                free_children=self._free_children,
                writes_backed_up=self._writes_backed_up,
                start=self._start,
            ),
            stopping=self._stop,
        )

    # ---- lifecycle

    def request_stop(self) -> None:
        """First call: stop gracefully. Second call: stop now."""
        if self._stop.is_set():
            logger.warning("second stop signal: releasing running runs now")
            self._force.set()
        self._stop.set()
        self._fetcher.wake()
        if self._stop_beat is not None:
            self._stop_beat()

    async def run(self) -> None:
        """Work until :meth:`request_stop` (or SIGTERM/SIGINT when installed)."""
        dsn = self.app.dsn
        async with (
            AsyncConnectionPool(
                dsn,
                min_size=2,
                max_size=4,
                kwargs=connection_kwargs(self._pgbouncer, autocommit=True),
                name="pgsched-worker",
                open=False,
            ) as pool,
            claim_pool(dsn, self._pgbouncer) as claims,
        ):
            await pool.open(wait=True)
            await claims.open(wait=True)
            self._pool = pool
            self.worker_id = await self._register(pool)
            await self._declare_task_rates(pool)
            logger.info(
                "worker %s started: queues=%s concurrency=%d pid=%d",
                self.worker_id,
                ",".join(self.queues),
                self.options.concurrency,
                os.getpid(),
            )
            completer = Completer(pool, self.worker_id, self._on_written, self)
            self._completer = completer
            listener = self._listener(dsn, pool)
            background = [
                asyncio.create_task(coro)
                for coro in (completer.run(), self._heartbeat(pool), self._sweep(pool), self._summarize())
            ]
            if listener is not None:
                background.append(asyncio.create_task(listener.run()))
            beat_task = asyncio.create_task(self._host_beat(dsn)) if self._beat_options else None
            if beat_task is not None:
                background.append(beat_task)
            for part in background:
                part.add_done_callback(self._on_background_ended)
            try:
                if self._processes is not None:
                    await self._processes.start()  # the app cannot be imported there: fail before claiming
                await self._fetcher.run(claims, self.worker_id, listener)
                await self._shutdown(pool, completer)
                if beat_task is not None:
                    await asyncio.wait([beat_task], timeout=5)  # it resigns leadership on its way out
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                if self._processes is not None:
                    await self._processes.close()  # whatever still runs there was released by the shutdown
                await self._deregister(pool)
        self._threads.shutdown()
        if self._failure is not None:
            raise WorkerFailed(f"worker {self.worker_id} stopped: {self._failure!r}") from self._failure
        logger.info("worker %s stopped", self.worker_id)
        if self._abandoned_threads:
            # A released sync task still runs in a thread nobody can stop; exiting normally
            # would wait for it. Its run is back in the queue, so leave now.
            logging.shutdown()
            os._exit(0)

    def _on_background_ended(self, part: asyncio.Task[None]) -> None:
        """A part that runs as long as the worker (the completer, the heartbeat, the listener)
        ended on an error its own retries do not cover (they retry a lost connection):
        stop now and exit non-zero. Going on would be worse: without its completer the worker
        claims until its unwritten outcomes fill up, then waits forever while its heartbeat keeps
        the leases of runs it can no longer finish, so nobody rescues them. Once it has exited,
        their leases run out and the sweep hands them to other workers."""
        if part.cancelled() or part.exception() is None or self._failure is not None:
            return
        self._failure = part.exception()
        logger.critical("worker %s stops: a background part failed", self.worker_id, exc_info=self._failure)
        self._force.set()
        self.request_stop()

    async def _host_beat(self, dsn: str) -> None:
        """Run the hosted beat (``--beat``) until the worker stops. A beat that ends on an error
        is started again after BEAT_RESTART_S: a worker must not go on without the beat it was
        asked to host, nor stop working because the beat failed."""
        assert self._beat_options is not None
        while not self._stop.is_set():
            beat = Beat(dsn, self._beat_options, direct_dsn=self._direct_dsn, pgbouncer=self._pgbouncer)
            self._stop_beat = beat.request_stop
            try:
                await beat.run()
            except Exception:
                logger.exception("the hosted beat failed; starting it again in %gs", BEAT_RESTART_S)
                try:
                    async with asyncio.timeout(BEAT_RESTART_S):
                        await self._stop.wait()
                except TimeoutError:
                    pass

    def _listener(self, dsn: str, pool: AsyncConnectionPool) -> Listener | None:
        """The LISTEN connection for wake-ups and cancel requests. None behind a pooler without
        a direct DSN: a LISTEN there hears nothing, so the fetcher polls and cancel requests
        arrive with the heartbeat."""
        listen_dsn = session_dsn(dsn, self._direct_dsn, self._pgbouncer)
        if listen_dsn is None:
            logger.warning(
                "the DSN goes through PgBouncer and no direct DSN is set: no LISTEN, polling for new runs "
                "every %gs and for cancel requests every %gs; set %s for instant wake-ups",
                self.options.poll_interval_s,
                self.options.lease_s / 3,
                DIRECT_DSN_ENV,
            )
            return None
        return Listener(
            listen_dsn, queries["worker_listen"], self._on_notify, functools.partial(self._on_listening, pool)
        )

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)

    # ---- execute → complete

    def _free_slots(self) -> int:
        """How many runs the next claim may take (process-pool runs: see :meth:`Fetcher._claim`)."""
        return self.options.concurrency - len(self._state.executing)

    def _free_children(self) -> int:
        return 0 if self._processes is None else self._processes.size - self._process_runs

    def _writes_backed_up(self) -> bool:
        return self._completer.unwritten >= self._max_unwritten

    def _start(self, run: ClaimedRun) -> None:
        context = RunContext(
            run.id,
            run.task,
            run.attempt,
            run.max_attempts,
            queue=run.queue,
            worker_id=self.worker_id,
            request_id=run.request_id,
        )
        execution = _Execution(run, context)
        if self._processes is not None and self._processes.handles(run.task):
            execution.in_process = True
            self._process_runs += 1
        self._state.executing[run.id] = execution
        if self._fetcher.limits_hold(run):
            self._limited_runs[run.id] = run
        # The loop's own create_task: asyncio.create_task is a Python wrapper around it that also
        # names the task (one more frame and call per run). No done callback: _execute frees the
        # slot as it ends (a callback per run cost a call_soon, a Handle and a partial).
        execution.task = asyncio.get_running_loop().create_task(self._execute(execution))

    def _cancel_task(self, execution: _Execution) -> None:
        """Cancel the run's asyncio task. One cancelled before its first step never enters
        _execute (a cancel request handled in the loop turn that started the run): its end is
        seen to by a done callback instead, and its run still ends 'cancelled'."""
        assert execution.task is not None
        if not execution.entered and not execution.watched:
            execution.watched = True
            execution.task.add_done_callback(functools.partial(self._execution_done, execution))
        execution.task.cancel()

    def _execution_done(self, execution: _Execution, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step has ended: its slot is free."""
        if execution.entered:
            return  # it began after all: _execute freed the slot and wrote the outcome
        self._free_slot(execution.run.id)
        if task.cancelled() and execution.context.cancelled:
            self._completer.add(cancelled_on_request(execution.run, self.worker_id or 0))

    async def _execute(self, execution: _Execution) -> None:
        execution.entered = True
        try:
            run = execution.run
            # This run's own asyncio task: what enter_run sets stays with it (log lines, current_run()).
            enter_run(execution.context, run.trace_context)
            # DEBUG, like success lines (see _log_outcome): at thousands of runs/s a line per run is a
            # large share of the worker's CPU, and so is asking the logger twice a run whether it is on.
            debug = logger.isEnabledFor(logging.DEBUG)
            with run_span(run, self.worker_id or 0) as span:
                if debug:
                    logger.debug("run %d %s started (attempt %d/%d)", run.id, run.task, run.attempt, run.max_attempts)
                started = time.perf_counter()
                try:
                    if run.has_parents:
                        await self._read_parent_results(execution)
                    outcome = await execute(run, self.app.tasks, self._threads, self.worker_id or 0, self._processes)
                except asyncio.CancelledError:
                    if not execution.context.cancelled:
                        return  # released back to the queue by the shutdown
                    outcome = cancelled_on_request(run, self.worker_id or 0)
                span.record(outcome)
                if outcome.status == "succeeded":
                    self._succeeded += 1
                    if debug:
                        _log_outcome(run, outcome, time.perf_counter() - started)
                else:
                    _log_outcome(run, outcome, time.perf_counter() - started)
            self._completer.add(outcome)
        finally:
            self._free_slot(execution.run.id)

    async def _read_parent_results(self, execution: _Execution) -> None:
        """A workflow step's parents' results: its ``current_run().parent_results``, and its
        args' markers replaced (see :mod:`pgsched.workflow_results`)."""
        assert self._pool is not None  # runs execute only while the worker's pool is open
        results = await read_parent_results(self._pool, execution.run.id)
        execution.context.parent_results = results
        execution.run.args = bind_parent_results(execution.run.args, results)

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == "pgsched":
            self._fetcher.notify_enqueued(payload)
        elif channel == "pgsched_queues":
            self._fetcher.queue_settings_changed(payload)
        elif channel == "pgsched_cancel" and payload.isdigit():
            self._cancel(int(payload))

    def _on_listening(self, pool: AsyncConnectionPool) -> None:
        """(Re)connected: poll once, and look for cancel requests sent while not listening."""
        self._fetcher.wake()
        if self._state.executing:
            self._background_checks.add(task := asyncio.create_task(self._check_cancel_requests(pool)))
            task.add_done_callback(self._background_checks.discard)

    async def _check_cancel_requests(self, pool: AsyncConnectionPool) -> None:
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(queries["run_cancel_requested"], {"ids": list(self._state.executing)})
                for (run_id,) in await cursor.fetchall():
                    self._cancel(run_id)
        except psycopg.OperationalError as exc:
            logger.warning("could not check for cancel requests (%s); the heartbeat will", exc)

    def _cancel(self, run_id: int) -> None:
        """A cancel request for a run: ours only if we are executing it. Async tasks stop now,
        process-pool tasks are killed; thread-pool ones see ``current_run().cancelled``. The
        completion ends the run 'cancelled' either way (it reads the request from the row, so
        a request racing us is not lost)."""
        execution = self._state.executing.get(run_id)
        if execution is None:
            return
        logger.info("run %d %s: cancel requested", run_id, execution.run.task, extra=about(execution.context))
        execution.context.cancelled = True
        if execution.task is not None and self._stoppable(execution):
            self._cancel_task(execution)

    def _cancel_already_requested(self, run_id: int) -> bool:
        execution = self._state.executing.get(run_id)
        return execution is not None and execution.context.cancelled

    def _stoppable(self, execution: _Execution) -> bool:
        """Whether cancelling its asyncio task stops the run's task: async, or in a killable process."""
        task = self.app.tasks.get(execution.run.task)
        return task is not None and (task.is_async or execution.in_process)

    def _free_slot(self, run_id: int) -> None:
        execution = self._state.executing.pop(run_id, None)
        if execution is not None and execution.in_process:
            self._process_runs -= 1
        self._fetcher.capacity_freed()

    def _on_written(self, batch: list[Outcome], written: set[int]) -> None:
        # Each pass over the batch only when it can find something (a lease lost, a limited run
        # running): the plain drain made both passes over every batch and found nothing.
        if len(written) < len(batch):
            for outcome in batch:
                if outcome.run_id not in written:
                    logger.warning(
                        "run %d: outcome discarded, this worker no longer held attempt %d (lease lost)",
                        outcome.run_id,
                        outcome.attempt,
                    )
        handed_off = self._fetcher.outcomes_written()
        if not self._limited_runs:
            return
        freed = {self._limited_runs.pop(o.run_id).queue for o in batch if o.run_id in self._limited_runs}
        if freed and self._fetcher.held and not handed_off and self._pool is not None:
            task = asyncio.create_task(self._notify_slots_freed(self._pool, sorted(freed)))
            self._background_notifies.add(task)
            task.add_done_callback(self._background_notifies.discard)

    def plan_handoff(self, batch: list[Outcome]) -> Handoff | None:
        """The completer's question: a claim to make with ``batch``'s completion, for the one
        limited queue whose runs in it end (see :meth:`Fetcher.plan_handoff`)."""
        if not self._limited_runs or not self._fetcher.held:
            return None
        units = {
            self._fetcher.handoff_unit(self._limited_runs[o.run_id]) for o in batch if o.run_id in self._limited_runs
        }
        if len(units) != 1:
            return None
        unit = units.pop()
        return None if unit is None else self._fetcher.plan_handoff(unit)

    def handoff_claimed(self, handoff: Handoff, rows: list[tuple[Any, ...]] | None) -> set[int]:
        return self._fetcher.handoff_claimed(handoff, rows)

    async def _notify_slots_freed(self, pool: AsyncConnectionPool, queues: list[str]) -> None:
        """Runs of limited queues or tasks, or of a tenant with a max_running, ended while
        their limits bind: wake the workers of their queues (a slot another worker waits for
        is free; without this, it would look again only after 50 ms). Best effort: a worker
        that misses it looks again anyway."""
        try:
            async with pool.connection() as conn:
                await conn.execute(queries["queue_notify_slots_freed"], {"queues": queues})
        except psycopg.OperationalError as exc:
            logger.debug("slot-freed notification failed (%s)", exc)

    # ---- heartbeat and sweep

    async def _heartbeat(self, pool: AsyncConnectionPool) -> None:
        while True:
            await asyncio.sleep(self.options.lease_s / 3)
            try:
                async with pool.connection() as conn:
                    cursor = await conn.execute(
                        queries["worker_heartbeat"],
                        {"worker_id": self.worker_id, "lease_s": self.options.lease_s, "ids": self._held_ids()},
                    )
                    held = await cursor.fetchall()
            except psycopg.OperationalError as exc:
                logger.warning("heartbeat failed (%s)", exc)
                continue
            for run_id, cancel_requested in held:
                if cancel_requested and not self._cancel_already_requested(run_id):
                    self._cancel(run_id)

    def _held_ids(self) -> str:
        """The runs whose leases the heartbeat extends: those executing here and those whose
        outcome is not yet written. A run claimed while the heartbeat's statement is in flight
        is extended by the next one, a third of a lease later."""
        return number_array([*self._state.executing, *self._completer.unwritten_ids()])

    async def _summarize(self) -> None:
        """An INFO line every SUMMARY_INTERVAL_S while runs succeed (each success is a DEBUG line)."""
        reported = 0
        while True:
            await asyncio.sleep(SUMMARY_INTERVAL_S)
            if self._succeeded != reported:
                logger.info(
                    "worker %s: %d runs succeeded in the last %.0fs (%.0f/s), %d running",
                    self.worker_id,
                    self._succeeded - reported,
                    SUMMARY_INTERVAL_S,
                    (self._succeeded - reported) / SUMMARY_INTERVAL_S,
                    len(self._state.executing),
                )
                reported = self._succeeded

    async def _sweep(self, pool: AsyncConnectionPool) -> None:
        interval = self.options.sweep_interval_s or self.options.lease_s / 2
        while True:
            try:
                await rescue_expired(
                    pool, stale_worker_s=self.options.lease_s * 4, restart_grace_s=self.options.lease_s
                )
            except psycopg.Error as exc:
                # Any error, not only a lost connection: a round is tried again next interval,
                # and other workers and the beat sweep too, so a failed round must not stop
                # this worker (one of a release newer than its schema, mid-upgrade, fails here).
                logger.warning("lease sweep failed (%s)", exc)
            await asyncio.sleep(interval)

    # ---- registration and shutdown

    async def _register(self, pool: AsyncConnectionPool) -> int:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                queries["worker_register"],
                {
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "queues": self.queues,
                    "concurrency": self.options.concurrency,
                },
            )
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

    async def _declare_task_rates(self, pool: AsyncConnectionPool) -> None:
        """Write the rates the app's tasks declare (``rate_limit=``) to their settings, where
        every worker's claim reads them: a rate is global, not this process's."""
        declared = {name: task.rate_limit for name, task in self.app.tasks.items() if task.rate_limit is not None}
        if not declared:
            return
        async with pool.connection() as conn:
            await conn.execute(
                queries["task_settings_declare"], {"tasks": list(declared), "rates": list(declared.values())}
            )

    async def _deregister(self, pool: AsyncConnectionPool) -> None:
        try:
            async with asyncio.timeout(SHUTDOWN_WRITE_TIMEOUT_S), pool.connection() as conn:
                await conn.execute(queries["worker_deregister"], {"worker_id": self.worker_id})
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as exc:
            logger.warning("could not deregister worker %s (%s)", self.worker_id, exc)

    async def _shutdown(self, pool: AsyncConnectionPool, completer: Completer) -> None:
        executing = self._state.executing
        deadline = time.monotonic() + self.options.grace_s
        if self._processes is not None:
            self._processes.stopping()  # children killed from here on are not replaced
        if executing and not self._force.is_set():
            logger.info("stopping: waiting up to %gs for %d running runs", self.options.grace_s, len(executing))
            while executing and not self._force.is_set() and time.monotonic() < deadline:
                done_or_forced = [
                    asyncio.create_task(self._force.wait()),
                    *(e.task for e in executing.values() if e.task is not None),
                ]
                await asyncio.wait(
                    done_or_forced, timeout=deadline - time.monotonic(), return_when=asyncio.FIRST_COMPLETED
                )
                done_or_forced[0].cancel()
        leftover = [execution.context for execution in executing.values()]
        self._abandoned_threads = any(
            e.run.task in self.app.tasks and not self._stoppable(e) for e in executing.values()
        )
        for execution in list(executing.values()):
            if execution.task is not None:
                self._cancel_task(execution)
        if leftover:
            await self._release(pool, leftover)
        await self._drain(completer, deadline)

    async def _release(self, pool: AsyncConnectionPool, runs: list[RunContext]) -> None:
        try:
            # Bounds the statement too: a connection cut off without a reset would hang it.
            async with asyncio.timeout(SHUTDOWN_WRITE_TIMEOUT_S), pool.connection() as conn:
                await conn.execute(
                    queries["run_release_many"],
                    {"worker_id": self.worker_id, "ids": [r.id for r in runs], "attempts": [r.attempt for r in runs]},
                )
        except (psycopg.OperationalError, PoolTimeout, TimeoutError) as exc:
            logger.warning(
                "could not release %d runs (%s): they go back to the queue when their leases expire", len(runs), exc
            )
            return
        for run in runs:
            logger.info("run %d %s released back to the queue (worker stopping)", run.id, run.task, extra=about(run))

    async def _drain(self, completer: Completer, deadline: float) -> None:
        """Wait for the outcomes not yet written, until the grace ends (a blip of at least
        SHUTDOWN_WRITE_TIMEOUT_S is ridden out) or a second stop signal. A worker must stop
        when told, even with its database gone: runs whose outcome it could not write stay
        'running' and run again once their leases expire (at-least-once)."""
        waits = [asyncio.create_task(completer.drain()), asyncio.create_task(self._force.wait())]
        await asyncio.wait(
            waits,
            timeout=max(deadline - time.monotonic(), SHUTDOWN_WRITE_TIMEOUT_S),
            return_when=asyncio.FIRST_COMPLETED,
        )
        for wait in waits:
            wait.cancel()
        if completer.unwritten:
            logger.warning(
                "stopping with %d outcomes unwritten (database unreachable): those runs will run again "
                "when their leases expire",
                completer.unwritten,
            )


def _log_outcome(run: ClaimedRun, outcome: Outcome, elapsed_s: float) -> None:
    """One line per run that ends otherwise than succeeding (WARNING/ERROR, or INFO for a
    cancel); successes are DEBUG lines and an INFO summary every SUMMARY_INTERVAL_S: at
    thousands of runs/s a line per success cost 44% of the worker's CPU."""
    if outcome.status == "succeeded":
        logger.debug(
            "run %d %s succeeded in %.1f ms (attempt %d/%d)",
            run.id,
            run.task,
            elapsed_s * 1000,
            run.attempt,
            run.max_attempts,
        )
    elif outcome.status == "queued":
        logger.warning(
            "run %d %s attempt %d/%d failed, retry in %.1fs: %s",
            run.id,
            run.task,
            run.attempt,
            run.max_attempts,
            outcome.retry_delay_s,
            _error_summary(outcome),
        )
    elif outcome.status == "cancelled":
        logger.info("run %d %s cancelled: %s", run.id, run.task, _error_summary(outcome))
    else:
        logger.error(
            "run %d %s failed after attempt %d/%d: %s",
            run.id,
            run.task,
            run.attempt,
            run.max_attempts,
            _error_summary(outcome),
        )


def _error_summary(outcome: Outcome) -> str:
    entry = json.loads(outcome.error or "{}")
    return f"{entry.get('type')}: {entry.get('message')}"


def run_worker(app: App, options: WorkerOptions, beat: BeatOptions | None = None) -> None:
    """Run a worker (hosting a beat when ``beat`` is given) in this process until SIGTERM/SIGINT."""

    async def main() -> None:
        worker = Worker(app, options, beat)
        worker.install_signal_handlers()
        await worker.run()

    asyncio.run(main())

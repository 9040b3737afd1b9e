"""The App: a registry of tasks plus the enqueue API users call from Python.

    app = App()                       # DSN from PGSCHED_DSN (or the embedded server), or App(dsn=...)

    @app.task(queue="emails", max_attempts=5)
    def send_email(to: str) -> None: ...

    send_email.enqueue(to="a@b.c")                       # -> run id
    app.enqueue("send_email", {"to": "a@b.c"}, conn=tx)  # inside the caller's transaction

Every enqueue has an ``_async`` twin with the same arguments for asyncio callers.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Callable,
    Generic,
    Iterator,
    Mapping,
    ParamSpec,
    Protocol,
    Sequence,
    TypeVar,
    overload,
)

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgsched import calling
from pgsched import enqueue as _enqueue
from pgsched.canvas import signature_of
from pgsched.config import connection_kwargs, resolve_direct_dsn, resolve_dsn, resolve_pgbouncer
from pgsched.enqueue import RunOptions, check_concurrency_key, check_task_name, encode_args_text
from pgsched.errors import DuplicateTask, InvalidArgs, InvalidInput
from pgsched.handles import RunHandle
from pgsched.jobs import JobSpec, upsert_job
from pgsched.quotas import quota_error
from pgsched.schedule import Schedule

if TYPE_CHECKING:
    from pgsched.canvas import Signature, Workflow

P = ParamSpec("P")
R = TypeVar("R")

# Keyword names Task.enqueue keeps for itself; a task parameter with one of these names
# can still be passed through app.enqueue(name, {...}).
ENQUEUE_KEYWORDS = frozenset({"run_at", "delay", "conn", "unique_key"})


class SqlAlchemyConnectable(Protocol):
    """A SQLAlchemy 2 Session (its ``connection()`` method) or Connection (its ``connection``
    attribute), on the psycopg driver: an enqueue on it joins its transaction."""

    @property
    def connection(self) -> Any: ...


# What ``conn=`` takes: a psycopg connection, or a SQLAlchemy session or connection over one.
Connectable = psycopg.Connection[Any] | SqlAlchemyConnectable

# Where a sync task runs: "thread" (the worker's thread pool) or "process" (its process pool).
POOLS = ("thread", "process")


@dataclass(eq=False)
class Task(Generic[P, R]):
    """A registered function plus its run defaults. Calling it runs the function directly."""

    app: App
    fn: Callable[P, R]
    name: str
    queue: str = "default"
    priority: int = 0
    max_attempts: int = 3
    timeout: float | None = None
    retry_backoff: float = 1.0
    pool: str | None = None  # "thread" | "process" | None: the worker's --pool decides
    # Celery's autoretry_for: only these exceptions are retried, any other fails the run at once
    # (None: every exception is retried while attempts remain).
    autoretry_for: tuple[type[BaseException], ...] | None = None
    # At most this many run starts per s, m or h over all workers ("10/s"): written to the
    # task's settings (pgsched.task_settings) when a worker with this app starts.
    rate_limit: str | None = None
    # The run's concurrency key, from its args: a format string ("customer:{customer_id}").
    concurrency_key: str | None = None
    is_async: bool = field(init=False)
    signature: inspect.Signature = field(init=False)
    # For plain signatures (named parameters only), the names accepted and those required:
    # checking args is then two set operations instead of Signature.bind, on every run.
    _names: tuple[frozenset[str], frozenset[str]] | None = field(init=False, repr=False)
    _key_fields: tuple[str, ...] = field(init=False, repr=False)  # concurrency_key's {fields}

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)
        self.signature = inspect.signature(self.fn)
        self._names = _plain_parameter_names(self.signature)
        RunOptions(queue=self.queue, priority=self.priority, max_attempts=self.max_attempts)
        if self.timeout is not None and not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            raise InvalidInput(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if not (isinstance(self.retry_backoff, (int, float)) and self.retry_backoff >= 0):
            raise InvalidInput(f"retry_backoff must be a number of seconds >= 0, got {self.retry_backoff!r}")
        self._check_pool()
        self._key_fields = calling.concurrency_key_fields(self.name, self.concurrency_key, self.signature)

    def key_for(self, args: Mapping[str, Any] | None) -> str | None:
        """The concurrency key of a run with ``args`` (None: the task derives none)."""
        if self.concurrency_key is None:
            return None
        given = args or {}
        values = {
            name: given[name] if name in given else self.signature.parameters[name].default
            for name in self._key_fields
            if name in given or self.signature.parameters[name].default is not inspect.Parameter.empty
        }
        return calling.concurrency_key_of(self.name, self.concurrency_key, self._key_fields, values)

    def _check_pool(self) -> None:
        if self.pool is None:
            return
        if self.pool not in POOLS:
            raise InvalidInput(f"pool must be 'thread' or 'process', got {self.pool!r}")
        if self.is_async:
            raise InvalidInput(
                f"task {self.name!r} is async: it runs in the worker's event loop, and pool= only "
                "chooses where a sync task runs; to run it in a child process, make it a plain def"
            )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def retries_on(self, exc: BaseException) -> bool:
        """Whether an attempt that raised ``exc`` may be retried (``autoretry_for``)."""
        return self.autoretry_for is None or isinstance(exc, self.autoretry_for)

    def check_args(self, args: Mapping[str, Any]) -> None:
        """Raise InvalidArgs unless ``fn(**args)`` would bind."""
        if self._names is not None:
            accepted, required = self._names
            if required.issubset(args) and accepted.issuperset(args):
                return
        try:
            self.signature.bind(**args)
        except TypeError as exc:
            raise InvalidArgs(f"args do not fit {self.name}{self.signature}: {exc}") from None

    def enqueue(
        self,
        *,
        run_at: datetime | None = None,
        delay: float | None = None,
        conn: Connectable | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        **kwargs: Any,
    ) -> int:
        """Queue one run of this task with ``kwargs`` as its args; returns the run id."""
        return self.app.enqueue(
            self.name,
            kwargs,
            run_at=run_at,
            delay=delay,
            conn=conn,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )

    async def enqueue_async(
        self,
        *,
        run_at: datetime | None = None,
        delay: float | None = None,
        conn: psycopg.AsyncConnection | None = None,
        unique_key: str | None = None,
        concurrency_key: str | None = None,
        **kwargs: Any,
    ) -> int:
        """The asyncio twin of :meth:`enqueue`."""
        return await self.app.enqueue_async(
            self.name,
            kwargs,
            run_at=run_at,
            delay=delay,
            conn=conn,
            unique_key=unique_key,
            concurrency_key=concurrency_key,
        )

    # ---- the Celery way (pgsched/calling.py says what each option maps to)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A step not yet enqueued, for chain/group/chord or ``app.workflow(...).add`` (Celery's
        signature). Positional args are bound by name, as in :meth:`delay`."""
        return signature_of(self, args, kwargs, immutable=False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable step: a chain or chord passes it no results (Celery's ``si``)."""
        return signature_of(self, args, kwargs, immutable=True)

    def delay(self, *args: Any, **kwargs: Any) -> RunHandle:
        """Queue one run, Celery style: positional args are bound to the task's parameters and
        stored by name. A Celery option (``countdown=`` ...) is refused: use :meth:`apply_async`."""
        calling.refuse_celery_options(self.name, self.signature, kwargs)
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | None = None,
        expires: float | datetime | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        conn: Connectable | None = None,
    ) -> RunHandle:
        """Queue one run with Celery's options: ``countdown`` (seconds) or ``eta`` (an aware
        datetime), ``expires`` (seconds or an aware datetime: not started by then, it never
        starts), ``queue``, ``priority`` (lower runs first), ``task_id`` (idempotent: the same id
        gives the same run). Returns the run's handle."""
        named = calling.bind_by_name(self.name, self.signature, args, kwargs if kwargs is not None else {})
        run_at, delay = calling.schedule_of(countdown, eta)
        return self.app.apply(
            self.name,
            named,
            task_id=calling.check_task_id(task_id),
            run_at=run_at,
            delay=delay,
            expires=expires,
            queue=queue,
            priority=priority,
            conn=conn,
        )


def _plain_parameter_names(signature: inspect.Signature) -> tuple[frozenset[str], frozenset[str]] | None:
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if not all(p.kind in named for p in signature.parameters.values()):
        return None
    accepted = frozenset(signature.parameters)
    required = frozenset(n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty)
    return accepted, required


class App:
    """Tasks and the way to reach the database. Pools open on first use, not at import."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool_max_size: int = 10,
        direct_dsn: str | None = None,
        pgbouncer: bool | None = None,
    ) -> None:
        self.tasks: dict[str, Task[Any, Any]] = {}
        # Schedules declared with @app.periodic: upserted by name when a worker or beat starts.
        self.periodic_jobs: dict[str, JobSpec] = {}
        self._dsn = dsn
        self._direct_dsn = direct_dsn
        self._pgbouncer = pgbouncer
        self._pool_max_size = pool_max_size
        self._pool: ConnectionPool | None = None
        self._async_pools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = {}
        self._lock = threading.Lock()
        # A task's own options, validated once: (queue, priority, max_attempts) -> RunOptions.
        self._task_options: dict[tuple[str, int, int], RunOptions] = {}

    # ---- configuration

    @property
    def dsn(self) -> str:
        """The DSN in use: App(dsn=...), else $PGSCHED_DSN, else the embedded server."""
        if self._dsn is None:
            self._dsn = resolve_dsn(None)
        return self._dsn

    def use_dsn(self, dsn: str) -> None:
        """Point the app at another database (the CLI's --dsn); only before it connects."""
        if self._pool is not None or self._async_pools:
            raise RuntimeError("use_dsn() must be called before the app opens connections")
        self._dsn = dsn

    @property
    def direct_dsn(self) -> str | None:
        """The DSN for LISTEN and the beat's leader lock when :attr:`dsn` goes through PgBouncer:
        App(direct_dsn=...), else $PGSCHED_DIRECT_DSN, else None."""
        return resolve_direct_dsn(self._direct_dsn)

    @property
    def pgbouncer(self) -> bool:
        """Whether :attr:`dsn` goes through a transaction-mode pooler (PgBouncer): App(pgbouncer=...),
        else $PGSCHED_PGBOUNCER, else whether a direct DSN is set."""
        return resolve_pgbouncer(self._pgbouncer, direct_dsn=self._direct_dsn)

    def use_pooler(self, *, direct_dsn: str | None = None, pgbouncer: bool | None = None) -> None:
        """The CLI's --direct-dsn and --pgbouncer (None: keep what the app has); only before it connects."""
        if self._pool is not None or self._async_pools:
            raise RuntimeError("use_pooler() must be called before the app opens connections")
        self._direct_dsn = direct_dsn or self._direct_dsn
        self._pgbouncer = self._pgbouncer if pgbouncer is None else pgbouncer

    # ---- tasks

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(
        self,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_backoff: float = 1.0,
        pool: str | None = None,
        autoretry_for: Sequence[type[BaseException]] | type[BaseException] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        rate_limit: str | int | None = None,
        concurrency_key: str | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        name: str | None = None,
        queue: str = "default",
        priority: int = 0,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_backoff: float = 1.0,
        pool: str | None = None,
        autoretry_for: Sequence[type[BaseException]] | type[BaseException] | None = None,
        max_retries: int | None = None,
        time_limit: float | None = None,
        rate_limit: str | int | None = None,
        concurrency_key: str | None = None,
    ) -> Any:
        """Register a function (sync or async) as a task; usable bare or with options.

        ``pool`` says where a sync task runs: ``"thread"`` (the worker's thread pool) or
        ``"process"`` (a child process of the worker's process pool); by default the worker's
        ``--pool`` decides (threads unless it says otherwise). ``timeout`` cancels an async
        task at the deadline and kills a process-pool task's process; a thread cannot be
        stopped, so in the thread pool it is not enforced. ``retry_backoff`` is the base delay
        in seconds of the exponential backoff between attempts; ``max_attempts`` defaults to 3.

        Celery's options, where they map cleanly: ``autoretry_for`` (only these exceptions are
        retried; any other fails the run at once), ``max_retries`` (``max_attempts - 1``),
        ``time_limit`` (``timeout``), ``rate_limit`` ("10/s", "100/m", "5/h"; a number is per
        second): at most that many of the task's runs start per second, minute or hour, over
        all workers together (Celery's is per worker process). A worker with this app writes
        it to the task's settings when it starts (``pgsched tasks list`` shows it).

        ``concurrency_key`` derives each run's concurrency key from its args, as a format
        string: ``"customer:{customer_id}"``. With the queue's ``key_max_running`` set, runs of
        one key never run more at once than that, anywhere.
        """

        def register(fn: Callable[P, R]) -> Task[P, R]:
            task_name = fn.__name__ if name is None else name  # name="" is refused, not replaced
            check_task_name(task_name)
            rate = calling.rate_limit_of(task_name, rate_limit)
            if task_name in self.tasks:
                raise DuplicateTask(f"a task named {task_name!r} is already registered ({self.tasks[task_name].fn!r})")
            task: Task[P, R] = Task(
                self,
                fn,
                task_name,
                queue=queue,
                priority=priority,
                max_attempts=calling.attempts_of(task_name, max_attempts, max_retries),
                timeout=calling.timeout_of(task_name, timeout, time_limit),
                retry_backoff=retry_backoff,
                pool=pool,
                autoretry_for=calling.check_autoretry_for(task_name, autoretry_for),
                rate_limit=rate,
                concurrency_key=concurrency_key,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(
        self,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        name: str | None = None,
        args: Mapping[str, Any] | None = None,
        misfire: str = "coalesce",
        **task_options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Register a task and a schedule for it (cron: 5 fields, or 6 with seconds first).

        The schedule is written to ``pgsched.jobs`` (upserted by name, default: the task's name)
        when a worker or beat with this app starts.
        """

        schedule = Schedule(cron=cron, every_s=every, tz=tz)  # a bad schedule registers nothing

        def register(fn: Callable[P, R]) -> Task[P, R]:
            job_name = name or task_options.get("name") or fn.__name__
            if job_name in self.periodic_jobs:
                raise DuplicateTask(f"a periodic job named {job_name!r} is already registered")
            task = self.task(**task_options)(fn)
            self.periodic_jobs[job_name] = JobSpec(
                name=job_name,
                task=task.name,
                schedule=schedule,
                args=args or {},
                queue=task.queue,
                priority=task.priority,
                max_attempts=task.max_attempts,
                misfire=misfire,
            )
            return task

        return register

    def schedule(
        self,
        name: str,
        *,
        task: str,
        cron: str | None = None,
        every: float | None = None,
        at: datetime | None = None,
        tz: str = "UTC",
        args: Mapping[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        misfire: str = "coalesce",
        max_catchup: int = 100,
        enabled: bool = True,
        conn: psycopg.Connection | None = None,
    ) -> bool:
        """Create or update the scheduled job ``name`` (upsert); True if it was created.

        Exactly one of ``cron`` (5 fields, or 6 with seconds first), ``every`` (seconds) or ``at``
        (a one-off instant). ``misfire`` says what to do with fire times missed while no beat ran
        or the job was paused: ``coalesce`` (one run), ``skip`` or ``all`` (up to ``max_catchup``).
        """
        options = self._options(
            task, queue=queue, priority=priority, max_attempts=max_attempts, run_at=None, delay=None
        )
        if args is not None:
            self._encode(task, args)
        spec = JobSpec(
            name=name,
            task=task,
            schedule=Schedule(cron=cron, every_s=every, at=at, tz=tz),
            args=args or {},
            queue=options.queue,
            priority=options.priority,
            max_attempts=options.max_attempts,
            misfire=misfire,
            max_catchup=max_catchup,
            enabled=enabled,
        )
        with self._connection(conn) as c, _database_rejections():
            return upsert_job(c, spec)

    def sync_periodic_jobs(self, conn: psycopg.Connection) -> None:
        """Upsert every @app.periodic schedule (a worker or beat does this when it starts)."""
        for spec in self.periodic_jobs.values():
            upsert_job(conn, spec)

    # ---- enqueue

    def _options(
        self,
        task: str,
        *,
        queue: str | None,
        priority: int | None,
        max_attempts: int | None,
        run_at: datetime | None,
        delay: float | None,
        unique_key: str | None = None,
        tenant: str | None = None,
        expires: float | datetime | None = None,
        concurrency_key: str | None = None,
        args: Mapping[str, Any] | None = None,
    ) -> RunOptions:
        """Validated run options; a known task lends its defaults (and derives the concurrency
        key from a single run's ``args`` when it declares one and none is given)."""
        check_task_name(task)
        known = self.tasks.get(task)
        if (
            queue is None
            and priority is None
            and max_attempts is None
            and run_at is None
            and delay is None
            and unique_key is None
            and tenant is None
            and expires is None
            and concurrency_key is None
            and (known is None or known.concurrency_key is None)
        ):
            return self._defaults_of(known)
        return RunOptions(
            queue=queue if queue is not None else (known.queue if known else "default"),
            priority=priority if priority is not None else (known.priority if known else 0),
            max_attempts=max_attempts if max_attempts is not None else (known.max_attempts if known else 3),
            run_at=run_at,
            delay=0.0 if delay is None else delay,
            unique_key=unique_key,
            tenant=tenant,
            expires=expires,
            concurrency_key=(
                known.key_for(args)
                if concurrency_key is None and known is not None and isinstance(args, Mapping)
                else concurrency_key
            ),
        )

    def _defaults_of(self, known: Task[Any, Any] | None) -> RunOptions:
        """The options of a call that sets none: the task's defaults (the columns' for a task
        not registered here), validated once rather than on every call (4.6 us of ~140)."""
        key = (known.queue, known.priority, known.max_attempts) if known is not None else ("default", 0, 3)
        options = self._task_options.get(key)
        if options is None:
            options = self._task_options[key] = RunOptions(queue=key[0], priority=key[1], max_attempts=key[2])
        return options

    def _encode(self, task: str, args: Mapping[str, Any] | None) -> str:
        """Args as JSON text, checked against the task's signature when the task is known here."""
        known = self.tasks.get(task)
        if known is not None and (type(args) is dict or isinstance(args, Mapping)):
            known.check_args(args)
        return encode_args_text(args)

    def enqueue(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        unique_key: str | None = None,
        tenant: str | None = None,
        expires: float | datetime | None = None,
        concurrency_key: str | None = None,
        conn: Connectable | None = None,
    ) -> int:
        """Queue one run; returns its id. With ``conn`` (a psycopg connection, or a SQLAlchemy 2
        session or connection on the psycopg driver), the insert joins that connection's transaction.
        ``expires`` (seconds from now, or an aware datetime): a run not started by then never
        starts, and ends 'cancelled' with the reason 'expired'.

        ``unique_key`` makes the call idempotent: a second enqueue with the same key returns the
        first run's id and inserts nothing (:meth:`enqueue_unique` also says which happened).
        ``concurrency_key`` (default: what the task's ``concurrency_key`` derives from ``args``):
        with the queue's ``key_max_running``, runs of one key never run more at once than that.
        """
        return self.enqueue_unique(
            task,
            args,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            unique_key=unique_key,
            tenant=tenant,
            expires=expires,
            concurrency_key=concurrency_key,
            conn=conn,
        )[0]

    def enqueue_unique(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        unique_key: str | None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        tenant: str | None = None,
        expires: float | datetime | None = None,
        concurrency_key: str | None = None,
        conn: Connectable | None = None,
    ) -> tuple[int, bool]:
        """Like :meth:`enqueue`, returning ``(run id, created)``: ``created`` is False when
        ``unique_key`` already belonged to a run, whose id is returned."""
        options = self._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            unique_key=unique_key,
            tenant=tenant,
            expires=expires,
            concurrency_key=concurrency_key,
            args={} if args is None else args,
        )
        encoded = self._encode(task, args)
        if conn is None and self.default_connection() is None:
            return self._insert_pooled(task, encoded, options)
        with self._connection(conn) as c, _database_rejections():
            return _enqueue.insert_run(c, task, encoded, options)

    def _insert_pooled(self, task: str, encoded: str, options: RunOptions) -> tuple[int, bool]:
        """:func:`insert_run` on a pooled connection, checked out without the context managers
        of ``pool.connection()`` and :meth:`_connection` (autocommit: there is no transaction to
        end): 3.1 us instead of 6.5, and no 1.4 us for :func:`_database_rejections`."""
        pool = self.pool
        conn = pool.getconn()
        try:
            return _enqueue.insert_run(conn, task, encoded, options)
        except _REJECTED as exc:
            raise _rejection(exc) from None
        finally:
            pool.putconn(conn)

    async def enqueue_async(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        unique_key: str | None = None,
        tenant: str | None = None,
        expires: float | datetime | None = None,
        concurrency_key: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> int:
        """The asyncio twin of :meth:`enqueue`."""
        return (
            await self.enqueue_unique_async(
                task,
                args,
                queue=queue,
                priority=priority,
                max_attempts=max_attempts,
                run_at=run_at,
                delay=delay,
                unique_key=unique_key,
                tenant=tenant,
                expires=expires,
                concurrency_key=concurrency_key,
                conn=conn,
            )
        )[0]

    async def enqueue_unique_async(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        unique_key: str | None,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        tenant: str | None = None,
        expires: float | datetime | None = None,
        concurrency_key: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> tuple[int, bool]:
        """The asyncio twin of :meth:`enqueue_unique`."""
        options = self._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            unique_key=unique_key,
            tenant=tenant,
            expires=expires,
            concurrency_key=concurrency_key,
            args={} if args is None else args,
        )
        encoded = self._encode(task, args)
        if conn is None:
            return await self._insert_pooled_async(task, encoded, options)
        with _database_rejections():
            return await _enqueue.insert_run_async(conn, task, encoded, options)

    async def _insert_pooled_async(self, task: str, encoded: str, options: RunOptions) -> tuple[int, bool]:
        """The asyncio twin of :meth:`_insert_pooled`."""
        pool = await self.async_pool()
        conn = await pool.getconn()
        try:
            return await _enqueue.insert_run_async(conn, task, encoded, options)
        except _REJECTED as exc:
            raise _rejection(exc) from None
        finally:
            await pool.putconn(conn)

    async def enqueue_returning_async(
        self,
        task: str,
        args: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        tenant: str | None = None,
        concurrency_key: str | None = None,
        conn: psycopg.AsyncConnection,
    ) -> dict[str, Any]:
        """Queue one run and return its row (the columns :func:`pgsched.runs.get_run` reads) from
        the same statement: the REST API's POST /runs, which answers with the run."""
        options = self._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            tenant=tenant,
            concurrency_key=concurrency_key,
            args=args,
        )
        encoded = self._encode(task, args)
        with _database_rejections():
            return await _enqueue.insert_run_returning_async(conn, task, encoded, options)

    def apply(
        self,
        task: str,
        args: Mapping[str, Any],
        *,
        task_id: str | None,
        conn: Connectable | None = None,
        **options: Any,
    ) -> RunHandle:
        """:meth:`enqueue_unique` with ``task_id`` as the key, refusing a key another task's run
        holds (Celery's task_id names one call of one task); returns the run's handle."""
        with self._connection(conn) as c:
            run_id, created = self.enqueue_unique(task, args, unique_key=task_id, conn=c, **options)
            if not created:
                holder = RunHandle(self, run_id).state_on(c)
                if holder.task != task:
                    raise InvalidInput(
                        f"task_id {task_id!r} already belongs to run {run_id} of task {holder.task!r}, "
                        f"not {task!r}: nothing was queued"
                    )
        return RunHandle(self, run_id)

    def workflow(self, name: str, *, tenant: str | None = None) -> Workflow:
        """A new workflow to build with ``add`` and write with ``enqueue`` (pgsched/canvas.py)."""
        from pgsched.canvas import Workflow

        return Workflow(self, name, tenant=tenant)

    def run(self, run_id: int) -> RunHandle:
        """The handle of any run, by id (Celery's ``AsyncResult(id)``)."""
        return RunHandle(self, run_id)

    def _encode_many(self, task: str, all_args: Sequence[Mapping[str, Any]]) -> list[str]:
        """Each args object as JSON text, checked like a single enqueue's."""
        if isinstance(all_args, (str, bytes, Mapping)) or not isinstance(all_args, Sequence):
            raise InvalidInput("enqueue_many takes a list of args objects")
        known = self.tasks.get(task)
        encoded = []
        for index, args in enumerate(all_args):
            try:
                # type() first: isinstance against typing.Mapping costs ~1 us, a tenth of a bulk row.
                if known is not None and (type(args) is dict or isinstance(args, Mapping)):
                    known.check_args(args)
                encoded.append(encode_args_text(args))
            except InvalidInput as exc:
                raise type(exc)(f"args[{index}]: {exc}") from None
        return encoded

    def _keys_many(
        self, task: str, all_args: Sequence[Mapping[str, Any]], concurrency_key: str | None
    ) -> list[str | None] | None:
        """Each run's derived concurrency key (None: every run has the options' key)."""
        known = self.tasks.get(task)
        if concurrency_key is not None or known is None or known.concurrency_key is None:
            return None
        keys: list[str | None] = []
        for index, args in enumerate(all_args):
            try:
                key = known.key_for(args)
                check_concurrency_key(key)
            except InvalidInput as exc:
                raise type(exc)(f"args[{index}]: {exc}") from None
            keys.append(key)
        return keys

    def enqueue_many(
        self,
        task: str,
        all_args: Sequence[Mapping[str, Any]],
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        tenant: str | None = None,
        concurrency_key: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> list[int]:
        """Queue one run per args object with COPY, all or none; returns the ids in order.
        ``concurrency_key`` is every run's; without one, a task that derives keys derives each."""
        options = self._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            tenant=tenant,
            concurrency_key=concurrency_key,
        )
        encoded = self._encode_many(task, all_args)
        keys = self._keys_many(task, all_args, concurrency_key)
        with self._connection(conn) as c, _database_rejections():
            return _enqueue.insert_runs(c, task, encoded, options, keys)

    async def enqueue_many_async(
        self,
        task: str,
        all_args: Sequence[Mapping[str, Any]],
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        run_at: datetime | None = None,
        delay: float | None = None,
        tenant: str | None = None,
        concurrency_key: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[int]:
        """The asyncio twin of :meth:`enqueue_many`."""
        options = self._options(
            task,
            queue=queue,
            priority=priority,
            max_attempts=max_attempts,
            run_at=run_at,
            delay=delay,
            tenant=tenant,
            concurrency_key=concurrency_key,
        )
        encoded = self._encode_many(task, all_args)
        keys = self._keys_many(task, all_args, concurrency_key)
        async with self._async_connection(conn) as c:
            with _database_rejections():
                return await _enqueue.insert_runs_async(c, task, encoded, options, keys)

    # ---- connections

    @property
    def pool(self) -> ConnectionPool:
        """The sync pool (autocommit connections), opened on first use."""
        with self._lock:
            if self._pool is None:
                pool = ConnectionPool(
                    self.dsn,
                    min_size=1,
                    max_size=self._pool_max_size,
                    kwargs=connection_kwargs(self.pgbouncer, autocommit=True),
                    open=False,
                    name="pgsched",
                )
                _open_with_its_first_connection(pool)
                self._pool = pool
            return self._pool

    async def async_pool(self) -> AsyncConnectionPool:
        """The asyncio pool of the running event loop, opened on first use."""
        loop = asyncio.get_running_loop()
        pool = self._async_pools.get(loop)
        if pool is None:
            pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self._pool_max_size,
                kwargs=connection_kwargs(self.pgbouncer, autocommit=True),
                open=False,
                name="pgsched-async",
            )
            self._async_pools[loop] = pool
            try:
                await pool.open(wait=True)  # as _open_with_its_first_connection says why
            except BaseException:
                del self._async_pools[loop]
                await pool.close()
                raise
        return pool

    def default_connection(self) -> psycopg.Connection[Any] | None:
        """The connection an enqueue without ``conn`` writes on; None: a pooled one. A framework's
        App overrides it to join the framework's open transaction (``contrib.django.DjangoApp``)."""
        return None

    @contextmanager
    def _connection(self, conn: Connectable | None) -> Iterator[psycopg.Connection]:
        conn = self.default_connection() if conn is None else conn
        if isinstance(conn, psycopg.Connection):
            yield conn
        elif conn is not None:
            from pgsched.contrib.sqlalchemy import driver_connection

            yield driver_connection(conn)
        else:
            with self.pool.connection() as pooled:
                yield pooled

    @asynccontextmanager
    async def _async_connection(self, conn: psycopg.AsyncConnection | None) -> AsyncIterator[psycopg.AsyncConnection]:
        if conn is not None:
            yield conn
        else:
            async with (await self.async_pool()).connection() as pooled:
                yield pooled

    def close(self) -> None:
        """Close the sync pool (async pools close with :meth:`aclose`)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    async def aclose(self) -> None:
        pool = self._async_pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            await pool.close()


def _open_with_its_first_connection(pool: ConnectionPool) -> None:
    """Open ``pool`` and wait for its first connection. Opened without waiting, the first
    getconn finds no connection ready, and psycopg_pool adds one for every client that waits:
    a caller that enqueues one run after another then holds two connections, and the pool,
    first in first out, hands it each in turn, so every statement runs on the backend that
    sat idle during the last one. Measured (benchmarks.enqueue, before/after in one run, 7
    rounds, synchronous_commit off so the disk's flush does not hide it): App.enqueue's server
    CPU 362 -> 288 us a call, its client CPU 183 -> 143 us, its wall 1,271 -> 1,012 us; the
    async and Task paths alike (benchmarks/results/enqueue-costs-issue-18.md)."""
    try:
        pool.open(wait=True)
    except BaseException:
        pool.close()
        raise


# DataError: also a NUL character, which jsonb (server) and text parameters (psycopg) refuse.
# ProgrammingError: a tenant quota's SQLSTATE PS429 arrives as one (psycopg knows no class for it).
_REJECTED = (
    psycopg.errors.CheckViolation,
    psycopg.errors.NotNullViolation,
    psycopg.DataError,
    psycopg.ProgrammingError,
)


def _rejection(exc: psycopg.Error) -> Exception:
    """What a refused insert is to its caller: a tenant over a quota is :class:`QuotaExceeded`,
    a row the schema's constraints reject is bad input named by its constraint, and any other
    programming error stays itself."""
    over_quota = quota_error(exc)
    if over_quota is not None:
        return over_quota
    if isinstance(exc, psycopg.ProgrammingError):
        return exc
    detail = exc.diag.constraint_name or exc.diag.message_primary or str(exc)
    if exc.diag.message_detail:
        detail += f" ({exc.diag.message_detail})"
    return InvalidInput(f"the database rejected the run: {detail}")


@contextmanager
def _database_rejections() -> Iterator[None]:
    """:func:`_rejection` for the statements in the block."""
    try:
        yield
    except _REJECTED as exc:
        raise _rejection(exc) from None

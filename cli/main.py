"""`pgsched`: the root command. Commands parse, call the library, and render; errors a user
can fix print one line and exit 1 (``--debug`` shows the traceback)."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any, Optional

import psycopg
import typer
from rich.console import Group, RenderableType

from pgsched import health, quotas
from pgsched.app import App
from pgsched.checks import Thresholds
from pgsched.cli import render
from pgsched.cli.api import api as api_command
from pgsched.cli.beat import MisfireGraceOption, RetentionOption, beat, beat_options
from pgsched.cli.doctor import doctor
from pgsched.cli.jobs import jobs
from pgsched.cli.keys import keys
from pgsched.cli.options import DirectDsnOption, DsnOption, PgbouncerOption, connect, parse_args_json, parse_at
from pgsched.cli.queues import queues, tasks
from pgsched.cli.runs import runs
from pgsched.cli.tenants import tenants, usage
from pgsched.cli.workflows import workflows
from pgsched.errors import InvalidInput, PgschedError, SchemaNotReady
from pgsched.loader import EXAMPLE_APP, load_app
from pgsched.logs import LogFormat, configure_logging
from pgsched.migrate import migrate as apply_migrations
from pgsched.migrate import pending, repaired_by_migrations
from pgsched.queues import list_queues
from pgsched.worker import WorkerOptions

cli = typer.Typer(
    name="pgsched",
    help="A job queue and cron scheduler that needs nothing but PostgreSQL.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cli.add_typer(runs, name="runs")
cli.add_typer(jobs, name="jobs")
cli.add_typer(beat, name="beat")
cli.add_typer(keys, name="keys")
cli.add_typer(queues, name="queues")
cli.add_typer(tenants, name="tenants")
cli.add_typer(tasks, name="tasks")
cli.add_typer(workflows, name="workflows")
cli.command("api")(api_command)
cli.command("doctor")(doctor)
cli.command("usage")(usage)

_debug = False

AppOption = Annotated[
    Optional[str], typer.Option("--app", help="Your App as module:attribute (default: the example app)")
]
LogLevelOption = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")]
LogFormatOption = Annotated[str, typer.Option("--log-format", help="text or json (JSON lines)")]


@cli.callback()
def root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors")] = False) -> None:
    global _debug
    _debug = debug


@cli.command()
def migrate(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if a migration is pending; change nothing")] = False,
    post_deploy: Annotated[
        bool,
        typer.Option(
            "--post-deploy",
            help="Also apply the migrations that remove what the previous release uses: run it once every "
            "pgsched process (workers, beats, API) runs this release",
        ),
    ] = False,
    dsn: DsnOption = None,
) -> None:
    """Apply pending schema migrations (one transaction, safe to run concurrently)."""
    with connect(dsn) as conn:
        if check:
            todo = pending(conn, post_deploy=post_deploy)
            if todo:
                raise SchemaNotReady(
                    f"{len(todo)} migration(s) pending: " + ", ".join(f"{m.version}_{m.name}" for m in todo)
                )
            render.info("schema is up to date")
            return
        applied = apply_migrations(conn, post_deploy=post_deploy)
        repairs = repaired_by_migrations(conn, applied)
        waiting = pending(conn, post_deploy=True)
    render.info(
        f"applied {len(applied)} migration(s)" + "".join(f"\n  {m.version}_{m.name}" for m in applied)
        if applied
        else "schema is up to date"
    )
    for row in repairs:
        render.info(
            f"{row['repaired_by']} repaired {row['rows']} {row['table_name']} row(s) that broke its rules "
            f"(first ids {row['first_ids']}): `pgsched doctor` lists them, pgsched.repaired_rows has the originals"
        )
    if waiting:
        render.info(
            "waiting for `pgsched migrate --post-deploy` once every pgsched process runs this release: "
            + ", ".join(f"{m.version}_{m.name}" for m in waiting)
        )


def _worker_options(
    concurrency: int,
    queues: str | None,
    poll_interval: float,
    lease: float,
    grace: float,
    fallback_poll_interval: float = WorkerOptions.fallback_poll_interval_s,
    pool: str = WorkerOptions.pool,
    processes: int | None = None,
    app_path: str | None = None,
) -> WorkerOptions:
    try:
        return WorkerOptions(
            concurrency=concurrency,
            poll_interval_s=poll_interval,
            lease_s=lease,
            grace_s=grace,
            fallback_poll_interval_s=fallback_poll_interval,
            pool=pool,
            processes=processes,
            app_path=app_path,
            queues=[q.strip() for q in queues.split(",") if q.strip()] if queues else None,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


def _check_log_options(level: str, fmt: str) -> LogFormat:
    if level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"--log-level must be debug, info, warning or error, got {level!r}")
    if fmt not in ("text", "json"):
        raise InvalidInput(f"--log-format must be text or json, got {fmt!r}")
    return fmt  # type: ignore[return-value]


@cli.command()
def worker(
    app: AppOption = None,
    concurrency: Annotated[int, typer.Option(help="Runs in flight at once")] = WorkerOptions.concurrency,
    pool: Annotated[
        str,
        typer.Option(
            help="Where sync tasks run unless their pool= says: thread, or process "
            "(child processes: hard timeout and cancel)",
        ),
    ] = WorkerOptions.pool,
    processes: Annotated[
        Optional[int], typer.Option(help="Size of the process pool (default: the CPU count)", show_default=False)
    ] = None,
    queues: Annotated[
        Optional[str], typer.Option(help="Comma-separated queues (default: default + the app's task queues)")
    ] = None,
    poll_interval: Annotated[
        float, typer.Option(help="Seconds between polls when no notification arrives")
    ] = WorkerOptions.poll_interval_s,
    fallback_poll_interval: Annotated[
        float,
        typer.Option(
            help="Behind PgBouncer without a direct DSN (no LISTEN): seconds between polls",
        ),
    ] = WorkerOptions.fallback_poll_interval_s,
    lease: Annotated[
        float, typer.Option(help="Seconds a claimed run's lease lasts (the heartbeat renews it)")
    ] = WorkerOptions.lease_s,
    grace: Annotated[
        float, typer.Option(help="Seconds running tasks get to finish after SIGTERM")
    ] = WorkerOptions.grace_s,
    with_beat: Annotated[bool, typer.Option("--beat", help="Also run a beat in this process")] = False,
    lock_interval: Annotated[float, typer.Option(help="With --beat: seconds between tries for the leader lock")] = 0.5,
    retention: RetentionOption = "7d",
    misfire_grace: MisfireGraceOption = 5.0,
    log_level: LogLevelOption = "info",
    log_format: LogFormatOption = "text",
    dsn: DsnOption = None,
    direct_dsn: DirectDsnOption = None,
    pgbouncer: PgbouncerOption = None,
) -> None:
    """Run a worker: claim runs from the queues and execute them."""
    from pgsched.worker import run_worker

    fmt = _check_log_options(log_level, log_format)
    options = _worker_options(
        concurrency,
        queues,
        poll_interval,
        lease,
        grace,
        fallback_poll_interval,
        pool=pool,
        processes=processes,
        app_path=app or EXAMPLE_APP,
    )
    hosted_beat = beat_options(lock_interval, retention, misfire_grace) if with_beat else None
    loaded = load_app(app)
    if dsn:
        loaded.use_dsn(dsn)
    loaded.use_pooler(direct_dsn=direct_dsn, pgbouncer=pgbouncer)
    configure_logging(log_level, fmt)
    _prepare_database(loaded)
    run_worker(loaded, options, hosted_beat)


def _prepare_database(app: App) -> None:
    """Refuse to start on an out-of-date schema; sync the app's @app.periodic schedules."""
    with connect(app.dsn) as conn:
        todo = pending(conn)
        if todo:
            raise SchemaNotReady(
                f"the database schema is not current ({len(todo)} migration(s) pending): run `pgsched migrate` first"
            )
        app.sync_periodic_jobs(conn)


@cli.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="Task name")],
    args: Annotated[str, typer.Option("--args", help="Args as a JSON object")] = "{}",
    queue: Annotated[Optional[str], typer.Option()] = None,
    priority: Annotated[Optional[int], typer.Option(help="-100..100, lower runs first")] = None,
    delay: Annotated[Optional[float], typer.Option(help="Seconds from now")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="ISO 8601 time with timezone")] = None,
    max_attempts: Annotated[Optional[int], typer.Option()] = None,
    unique_key: Annotated[Optional[str], typer.Option(help="Idempotency key")] = None,
    tenant: Annotated[Optional[str], typer.Option(help="The tenant the run belongs to (its quotas apply)")] = None,
    app: Annotated[
        Optional[str], typer.Option("--app", help="module:attribute, to check args against the task")
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Queue one run and print its id."""
    target = load_app(app) if app else App()
    if delay is not None and at is not None:
        raise InvalidInput("give --delay or --at, not both")
    parsed_args, run_at = parse_args_json(args), parse_at(at)
    # One plain connection, not the app's pool: the pool would retry an unreachable database
    # for 30 s, logging every attempt, before failing.
    with connect(dsn) as conn:
        run_id = target.enqueue(
            task,
            parsed_args,
            queue=queue,
            priority=priority,
            delay=delay,
            run_at=run_at,
            max_attempts=max_attempts,
            unique_key=unique_key,
            tenant=tenant,
            conn=conn,
        )
    render.info(str(run_id))


STATS_COLUMNS = (
    "queue",
    "queued",
    "due",
    "running",
    "failed",
    "succeeded_last_minute",
    "failed_last_minute",
    "succeeded_last_hour",
    "oldest_queued_age_s",
    "paused",
    "max_running",
    "rate",
    "held_back",
)
# Each tenant with quotas, as `tenants list` and /metrics show them: index counts and the day's
# counter, nothing read from the history.
TENANT_STATS_COLUMNS = ("name", "max_queued", "queued", "max_running", "running", "runs_per_day", "created_today")


@cli.command()
def stats(
    watch: Annotated[bool, typer.Option("--watch", help="Refresh every second until Ctrl-C")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the queues as JSON")] = False,
    horizon_warning_s: Annotated[
        float, typer.Option(help="Warn when a transaction has been open this many seconds (it holds vacuum back)")
    ] = Thresholds().transaction_warn_s,
    dsn: DsnOption = None,
) -> None:
    """Queue depth, running and failed runs, throughput and age per queue; each tenant with quotas
    (its quotas, queued, running, created today); a warning (on stderr) when a transaction holds
    vacuum's horizon back. ``--json`` prints the queues only, as before (the tenants' JSON is
    ``pgsched tenants list --json``)."""
    if not horizon_warning_s >= 0:
        raise InvalidInput(f"--horizon-warning-s must be 0 or more, got {horizon_warning_s:g}")
    with connect(dsn) as conn:
        if not watch:
            if json_output:
                render.print_json(list_queues(conn))
            else:
                render.print_table(list_queues(conn), STATS_COLUMNS, title="queues")
                _print_tenants(quotas.list_tenants(conn))
            _warn_of_a_pinned_horizon(conn, horizon_warning_s)
            return
        from rich.live import Live

        with Live(_stats_view(conn), console=render.out) as live:
            while True:
                time.sleep(1)
                live.update(_stats_view(conn))


def _print_tenants(rows: list[dict[str, Any]]) -> None:
    """The tenants' table, when some tenant has quotas (most databases have none: no line)."""
    if rows:
        render.print_table(rows, TENANT_STATS_COLUMNS, title="tenants")


def _stats_view(conn: psycopg.Connection) -> RenderableType:
    """What --watch shows: the queues, then the tenants with quotas if any."""
    queues = render.table(list_queues(conn), STATS_COLUMNS, "queues")
    tenants = quotas.list_tenants(conn)
    return Group(queues, render.table(tenants, TENANT_STATS_COLUMNS, "tenants")) if tenants else queues


def _warn_of_a_pinned_horizon(conn: psycopg.Connection, after_s: float) -> None:
    """Say it before it hurts: while a transaction is open, vacuum cannot remove the runs
    claimed and finished since, and the table and its indexes grow (docs/operations/autovacuum.md)."""
    oldest = health.oldest_transaction(conn)
    if oldest.holder is None or oldest.age_s < after_s:
        return
    vacuum = health.run_table_vacuum_state(conn)
    render.warning(
        f"a transaction open for {oldest.age_s:.0f} s holds vacuum's horizon back ({oldest.holder}): "
        f"{vacuum.dead_tuples} dead runs wait for vacuum, the claim index is {vacuum.claim_index_bytes // 1024} KB. "
        "End it (pg_terminate_backend) if it is not yours to keep; see `pgsched doctor`."
    )


@cli.command()
def dev(
    app: AppOption = None,
    concurrency: Annotated[int, typer.Option(help="Runs in flight at once")] = WorkerOptions.concurrency,
    run_for: Annotated[
        Optional[float], typer.Option(help="Stop after this many seconds (default: until Ctrl-C)")
    ] = None,
    api_port: Annotated[
        Optional[int],
        typer.Option(
            help="Port of the REST API on 127.0.0.1 (default: 8000, or a free one if taken; 0: any free port)",
            show_default=False,
        ),
    ] = None,
    no_api: Annotated[bool, typer.Option("--no-api", help="Do not serve the REST API")] = False,
    log_level: LogLevelOption = "info",
    dsn: DsnOption = None,
) -> None:
    """Quick start: embedded PostgreSQL (no DSN needed), schema applied, a worker, and the REST API
    with an admin key printed for the session."""
    from pgsched.dev import DevApi, run_dev

    _check_log_options(log_level, "text")
    if api_port is not None and not 0 <= api_port <= 65535:
        raise InvalidInput(f"--api-port must be between 0 and 65535, got {api_port}")
    options = _worker_options(concurrency, None, WorkerOptions.poll_interval_s, WorkerOptions.lease_s, 5.0)
    loaded = load_app(app)
    if dsn:
        loaded.use_dsn(dsn)
    configure_logging(log_level, "text")
    run_dev(loaded, options, run_for_s=run_for, api=None if no_api else DevApi(port=api_port))


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="pgsched")  # exits by itself; usage errors print and exit 2
    except (PgschedError, psycopg.OperationalError, psycopg.errors.UndefinedTable) as exc:
        if _debug:
            raise
        render.error(_describe(exc))
        sys.exit(1)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, psycopg.errors.UndefinedTable):
        return "the pgsched schema is missing in this database: run `pgsched migrate` first"
    if isinstance(exc, psycopg.OperationalError):
        first_line = (str(exc).strip().splitlines() or ["unknown error"])[0]
        return f"cannot reach the database: {first_line}"
    return str(exc)


if __name__ == "__main__":
    main()

"""`pgsched beat`: run a beat (it leads when it holds the lock); `pgsched beat status`: who leads;
`pgsched beat import-celery`: a Celery app's beat_schedule as pgsched jobs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pgsched.beat import BeatOptions, check_leader_lock_possible, leader_status, run_beat
from pgsched.celery_import import import_entries, load_celery_app, read_beat_schedule
from pgsched.cli import render
from pgsched.cli.options import DirectDsnOption, DsnOption, PgbouncerOption, connect, parse_duration
from pgsched.config import resolve_direct_dsn, resolve_dsn, resolve_pgbouncer
from pgsched.errors import InvalidInput
from pgsched.loader import load_app
from pgsched.logs import configure_logging

beat = typer.Typer(help="Run the beat, or see who leads it.", invoke_without_command=True)

LockIntervalOption = Annotated[float, typer.Option(help="Seconds between a follower's tries for the leader lock")]
RetentionOption = Annotated[str, typer.Option(help="Prune finished runs older than this (e.g. 7d, 12h)")]
MisfireGraceOption = Annotated[float, typer.Option(help="Seconds after which a fire time counts as missed")]


def beat_options(lock_interval: float, retention: str, misfire_grace: float) -> BeatOptions:
    try:
        return BeatOptions(
            lock_interval_s=lock_interval,
            retention_s=parse_duration(retention, "--retention"),
            misfire_grace_s=misfire_grace,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


@beat.callback()
def run(
    ctx: typer.Context,
    app: Annotated[
        Optional[str], typer.Option("--app", help="module:attribute whose @app.periodic jobs to sync")
    ] = None,
    lock_interval: LockIntervalOption = BeatOptions.lock_interval_s,
    retention: RetentionOption = "7d",
    misfire_grace: MisfireGraceOption = BeatOptions.misfire_grace_s,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    dsn: DsnOption = None,
    direct_dsn: DirectDsnOption = None,
    pgbouncer: PgbouncerOption = None,
) -> None:
    """Run a beat: it fires scheduled jobs while it leads (one leader at a time)."""
    if ctx.invoked_subcommand is not None:
        return
    options = beat_options(lock_interval, retention, misfire_grace)
    direct = resolve_direct_dsn(direct_dsn)
    pooled = resolve_pgbouncer(pgbouncer, direct_dsn=direct)
    check_leader_lock_possible(direct, pooled)
    configure_logging(log_level, "text")
    resolved = resolve_dsn(dsn)
    if app:
        with connect(resolved) as conn:
            load_app(app).sync_periodic_jobs(conn)
    run_beat(resolved, options, direct_dsn=direct, pgbouncer=pooled)


@beat.command("status")
def status(dsn: DsnOption = None) -> None:
    """Which beat leads, since when."""
    with connect(dsn) as conn:
        leader = leader_status(conn)
    if leader is None:
        render.info("no beat leads")
        return
    render.print_record(leader, title="beat leader")


IMPORT_COLUMNS = ("name", "task", "schedule", "args", "queue", "action")


@beat.command("import-celery")
def import_celery(
    celery_app: Annotated[
        str, typer.Argument(metavar="MODULE:CELERY_APP", help="The Celery app, e.g. proj.celery:app")
    ],
    app: Annotated[
        Optional[str],
        typer.Option("--app", help="Your pgsched App (module:attribute): its task signatures name positional args"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be created or updated; change nothing")
    ] = False,
    dsn: DsnOption = None,
) -> None:
    """Create or update a pgsched job for each entry of a Celery app's beat_schedule."""
    entries = read_beat_schedule(load_celery_app(celery_app), load_app(app) if app else None)
    with connect(dsn) as conn:
        done = import_entries(conn, entries, dry_run=dry_run)
    render.print_table(
        [entry.row() for entry in done], IMPORT_COLUMNS, title="beat_schedule (dry run)" if dry_run else "beat_schedule"
    )
    skipped = sum(entry.spec is None for entry in done)
    verb = "would import" if dry_run else "imported"
    render.info(f"{verb} {len(done) - skipped} of {len(done)} entries; {skipped} skipped")

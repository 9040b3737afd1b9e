"""`pgsched jobs …`: scheduled job definitions."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pgsched import jobs as job_store
from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect, parse_args_json, parse_at
from pgsched.jobs import JobSpec
from pgsched.schedule import Schedule
from pgsched.tenants import check_tenant

jobs = typer.Typer(help="Scheduled jobs: cron, interval and one-off.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Job name")]
# Job names are unique per tenant: --tenant says whose (without it, the job without a tenant,
# else the only tenant's job of that name).
TenantOption = Annotated[
    Optional[str],
    typer.Option("--tenant", help="The tenant whose job this is (names are unique per tenant)", callback=check_tenant),
]
LIST_COLUMNS = (
    "name",
    "task",
    "queue",
    "cron",
    "every_s",
    "at",
    "tz",
    "misfire",
    "enabled",
    "next_run_at",
    "last_error",
    "tenant",
)


@jobs.command("add")
def add(
    name: NameArg,
    task: Annotated[str, typer.Option("--task", help="Task to run")],
    cron: Annotated[Optional[str], typer.Option(help="Cron: 5 fields, or 6 with seconds first")] = None,
    every: Annotated[Optional[float], typer.Option(help="Interval in seconds")] = None,
    at: Annotated[Optional[str], typer.Option("--at", help="One-off: ISO 8601 time with timezone")] = None,
    tz: Annotated[str, typer.Option(help="IANA timezone the cron is read in")] = Schedule.tz,
    args: Annotated[str, typer.Option("--args", help="Args as a JSON object")] = "{}",
    # Defaults from the library's JobSpec, as the API's JobCreate takes them: one home.
    queue: Annotated[str, typer.Option()] = JobSpec.queue,
    priority: Annotated[int, typer.Option(help="-100..100, lower runs first")] = JobSpec.priority,
    max_attempts: Annotated[int, typer.Option()] = JobSpec.max_attempts,
    misfire: Annotated[
        str, typer.Option(help="coalesce, skip or all: what to do with missed fire times")
    ] = JobSpec.misfire,
    max_catchup: Annotated[
        int, typer.Option(help="With --misfire all: at most this many missed runs")
    ] = JobSpec.max_catchup,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused")] = False,
    tenant: TenantOption = None,
    dsn: DsnOption = None,
) -> None:
    """Create a job, or replace the definition of the job with this name."""
    spec = JobSpec(
        name=name,
        task=task,
        schedule=Schedule(cron=cron, every_s=every, at=parse_at(at), tz=tz),
        args=parse_args_json(args),
        queue=queue,
        priority=priority,
        max_attempts=max_attempts,
        misfire=misfire,
        max_catchup=max_catchup,
        enabled=not paused,
    )
    with connect(dsn) as conn:
        created = job_store.upsert_job(conn, spec, tenant=tenant)
        job = job_store.get_job(conn, name, tenant=tenant)
    render.info(f"job {name!r} {'created' if created else 'updated'}; next runs:")
    _print_upcoming(job)


@jobs.command("list")
def list_jobs(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False, dsn: DsnOption = None
) -> None:
    """List jobs."""
    with connect(dsn) as conn:
        rows = job_store.list_jobs(conn)
    render.print_json(rows) if json_output else render.print_table(rows, LIST_COLUMNS, title="jobs")


@jobs.command("show")
def show(
    name: NameArg,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    tenant: TenantOption = None,
    dsn: DsnOption = None,
) -> None:
    """Show a job and its next 5 fire times."""
    with connect(dsn) as conn:
        job = job_store.get_job(conn, name, tenant=tenant)
    if json_output:
        render.print_json(job)
        return
    render.print_record({k: v for k, v in job.items() if k != "upcoming"}, title=f"job {name}")
    render.info("next runs:")
    _print_upcoming(job)


def _print_upcoming(job: dict[str, Any]) -> None:
    for at in job["upcoming"]:
        render.info(f"  {at.isoformat()}")
    if not job["upcoming"]:
        render.info("  (none)")


@jobs.command("pause")
def pause(name: NameArg, tenant: TenantOption = None, dsn: DsnOption = None) -> None:
    """Stop firing a job (its missed fire times follow its misfire policy on resume)."""
    with connect(dsn) as conn:
        job_store.set_enabled(conn, name, False, tenant=tenant)
    render.info(f"job {name!r} paused")


@jobs.command("resume")
def resume(name: NameArg, tenant: TenantOption = None, dsn: DsnOption = None) -> None:
    """Fire a paused job again."""
    with connect(dsn) as conn:
        job_store.set_enabled(conn, name, True, tenant=tenant)
    render.info(f"job {name!r} resumed")


@jobs.command("delete")
def delete(name: NameArg, tenant: TenantOption = None, dsn: DsnOption = None) -> None:
    """Delete a job (its past runs stay)."""
    with connect(dsn) as conn:
        job_store.delete_job(conn, name, tenant=tenant)
    render.info(f"job {name!r} deleted")


@jobs.command("trigger")
def trigger(name: NameArg, tenant: TenantOption = None, dsn: DsnOption = None) -> None:
    """Queue one run of a job now, outside its schedule; prints the run id."""
    with connect(dsn) as conn:
        run_id = job_store.trigger_job(conn, name, tenant=tenant)
    render.info(str(run_id))

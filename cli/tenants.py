"""`pgsched tenants …`: each tenant's quotas (list, set), and `pgsched usage`: usage per tenant
and UTC day."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pgsched import quotas
from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect
from pgsched.queue_settings import KEEP

tenants = typer.Typer(
    help="Tenant quotas: at most N runs queued, at most N runs created per UTC day, at most N running.",
    no_args_is_help=True,
)

LIST_COLUMNS = ("name", "max_queued", "runs_per_day", "max_running", "queued", "running", "created_today", "updated_at")
USAGE_COLUMNS = ("day", "tenant", "created", "started", "succeeded", "failed", "cancelled", "task_s")
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON")]


@tenants.command("list")
def list_quotas(json_output: JsonOption = False, dsn: DsnOption = None) -> None:
    """Every tenant with quotas: its quotas, queued runs and runs created today (UTC)."""
    with connect(dsn) as conn:
        rows = quotas.list_tenants(conn)
    render.print_json(rows) if json_output else render.print_table(rows, LIST_COLUMNS, title="tenants")


@tenants.command("set")
def set_quotas(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The tenant")],
    max_queued: Annotated[
        Optional[str], typer.Option("--max-queued", help="At most N of its runs queued at once; none clears")
    ] = None,
    runs_per_day: Annotated[
        Optional[str], typer.Option("--runs-per-day", help="At most N runs created per UTC day; none clears")
    ] = None,
    max_running: Annotated[
        Optional[str],
        typer.Option(
            "--max-running", help="At most N of its runs running at once, over all queues and workers; none clears"
        ),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Change a tenant's quotas (those not given stay as they are)."""
    queued = KEEP if max_queued is None else quotas.parse_quota("max_queued", max_queued)
    per_day = KEEP if runs_per_day is None else quotas.parse_quota("runs_per_day", runs_per_day)
    running = KEEP if max_running is None else quotas.parse_quota("max_running", max_running)
    quotas.check_tenant_name(name)
    with connect(dsn) as conn:
        row = quotas.set_tenant(conn, name, max_queued=queued, runs_per_day=per_day, max_running=running)
    render.print_record(row, title=f"tenant {row['name']}")


def usage(
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="One tenant (default: all)")] = None,
    since: Annotated[
        Optional[str], typer.Option("--since", help="First UTC day, YYYY-MM-DD (default: this month's 1st)")
    ] = None,
    json_output: JsonOption = False,
    dsn: DsnOption = None,
) -> None:
    """Usage per tenant and UTC day: runs created, started, succeeded, failed, cancelled, task seconds."""
    first_day = quotas.parse_since(since)
    if tenant is not None:
        quotas.check_tenant_name(tenant)
    with connect(dsn) as conn:
        rows = quotas.list_usage(conn, tenant=tenant, since=first_day)
    render.print_json(rows) if json_output else render.print_table(rows, USAGE_COLUMNS, title="usage")

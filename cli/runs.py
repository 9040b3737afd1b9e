"""`pgsched runs …`: list, show, retry and cancel runs."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect, parse_at
from pgsched.runs import cancel_run, get_run, list_runs, parse_args_filter, retry_run

runs = typer.Typer(help="Inspect and steer runs.", no_args_is_help=True)

LIST_COLUMNS = ("id", "task", "queue", "status", "attempt", "max_attempts", "run_at", "finished_at")


@runs.command("list")
def list_(
    status: Annotated[
        Optional[str], typer.Option(help="waiting, queued, running, succeeded, failed or cancelled")
    ] = None,
    queue: Annotated[Optional[str], typer.Option()] = None,
    task: Annotated[Optional[str], typer.Option()] = None,
    job: Annotated[Optional[str], typer.Option(help="Runs of the scheduled job with this name")] = None,
    created_after: Annotated[Optional[str], typer.Option(help="ISO 8601 with timezone; inclusive")] = None,
    created_before: Annotated[Optional[str], typer.Option(help="ISO 8601 with timezone; exclusive")] = None,
    finished_after: Annotated[Optional[str], typer.Option(help="ISO 8601 with timezone; inclusive")] = None,
    finished_before: Annotated[Optional[str], typer.Option(help="ISO 8601 with timezone; exclusive")] = None,
    error_type: Annotated[Optional[str], typer.Option(help="The type of the last error, e.g. TimeoutError")] = None,
    args: Annotated[
        Optional[str],
        typer.Option("--args", help="Runs whose args contain this JSON object, e.g. '{\"customer\": 42}'"),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """List runs, newest first."""
    created = parse_at(created_after, "--created-after"), parse_at(created_before, "--created-before")
    finished = parse_at(finished_after, "--finished-after"), parse_at(finished_before, "--finished-before")
    with connect(dsn) as conn:
        rows = list_runs(
            conn,
            status=status,
            queue=queue,
            task=task,
            job=job,
            limit=limit,
            created_after=created[0],
            created_before=created[1],
            finished_after=finished[0],
            finished_before=finished[1],
            error_type=error_type,
            args=None if args is None else parse_args_filter(args),
        )
    if json_output:
        render.print_json(rows)
    else:
        render.print_table(rows, LIST_COLUMNS, title="runs")


@runs.command("show")
def show(
    run_id: Annotated[int, typer.Argument(metavar="ID")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """Show one run with its result and every failed attempt."""
    with connect(dsn) as conn:
        run = get_run(conn, run_id)
    if json_output:
        render.print_json(run)
    else:
        render.print_run(run)


@runs.command("retry")
def retry(run_id: Annotated[int, typer.Argument(metavar="ID")], dsn: DsnOption = None) -> None:
    """Queue a failed or cancelled run again, now."""
    with connect(dsn) as conn:
        retry_run(conn, run_id)
    render.info(f"run {run_id} queued again")


@runs.command("cancel")
def cancel(run_id: Annotated[int, typer.Argument(metavar="ID")], dsn: DsnOption = None) -> None:
    """Cancel a run: a queued one at once, a running one by telling its worker to stop it."""
    with connect(dsn) as conn:
        status = cancel_run(conn, run_id)
    render.info(
        f"run {run_id} cancelled"
        if status == "cancelled"
        else f"run {run_id} is running: its worker was asked to stop it"
    )

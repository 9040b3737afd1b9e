"""`pgsched queues …`: the settings of each queue (list, set, pause, resume)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pgsched import queue_settings
from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect

queues = typer.Typer(
    help="Queue settings: pause a queue, limit how many of its runs run at once.", no_args_is_help=True
)

LIST_COLUMNS = ("name", "paused", "max_running", "queued", "running", "updated_at")
NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The queue")]


def _print_settings(row: dict[str, Any]) -> None:
    render.print_record(row, title=f"queue {row['name']}")


@queues.command("list")
def list_settings(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False, dsn: DsnOption = None
) -> None:
    """Every queue with runs or settings: paused, max_running, queued and running runs."""
    with connect(dsn) as conn:
        rows = queue_settings.list_queue_settings(conn)
    render.print_json(rows) if json_output else render.print_table(rows, LIST_COLUMNS, title="queues")


@queues.command("set")
def set_settings(
    name: NameArgument,
    max_running: Annotated[
        Optional[str],
        typer.Option("--max-running", help="At most N of its runs running at once, over all workers; none clears"),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Change a queue's settings (those not given stay as they are)."""
    limit = queue_settings.KEEP if max_running is None else queue_settings.parse_max_running(max_running)
    with connect(dsn) as conn:
        _print_settings(queue_settings.set_queue_settings(conn, name, max_running=limit))


@queues.command("pause")
def pause(name: NameArgument, dsn: DsnOption = None) -> None:
    """Workers claim none of the queue's runs until it is resumed; enqueueing still works."""
    with connect(dsn) as conn:
        _print_settings(queue_settings.set_queue_settings(conn, name, paused=True))


@queues.command("resume")
def resume(name: NameArgument, dsn: DsnOption = None) -> None:
    """Workers claim the queue's runs again."""
    with connect(dsn) as conn:
        _print_settings(queue_settings.set_queue_settings(conn, name, paused=False))

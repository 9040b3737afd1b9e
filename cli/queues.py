"""`pgsched queues …` and `pgsched tasks …`: the settings of each queue and each task (list,
set, pause, resume). A task's settings apply to its runs in every queue."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pgsched import queue_settings
from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect

queues = typer.Typer(
    help="Queue settings: pause a queue, limit how many of its runs run at once and how fast they start.",
    no_args_is_help=True,
)
tasks = typer.Typer(
    help="Task settings, over every queue: pause a task, limit how many of its runs run at once and how fast.",
    no_args_is_help=True,
)

LIST_COLUMNS = (
    "name",
    "paused",
    "max_running",
    "rate",
    "burst",
    "key_max_running",
    "fair",
    "queued",
    "running",
    "held_back",
)
TASK_COLUMNS = ("name", "paused", "max_running", "rate", "burst", "queued", "running", "held_back")
NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="The queue")]
TaskArgument = Annotated[str, typer.Argument(metavar="NAME", help="The task")]
MaxRunningOption = Annotated[
    Optional[str],
    typer.Option("--max-running", help="At most N of its runs running at once, over all workers; none clears"),
]
RateOption = Annotated[
    Optional[str],
    typer.Option("--rate", help="At most N run starts per second, minute or hour (10/s, 100/m, 5/h); none clears"),
]
BurstOption = Annotated[
    Optional[str],
    typer.Option("--burst", help="How many may start at once after a quiet spell (default 1; needs a rate)"),
]
KeyMaxRunningOption = Annotated[
    Optional[str],
    typer.Option("--key-max-running", help="At most N runs of one concurrency key running at once; none clears"),
]

FairOption = Annotated[
    Optional[bool],
    typer.Option(
        "--fair/--no-fair",
        help="Claim its runs in turns per tenant (or concurrency key), not in id order, within a priority",
    ),
]


def _limit_changes(max_running: str | None, rate: str | None, burst: str | None) -> dict[str, Any]:
    keep = queue_settings.KEEP
    return {
        "max_running": keep if max_running is None else queue_settings.parse_max_running(max_running),
        "rate": keep if rate is None else queue_settings.parse_rate(rate),
        "burst": keep if burst is None else queue_settings.parse_limit("burst", burst, queue_settings.MAX_BURST),
    }


# ---- queues


@queues.command("list")
def list_settings(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False, dsn: DsnOption = None
) -> None:
    """Every queue with runs or settings: its limits, queued, running and held-back runs."""
    with connect(dsn) as conn:
        rows = queue_settings.list_queue_settings(conn)
    render.print_json(rows) if json_output else render.print_table(rows, LIST_COLUMNS, title="queues")


@queues.command("set")
def set_settings(
    name: NameArgument,
    max_running: MaxRunningOption = None,
    rate: RateOption = None,
    burst: BurstOption = None,
    key_max_running: KeyMaxRunningOption = None,
    fair: FairOption = None,
    dsn: DsnOption = None,
) -> None:
    """Change a queue's settings (those not given stay as they are)."""
    changes = _limit_changes(max_running, rate, burst)
    key_limit = (
        queue_settings.KEEP
        if key_max_running is None
        else queue_settings.parse_limit("key_max_running", key_max_running)
    )
    with connect(dsn) as conn:
        row = queue_settings.set_queue_settings(
            conn, name, key_max_running=key_limit, fair=queue_settings.KEEP if fair is None else fair, **changes
        )
    render.print_record(row, title=f"queue {row['name']}")


@queues.command("pause")
def pause(name: NameArgument, dsn: DsnOption = None) -> None:
    """Workers claim none of the queue's runs until it is resumed; enqueueing still works."""
    with connect(dsn) as conn:
        row = queue_settings.set_queue_settings(conn, name, paused=True)
    render.print_record(row, title=f"queue {row['name']}")


@queues.command("resume")
def resume(name: NameArgument, dsn: DsnOption = None) -> None:
    """Workers claim the queue's runs again."""
    with connect(dsn) as conn:
        row = queue_settings.set_queue_settings(conn, name, paused=False)
    render.print_record(row, title=f"queue {row['name']}")


# ---- tasks


@tasks.command("list")
def list_task_settings(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False, dsn: DsnOption = None
) -> None:
    """Every task with settings: its limits, queued, running and held-back runs."""
    with connect(dsn) as conn:
        rows = queue_settings.list_task_settings(conn)
    render.print_json(rows) if json_output else render.print_table(rows, TASK_COLUMNS, title="tasks")


@tasks.command("set")
def set_task_settings(
    name: TaskArgument,
    max_running: MaxRunningOption = None,
    rate: RateOption = None,
    burst: BurstOption = None,
    dsn: DsnOption = None,
) -> None:
    """Change a task's settings (those not given stay as they are), over every queue."""
    changes = _limit_changes(max_running, rate, burst)
    with connect(dsn) as conn:
        row = queue_settings.set_task_settings(conn, name, **changes)
    render.print_record(row, title=f"task {row['name']}")


@tasks.command("pause")
def pause_task(name: TaskArgument, dsn: DsnOption = None) -> None:
    """Workers claim none of the task's runs, in any queue, until it is resumed."""
    with connect(dsn) as conn:
        row = queue_settings.set_task_settings(conn, name, paused=True)
    render.print_record(row, title=f"task {row['name']}")


@tasks.command("resume")
def resume_task(name: TaskArgument, dsn: DsnOption = None) -> None:
    """Workers claim the task's runs again."""
    with connect(dsn) as conn:
        row = queue_settings.set_task_settings(conn, name, paused=False)
    render.print_record(row, title=f"task {row['name']}")

"""`pgsched workflows …`: list, show (the steps as a tree with their states) and cancel workflows."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect
from pgsched.workflows import cancel_workflow, get_workflow, list_workflows, step_tree

workflows = typer.Typer(
    help="Inspect and cancel workflows (chains, groups, chords, DAGs of runs).", no_args_is_help=True
)

LIST_COLUMNS = ("id", "name", "status", "steps", "unfinished", "tenant", "created_at", "finished_at")
STATE_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "waiting": "dim"}


@workflows.command("list")
def list_(
    status: Annotated[Optional[str], typer.Option(help="running, succeeded, failed or cancelled")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first")] = 50,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """List workflows, newest first."""
    with connect(dsn) as conn:
        rows = list_workflows(conn, status=status, limit=limit)
    if json_output:
        render.print_json(rows)
    else:
        render.print_table(rows, LIST_COLUMNS, title="workflows")


@workflows.command("show")
def show(
    workflow_id: Annotated[int, typer.Argument(metavar="ID")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """Show a workflow and its steps as a tree: each step under its first parent, with its state."""
    with connect(dsn) as conn:
        workflow = get_workflow(conn, workflow_id)
    if json_output:
        render.print_json(workflow)
        return
    steps = workflow.pop("steps_shown")
    render.print_record(workflow, title=f"workflow {workflow_id}")
    for line in step_tree(steps):
        render.info(_tree_line(line.depth, line.step, line.also_after))


def _tree_line(depth: int, step: dict[str, Any], also_after: list[int]) -> str:
    state = step["status"]
    when = sorted(set(step["conditions"]) - {"succeeded"})
    parts = [f"{'  ' * depth}{'└─ ' if depth else ''}run {step['id']} {step['task']}: {state}"]
    if when:
        parts.append(f"(when {', '.join(when)})")
    if also_after:
        parts.append(f"(also after {', '.join(str(p) for p in also_after)})")
    if step["cancel_reason"]:
        parts.append(f"— {step['cancel_reason']}")
    return " ".join(parts)


@workflows.command("cancel")
def cancel(workflow_id: Annotated[int, typer.Argument(metavar="ID")], dsn: DsnOption = None) -> None:
    """Cancel every step not yet ended: waiting and queued ones at once, running ones by telling
    their workers to stop them (as `runs cancel` does)."""
    with connect(dsn) as conn:
        count = cancel_workflow(conn, workflow_id)
    render.info(f"workflow {workflow_id}: {count} step(s) cancelled or asked to stop")

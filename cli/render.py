"""Everything the CLI prints goes through here (rich tables for people, JSON on request)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
err = Console(stderr=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)


def warning(message: str) -> None:
    err.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, markup=True, soft_wrap=True)


def info(message: str) -> None:
    out.print(message, highlight=False)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.1f}s"
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> Table:
    grid = Table(title=title)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        grid.add_row(*(_cell(row.get(column)) for column in columns))
    return grid


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str | None = None) -> None:
    if not rows:
        info(f"(no {title or 'rows'})")
        return
    out.print(table(rows, columns, title))


def print_json(value: Any) -> None:
    out.print_json(json.dumps(value, default=str))


def print_record(record: dict[str, Any], title: str) -> None:
    """One row as a two-column table: field, value."""
    grid = Table(show_header=False, title=title)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for key, value in record.items():
        grid.add_row(key, _cell(value))
    out.print(grid)


def print_run(run: dict[str, Any]) -> None:
    print_record({k: v for k, v in run.items() if k != "errors"}, title=f"run {run['id']}")
    for entry in run.get("errors") or []:
        out.print(
            f"[bold]attempt {entry.get('attempt')}[/] {entry.get('at')}: "
            f"[red]{entry.get('type')}[/]: {entry.get('message')}",
            highlight=False,
        )
        if entry.get("traceback"):
            out.print(entry["traceback"], highlight=False, markup=False)

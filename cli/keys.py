"""`pgsched keys …`: API keys for the REST API (create, list, revoke)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pgsched.api import keys as api_keys
from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect

keys = typer.Typer(help="API keys for the REST API (`pgsched api`).", no_args_is_help=True)

LIST_COLUMNS = ("id", "name", "prefix", "scope", "tenant", "created_at", "revoked_at")


@keys.command("create")
def create(
    scope: Annotated[str, typer.Option("--scope", help="read (GET), write (enqueue, cancel, retry, jobs) or admin")],
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant's jobs and runs (default: all)")] = None,
    name: Annotated[str, typer.Option(help="What the key is for")] = "",
    dsn: DsnOption = None,
) -> None:
    """Create a key and print it: the only time it is shown (only its hash is stored)."""
    with connect(dsn) as conn:
        key, row = api_keys.create_key(conn, api_keys.check_scope(scope), tenant=tenant, name=name)
    render.info(key)  # alone on stdout, so KEY=$(pgsched keys create ...) works
    render.err.print(
        f"key {row['id']} ({row['scope']}{', tenant ' + row['tenant'] if row['tenant'] else ''}): "
        "store it now, it is not shown again",
        highlight=False,
        markup=False,
    )


@keys.command("list")
def list_keys(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False, dsn: DsnOption = None
) -> None:
    """List keys (their first characters, never the keys), revoked ones included."""
    with connect(dsn) as conn:
        rows = api_keys.list_keys(conn)
    render.print_json(rows) if json_output else render.print_table(rows, LIST_COLUMNS, title="API keys")


@keys.command("revoke")
def revoke(
    key_id: Annotated[int, typer.Argument(metavar="ID", help="The key's id (see `keys list`)")], dsn: DsnOption = None
) -> None:
    """Revoke a key: API processes refuse it within a few seconds (their key cache)."""
    with connect(dsn) as conn:
        api_keys.revoke_key(conn, key_id)
    render.info(f"key {key_id} revoked")

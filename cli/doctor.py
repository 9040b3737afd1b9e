"""`pgsched doctor`: what in the database needs a person, and (--fix) the repair."""

from __future__ import annotations

from typing import Annotated

import typer

from pgsched.cli import render
from pgsched.cli.options import DsnOption, connect
from pgsched.doctor import Diagnosis, diagnose


def doctor(
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Repair the rows that break the rules (each original is kept in pgsched.repaired_rows) "
            "and validate the constraints a migration added NOT VALID",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
    dsn: DsnOption = None,
) -> None:
    """Check the database: pending migrations, rows that break the rules every entry point
    enforces, rows repaired so far, constraints not yet validated. Reads every run: run it by
    hand, not on a timer. Exits 1 while something needs a person."""
    with connect(dsn) as conn:
        diagnosis = diagnose(conn, fix=fix)
    if json_output:
        render.print_json(diagnosis.__dict__ | {"healthy": diagnosis.healthy})
    else:
        _print(diagnosis)
    if not diagnosis.healthy:
        raise typer.Exit(1)


def _print(d: Diagnosis) -> None:
    if d.pending_migrations:
        render.info("pending migrations (run `pgsched migrate`): " + ", ".join(d.pending_migrations))
    if d.waiting_post_deploy:
        render.info(
            "for `pgsched migrate --post-deploy`, once every pgsched process runs this release: "
            + ", ".join(d.waiting_post_deploy)
        )
    for table, count in d.fixed.items():
        render.info(f"repaired {count} {table} row(s)")
    for name in d.validated:
        render.info(f"validated {name}")
    for row in d.breaking:
        render.info(
            f"{row['rows']} {row['table_name']} row(s) break the rules (first id {row['first_id']}: "
            f"{row['example']}): `pgsched doctor --fix` repairs them"
        )
    render.print_table(
        d.repaired,
        ("table_name", "repaired_by", "rows", "last_repaired_at", "first_ids"),
        title="repaired rows (originals in pgsched.repaired_rows)",
    )
    if d.unvalidated:
        names = ", ".join(f"{row['table_name']}.{row['constraint_name']}" for row in d.unvalidated)
        render.info(f"not yet validated (they hold for every write; `pgsched doctor --fix` validates them): {names}")
    render.info("healthy" if d.healthy else "needs attention")

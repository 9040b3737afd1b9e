"""`pgsched doctor`: a deployment's checks as a table of OK / WARN / FAIL with what to do, and
(--fix) the repair of rows and constraints."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from pgsched.checks import Check, Connections, Status, check_deployment
from pgsched.cli import render
from pgsched.cli.options import DirectDsnOption, DsnOption, PgbouncerOption, connect
from pgsched.config import resolve_direct_dsn, resolve_pgbouncer
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
    direct_dsn: DirectDsnOption = None,
    pgbouncer: PgbouncerOption = None,
) -> None:
    """Check a deployment: schema up to date, rows that break the rules, autovacuum, long
    transactions, PgBouncer and the direct DSN, the beat leader, live workers per queue, this
    host's clock against the database's, settings that hurt. Prints OK / WARN / FAIL with what
    to do. Reads every run: run it by hand or from a deploy pipeline, not on a timer. Exits 1
    on any FAIL."""
    connections = Connections(
        pgbouncer=resolve_pgbouncer(pgbouncer, direct_dsn=direct_dsn), direct_dsn=resolve_direct_dsn(direct_dsn)
    )
    with connect(dsn) as conn:
        diagnosis = diagnose(conn, fix=fix)
        checks = check_deployment(conn, diagnosis, connections)
    healthy = not any(check.status is Status.FAIL for check in checks)
    if json_output:
        render.print_json(diagnosis.__dict__ | {"healthy": healthy, "checks": [asdict(check) for check in checks]})
    else:
        _print(diagnosis, checks, healthy)
    if not healthy:
        raise typer.Exit(1)


def _print(d: Diagnosis, checks: list[Check], healthy: bool) -> None:
    """What --fix did and the details a table cell cannot hold, then the table and the verdict."""
    for table, count in d.fixed.items():
        render.info(f"repaired {count} {table} row(s)")
    for name in d.validated:
        render.info(f"validated {name}")
    for row in d.breaking:
        render.info(
            f"{row['rows']} {row['table_name']} row(s) break the rules (first id {row['first_id']}: {row['example']})"
        )
    render.print_table(
        d.repaired,
        ("table_name", "repaired_by", "rows", "last_repaired_at", "first_ids"),
        title="repaired rows (originals in pgsched.repaired_rows)",
    )
    if d.unvalidated:
        names = ", ".join(f"{row['table_name']}.{row['constraint_name']}" for row in d.unvalidated)
        render.info(f"not yet validated: {names}")
    render.print_table(
        [{"check": c.name, "status": c.status.value, "found": c.found, "to do": c.todo} for c in checks],
        ("check", "status", "found", "to do"),
        title="pgsched doctor",
    )
    render.info("healthy" if healthy else "needs attention: see FAIL above")

"""`pgsched doctor`: what in the database needs a person — pending migrations, rows that break
the rules every entry point now enforces (schema 0009), what repairs changed, and constraints
a migration added NOT VALID — and, with ``fix``, the repair and validation.

Nothing here runs on a timer: finding rows that break the rules reads every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pgsched.migrate import pending
from pgsched.sql import queries


@dataclass
class Diagnosis:
    pending_migrations: list[str]
    # Contracting migrations, for once every process runs this release (not a fault).
    waiting_post_deploy: list[str]
    # Per table: rows breaking the rules now, the first id and one row's problems.
    breaking: list[dict[str, Any]]
    # Per table and repair: how many rows it changed (the originals are in pgsched.repaired_rows).
    repaired: list[dict[str, Any]]
    unvalidated: list[dict[str, Any]]
    # What ``fix`` did: rows repaired per table, constraints validated.
    fixed: dict[str, int] = field(default_factory=dict)
    validated: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        """Nothing a person must act on: no pending migration and no row breaking the rules.
        Unvalidated constraints are not a fault (they hold for every write)."""
        return not self.pending_migrations and not self.breaking


def diagnose(conn: psycopg.Connection, *, fix: bool = False) -> Diagnosis:
    """Look (and with ``fix``, repair the rows and validate the constraints first). ``conn``
    must be in autocommit mode: each repair and validation commits on its own."""
    todo = [f"{m.version}_{m.name}" for m in pending(conn)]
    waiting = [f"{m.version}_{m.name}" for m in pending(conn, post_deploy=True) if m.post_deploy]
    fixed: dict[str, int] = {}
    validated: list[str] = []
    if fix and not todo:
        fixed = _repair(conn)
        validated = _validate_constraints(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        if todo:  # the rules' functions may not exist yet
            return Diagnosis(todo, waiting, [], [], [], fixed, validated)
        breaking = [row for row in cur.execute(queries["doctor_rows_breaking_rules"]).fetchall() if row["rows"]]
        repaired = cur.execute(queries["doctor_repaired_rows"]).fetchall()
        unvalidated = cur.execute(queries["doctor_unvalidated_constraints"]).fetchall()
    return Diagnosis(todo, waiting, breaking, repaired, unvalidated, fixed, validated)


def _repair(conn: psycopg.Connection) -> dict[str, int]:
    row = conn.execute(queries["doctor_repair"]).fetchone()
    assert row is not None
    return {"runs": int(row[0]), "jobs": int(row[1])}


def _validate_constraints(conn: psycopg.Connection) -> list[str]:
    """VALIDATE each NOT VALID constraint, one transaction each: it scans the table under a
    SHARE UPDATE EXCLUSIVE lock, which blocks no reader and no writer."""
    done = []
    with conn.cursor(row_factory=dict_row) as cur:
        for row in cur.execute(queries["doctor_unvalidated_constraints"]).fetchall():
            table = row["table_name"].split(".")
            conn.execute(
                sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(
                    sql.Identifier(*table), sql.Identifier(row["constraint_name"])
                )
            )
            done.append(row["constraint_name"])
    return done

"""Schema migrations: the numbered SQL files in ``schema/``, applied forward-only.

All pending files are applied in one transaction under an advisory lock, so two concurrent
``pgsched migrate`` runs are safe (the second waits, then finds nothing to do) and a failing
file leaves the database as it was.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg

from pgsched.sql import queries, schema_files

logger = logging.getLogger("pgsched.migrate")

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")
# An arbitrary constant: the advisory-lock key only pgsched's migrate takes.
MIGRATION_LOCK_KEY = 0x70677363_6D696772 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with this pgsched, in order."""
    found = []
    for entry in schema_files().iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def pending(conn: psycopg.Connection) -> list[Migration]:
    """Migrations not yet applied to this database."""
    if not conn.execute(queries["migration_table_exists"]).fetchone()[0]:  # type: ignore[index]
        return available()
    applied = {row[0] for row in conn.execute(queries["migration_applied"])}
    return [m for m in available() if m.version not in applied]


def migrate(conn: psycopg.Connection, *, up_to: str | None = None) -> list[Migration]:
    """Apply every pending migration (up to version ``up_to``, say "0007") in one transaction;
    return what was applied. ``up_to`` builds a previous release's schema, to test upgrades."""
    with conn.transaction():
        conn.execute(queries["migration_lock"], {"key": MIGRATION_LOCK_KEY})
        conn.execute(queries["migration_bootstrap"])
        todo = [m for m in pending(conn) if up_to is None or m.version <= up_to]
        for migration in todo:
            logger.info("applying migration %s_%s", migration.version, migration.name)
            conn.execute(migration.sql.encode())  # plain SQL files: no parameters
            conn.execute(queries["migration_record"], {"version": migration.version, "name": migration.name})
    return todo

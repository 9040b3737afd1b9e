"""Schema migrations: the numbered SQL files in ``schema/``, applied forward-only.

All pending files are applied in one transaction under an advisory lock, so two concurrent
``pgsched migrate`` runs are safe (the second waits, then finds nothing to do) and a failing
file leaves the database as it was.

Upgrades are expand-then-contract. A file named ``NNNN_name.post-deploy.sql`` contracts: it
removes what the previous release still uses (say, a constraint its queries name), so it waits
for ``pgsched migrate --post-deploy``, run once every pgsched process runs this release. A
fresh database gets every file at once (no older process can be using it). Nothing that runs
before a post-deploy file may depend on it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgsched.sql import queries, schema_files

logger = logging.getLogger("pgsched.migrate")

_MIGRATION_FILE = re.compile(r"^(\d{4})_(\w+)(\.post-deploy)?\.sql$")
# An arbitrary constant: the advisory-lock key only pgsched's migrate takes.
MIGRATION_LOCK_KEY = 0x70677363_6D696772 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str
    post_deploy: bool = False


def available() -> list[Migration]:
    """Every migration shipped with this pgsched, in order."""
    found = []
    for entry in schema_files().iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(match[1], match[2], entry.read_text(encoding="utf-8"), bool(match[3])))
    return sorted(found, key=lambda m: m.version)


def pending(conn: psycopg.Connection, *, post_deploy: bool = False) -> list[Migration]:
    """Migrations not yet applied to this database: the ones a process of this release needs,
    and with ``post_deploy`` the contracting ones too (see the module's docstring)."""
    applied = _applied(conn)
    fresh = not applied
    return [m for m in available() if m.version not in applied and (post_deploy or fresh or not m.post_deploy)]


def _applied(conn: psycopg.Connection) -> set[str]:
    if not conn.execute(queries["migration_table_exists"]).fetchone()[0]:  # type: ignore[index]
        return set()
    return {row[0] for row in conn.execute(queries["migration_applied"])}


def migrate(conn: psycopg.Connection, *, up_to: str | None = None, post_deploy: bool = False) -> list[Migration]:
    """Apply every pending migration (up to version ``up_to``, say "0007") in one transaction;
    return what was applied. ``up_to`` builds a previous release's schema, to test upgrades;
    ``post_deploy`` applies the contracting files too (see the module's docstring)."""
    with conn.transaction():
        conn.execute(queries["migration_lock"], {"key": MIGRATION_LOCK_KEY})
        conn.execute(queries["migration_bootstrap"])
        todo = [m for m in pending(conn, post_deploy=post_deploy) if up_to is None or m.version <= up_to]
        for migration in todo:
            logger.info("applying migration %s_%s", migration.version, migration.name)
            conn.execute(migration.sql.encode())  # plain SQL files: no parameters
            conn.execute(queries["migration_record"], {"version": migration.version, "name": migration.name})
    return todo


def repaired_by_migrations(conn: psycopg.Connection, applied: list[Migration]) -> list[dict[str, Any]]:
    """The rows these migrations repaired (schema 0009 onwards records them), per table."""
    if not applied or not conn.execute(queries["migration_repairs_recorded"]).fetchone()[0]:  # type: ignore[index]
        return []
    names = {f"migration {m.version}" for m in applied}
    with conn.cursor(row_factory=dict_row) as cur:
        return [row for row in cur.execute(queries["doctor_repaired_rows"]) if row["repaired_by"] in names]

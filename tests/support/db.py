"""Database helpers of the suite: ``scalar`` (one query, one value), a connection that waits
for a restarting server, and the scratch databases behind conftest's fixtures."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import psycopg

from pgsched.migrate import migrate
from tests.support.waiting import wait_until


def scalar(conn: psycopg.Connection[Any], sql: Any, params: Any = None) -> Any:
    """The first column of the first row, or None when there is no row."""
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


def insert_restored(conn: psycopg.Connection[Any], sql: Any, params: Any = None) -> psycopg.Cursor[Any]:
    """Run an INSERT of runs as a restore of a dump does, with triggers off: a run inserted
    otherwise must be queued (schema 0009), and tests need finished and running ones. The
    constraints still hold, so each row must be one a worker could have written."""
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        return conn.execute(sql, params)


def drop_the_rules_of_0009(conn: psycopg.Connection[Any]) -> None:
    """Drop what schema 0009 added to refuse rows no reader can read (its checks, and the rule
    that a run is inserted queued): a database as it was before, to show that readers cope with
    a row written then."""
    for table, prefix in (("runs", "run_"), ("jobs", "job_")):
        for (name,) in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass AND contype = 'c' AND conname LIKE %s"
            " AND pg_get_constraintdef(oid) LIKE '%%NOT VALID%%'",
            (f"pgsched.{table}", f"{prefix}%"),
        ).fetchall():
            conn.execute(f'ALTER TABLE pgsched.{table} DROP CONSTRAINT "{name}"'.encode())
    conn.execute("ALTER TABLE pgsched.runs DISABLE TRIGGER runs_inserted")
    conn.execute("ALTER TABLE pgsched.runs DISABLE TRIGGER runs_inserted_checked")  # the check since 0036


def reconnect(dsn: str, timeout: float = 30) -> psycopg.Connection[Any]:
    """An autocommit connection, retried while the server is still (re)starting."""
    return wait_until(
        lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=5),
        timeout,
        "the database to accept connections",
        poll=0.1,
        ignoring=(psycopg.OperationalError,),
    )


@contextmanager
def scratch_database(postgresql_proc: Any, name: str) -> Iterator[str]:
    """A freshly migrated database on the session's server; dropped afterwards."""
    server = f"host={postgresql_proc.host} port={postgresql_proc.port} user={postgresql_proc.user}"
    with psycopg.connect(f"{server} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0'.encode())
        try:
            with psycopg.connect(f"{server} dbname={name}", autocommit=True) as conn:
                migrate(conn)
            yield f"{server} dbname={name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


def empty_tables(dsn: str) -> str:
    """Delete every pgsched row (the migrations' record stays): as fresh as a new database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables"
                " WHERE schemaname = 'pgsched' AND tablename <> 'schema_migrations'"
            )
        ]
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("; ".join(f"DELETE FROM {table}" for table in tables).encode())
    return dsn


async def scalar_async(conn: psycopg.AsyncConnection[Any], sql: Any, *params: Any) -> Any:
    """``scalar`` on an asyncio connection."""
    row = await (await conn.execute(sql, params or None)).fetchone()
    return None if row is None else row[0]

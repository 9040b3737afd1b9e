"""The dashboard's database access: every page's queries run in one transaction under a
``statement_timeout``, so a page never holds the database longer than that."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg_pool import ConnectionPool

from pgsched.sql import queries

# A page's whole budget: the slowest query it runs is an index lookup or a capped scan (~ms).
STATEMENT_TIMEOUT_MS = 2000


@contextmanager
def page_connection(pool: ConnectionPool, *, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Iterator[psycopg.Connection]:
    """A pooled connection in a transaction whose statements give up after ``timeout_ms``."""
    with pool.connection() as conn, conn.transaction():
        conn.execute(queries["ui_statement_timeout"], {"ms": str(timeout_ms)})
        yield conn

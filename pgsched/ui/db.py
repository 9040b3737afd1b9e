"""The dashboard's database access: every page's queries run in one transaction under a
``statement_timeout``, so a page never holds the database longer than that. The list pages
read through ``read_page``: on the read replica when there is one (pgsched.api.replica)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from typing import Any, Iterator, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from pgsched.api.replica import Reads
from pgsched.sql import queries

T = TypeVar("T")

# A page's whole budget: the slowest query it runs is an index lookup or a capped scan (~ms).
STATEMENT_TIMEOUT_MS = 2000


@contextmanager
def page_connection(pool: ConnectionPool, *, timeout_ms: int = STATEMENT_TIMEOUT_MS) -> Iterator[psycopg.Connection]:
    """A pooled connection in a transaction whose statements give up after ``timeout_ms``."""
    with pool.connection() as conn, conn.transaction():
        conn.execute(queries["ui_statement_timeout"], {"ms": str(timeout_ms)})
        yield conn


def read_page(
    reads: Reads, query: Callable[[psycopg.Connection[Any]], T], *, timeout_ms: int = STATEMENT_TIMEOUT_MS
) -> T:
    """``query(conn)`` in a page's transaction, on the read replica when it can serve."""

    def in_a_page(conn: psycopg.Connection[Any]) -> T:
        with conn.transaction():
            conn.execute(queries["ui_statement_timeout"], {"ms": str(timeout_ms)})
            return query(conn)

    return reads(in_a_page)

"""Options shared by every command, and the one way commands open a connection."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Iterator, Optional

import psycopg
import typer

from pgsched.config import resolve_dsn

DsnOption = Annotated[
    Optional[str],
    typer.Option("--dsn", help="PostgreSQL DSN; overrides $PGSCHED_DSN (default: the embedded server)",
                 show_default=False),
]


@contextmanager
def connect(dsn: str | None) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the configured database."""
    with psycopg.connect(resolve_dsn(dsn), autocommit=True) as conn:
        yield conn

"""Options shared by every command, and the one way commands open a connection."""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Iterator, Optional

import psycopg
import typer

from pgsched.config import resolve_dsn
from pgsched.errors import InvalidInput
from pgsched.instants import READER_ADAPTERS
from pgsched.runs import parse_instant

DsnOption = Annotated[
    Optional[str],
    typer.Option(
        "--dsn", help="PostgreSQL DSN; overrides $PGSCHED_DSN (default: the embedded server)", show_default=False
    ),
]


DirectDsnOption = Annotated[
    Optional[str],
    typer.Option(
        "--direct-dsn",
        help="Behind PgBouncer: a DSN that reaches PostgreSQL directly, for LISTEN and the "
        "beat's leader lock (implies --pgbouncer); overrides $PGSCHED_DIRECT_DSN",
        show_default=False,
    ),
]
PgbouncerOption = Annotated[
    Optional[bool],
    typer.Option(
        "--pgbouncer/--no-pgbouncer",
        help="The DSN goes through PgBouncer in transaction mode (default: $PGSCHED_PGBOUNCER, else whether "
        "a direct DSN is set)",
        show_default=False,
    ),
]


@contextmanager
def connect(dsn: str | None) -> Iterator[psycopg.Connection]:
    """An autocommit connection to the configured database. It prepares no statements, so it
    works through PgBouncer in transaction mode too; a command runs too few statements to gain
    from preparing them."""
    with psycopg.connect(resolve_dsn(dsn), autocommit=True, prepare_threshold=None, context=READER_ADAPTERS) as conn:
        yield conn


def parse_args_json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--args is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidInput("--args is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise InvalidInput(f"--args must be a JSON object, got {type(value).__name__}")
    return value


def parse_at(text: str | None, option: str = "--at") -> datetime | None:
    return None if text is None else parse_instant(option, text)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str) -> float:
    """Seconds from '45', '45s', '30m', '12h' or '7d'."""
    match = _DURATION.match(text)
    if not match or float(match[1]) <= 0:
        raise InvalidInput(f"{option} must be a positive duration such as 45s, 30m, 12h or 7d, got {text!r}")
    return float(match[1]) * _UNIT_S[match[2]]

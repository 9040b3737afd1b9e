"""Instants every reader can hold. PostgreSQL's timestamptz spans 4713 BC to 294276 AD plus
±infinity; a Python datetime holds the years 1 to 9999, and a value near either end moves
past them when shown at another UTC offset (9999-12-31T23:59:59-14:00 is year 10000 in UTC:
one such run made GET /runs, `runs list` and /metrics fail for every tenant). A day's margin
at each end covers every offset, so what is accepted here can be read back anywhere.

Readers are robust too: pgsched's connections load a timestamptz no datetime can hold (a row
written by plain SQL, or before these bounds) as the nearest one a datetime can, so one such
row never fails a list (READER_ADAPTERS).
"""

from __future__ import annotations

from datetime import datetime, timezone

from psycopg import DataError, adapters
from psycopg.abc import AdaptContext, Buffer
from psycopg.adapt import AdaptersMap, Loader
from psycopg.pq import Format

from pgsched.errors import InvalidInput

EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 30, tzinfo=timezone.utc)


def check_readable(name: str, instant: datetime, *, plus_s: float = 0.0) -> None:
    """Refuse ``instant`` (moved by ``plus_s`` seconds) outside EARLIEST..LATEST, naming ``name``."""
    if not EARLIEST <= instant <= LATEST or plus_s > (LATEST - instant).total_seconds():
        raise InvalidInput(
            f"{name} must be between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()} UTC "
            "(what every reader can hold), "
            f"got {instant.isoformat()}" + (f" plus {plus_s:g}s" if plus_s else "")
        )


class _ClampedTimestamptzLoader(Loader):
    """timestamptz as psycopg reads it, except a value no datetime can hold: a row written before
    these bounds (or by plain SQL) shows up as the nearest datetime, EARLIEST_READ or LATEST_READ,
    instead of failing the whole list it is in."""

    _default = adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)

    def __init__(self, oid: int, context: AdaptContext | None = None) -> None:
        super().__init__(oid, context)
        assert self._default is not None
        self._loader = self._default(oid, context)

    def load(self, data: Buffer) -> datetime:
        try:
            return self._loader.load(data)  # type: ignore[no-any-return]
        except DataError:
            text = bytes(data)
            return EARLIEST_READ if text.startswith(b"-") or text.endswith(b" BC") else LATEST_READ


EARLIEST_READ = datetime.min.replace(tzinfo=timezone.utc)
LATEST_READ = datetime.max.replace(tzinfo=timezone.utc)
# The adaptation context of every connection pgsched opens (pools, the CLI's, the API's).
READER_ADAPTERS = AdaptersMap(adapters)
READER_ADAPTERS.register_loader("timestamptz", _ClampedTimestamptzLoader)

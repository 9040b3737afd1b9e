"""Instants every reader can hold. PostgreSQL's timestamptz spans 4713 BC to 294276 AD plus
±infinity; a Python datetime holds the years 1 to 9999, and a value near either end moves
past them when shown at another UTC offset (9999-12-31T23:59:59-14:00 is year 10000 in UTC:
one such run made GET /runs, `runs list` and /metrics fail for every tenant). A day's margin
at each end covers every offset, so what is accepted here can be read back anywhere.
"""

from __future__ import annotations

from datetime import datetime, timezone

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

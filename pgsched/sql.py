"""The named SQL statements of pgsched, parsed once at import from ``schema/queries.sql``.

Runtime code never writes SQL inline: it reads ``queries["run_claim"]`` and friends, so each
statement has one home, a name that sorts by table, and a test that prepares it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from types import MappingProxyType
from typing import LiteralString, Mapping, cast

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def schema_files() -> resources.abc.Traversable:
    """The folder that holds the migrations and queries.sql (inside the installed package)."""
    return resources.files("pgsched.schema")


def parse_queries(text: str) -> dict[str, LiteralString]:
    """Split a queries file into ``{name: statement}``; comment lines are kept out of the SQL."""
    parts = _NAME_LINE.split(text)
    found: dict[str, LiteralString] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in found:
            raise ValueError(f"queries.sql names {name!r} twice")
        lines = [line for line in body.strip().splitlines() if not line.lstrip().startswith("--")]
        # A file shipped with the package is as trusted as a literal: the cast says so to
        # checkers that know LiteralString; mypy reads it as str, hence the ignore.
        found[name] = cast(LiteralString, "\n".join(lines).strip().rstrip(";"))  # type: ignore[redundant-cast]
    return found


queries: Mapping[str, LiteralString] = MappingProxyType(
    parse_queries(schema_files().joinpath("queries.sql").read_text(encoding="utf-8"))
)


# ---- array parameters as text
#
# A Python list parameter goes through psycopg's ListDumper, which looks at every element in
# Python (its type, the smallest integer type that fits, the dump): 645 µs for the six arrays
# of a completion of 100 outcomes, against 79 µs for the same arrays written here as array
# literals with str.join (measured, psycopg 3.3 with its C extension). The statement casts each
# (``%(ids)s::bigint[]``), so the database parses the literal as the array it reads anyway.


def number_array(values: Iterable[int | float]) -> str:
    """An array literal of ints or floats (by repr: PostgreSQL reads 'inf' and 'nan' too; a bool would
    not do, callers pass float(x))."""
    return "{" + ",".join(map(repr, values)) + "}"


def text_array(values: Iterable[str | None]) -> str:
    """An array literal of any text, None as NULL: every element quoted, with backslash and
    double quote escaped (what array_in reads inside quotes)."""
    return "{" + ",".join("NULL" if v is None else _quoted(v) for v in values) + "}"


def _quoted(value: str) -> str:
    if "\\" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + value + '"'

"""Array parameters written as literals (pgsched.sql.number_array, text_array), which the worker's
completion sends instead of lists: PostgreSQL must read back exactly the values, whatever text
an outcome holds. And the fetcher's jsonb loader, which makes ``{}`` args without parsing them."""

from __future__ import annotations

import math
from typing import Any

import psycopg
import pytest

from pgsched.config import connection_kwargs
from pgsched.fetcher import CLAIM_ADAPTERS
from pgsched.sql import number_array, text_array

AWKWARD_TEXTS = [
    None,
    "NULL",
    "null",
    "",
    " padded ",
    'a "quoted" word',
    'back\\slash \\\\ and \\"',
    "{braces},commas,{}",
    '{"json": ["array", 1, null], "nested": {"k": "v\\"q"}}',
    "tab\tnew\nline",
    "ünïcödé ✓",
]


def test_text_array_reads_back_every_text_and_null(conn: psycopg.Connection[Any]) -> None:
    row = conn.execute("SELECT %s::text[]", (text_array(AWKWARD_TEXTS),)).fetchone()
    assert row is not None
    assert row[0] == AWKWARD_TEXTS


def test_text_array_of_nothing_is_empty(conn: psycopg.Connection[Any]) -> None:
    assert conn.execute("SELECT cardinality(%s::text[])", (text_array([]),)).fetchone() == (0,)


def test_number_arrays_read_back_ints_and_floats(conn: psycopg.Connection[Any]) -> None:
    ids = [1, 2**62, 0, -5]
    delays = [0.0, 1.5, 1e-05, 3600.0, 1.0000000000000002, math.inf]
    row = conn.execute("SELECT %s::bigint[], %s::float8[]", (number_array(ids), number_array(delays))).fetchone()
    assert row is not None
    assert row == (ids, delays)


def test_the_fetchers_loader_reads_args_as_json(dsn: str) -> None:
    with psycopg.connect(dsn, **connection_kwargs(False, context=CLAIM_ADAPTERS)) as conn:
        row = conn.execute(
            'SELECT \'{}\'::jsonb, \'{"a": [1, {"b": null}], "c": "{}"}\'::jsonb, NULL::jsonb, \'[]\'::jsonb'
        ).fetchone()
    assert row == ({}, {"a": [1, {"b": None}], "c": "{}"}, None, [])


def test_the_fetchers_loader_gives_each_run_its_own_empty_args(dsn: str) -> None:
    with psycopg.connect(dsn, **connection_kwargs(False, context=CLAIM_ADAPTERS)) as conn:
        first, second = conn.execute("SELECT '{}'::jsonb, '{}'::jsonb").fetchone()  # type: ignore[misc]
    first["changed"] = True
    assert second == {}, "a task that changes its args must not change another run's"


@pytest.mark.parametrize("bad", [[True], ["1"]])
def test_number_array_refuses_what_is_not_a_number(conn: psycopg.Connection[Any], bad: list[Any]) -> None:
    """Callers pass ints and floats; anything else fails loudly in the database, not silently."""
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        conn.execute("SELECT %s::float8[]", (number_array(bad),))

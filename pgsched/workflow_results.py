"""Results flow: what a workflow step gets from its parents. The worker reads a step's parents'
results (one query, only for runs with parents) before running it: they are
``current_run().parent_results``, and a chain or chord step's args hold a marker where they go.

A marker is the JSON object ``{"$pgsched": "parent_result"}`` (a chain: the previous step's
result) or ``{"$pgsched": "parent_results"}`` (a chord: the list of its header's results), the
value of the parameter the canvas bound (its first one the step's own args leave unbound). A
marker, not the results themselves, is what the run's args store: the results exist only once
the parents have ended, and a chord's could exceed the 1 MB that args may hold.
"""

from __future__ import annotations

from typing import Any, Mapping

from psycopg_pool import AsyncConnectionPool

from pgsched.sql import queries

MARKER_KEY = "$pgsched"
ONE_RESULT = "parent_result"
ALL_RESULTS = "parent_results"


def marker(kind: str) -> dict[str, str]:
    """The args value that stands for a parent's result (``ONE_RESULT``) or all of them."""
    return {MARKER_KEY: kind}


def _kind(value: Any) -> str | None:
    if type(value) is dict and len(value) == 1:
        kind = value.get(MARKER_KEY)
        if kind in (ONE_RESULT, ALL_RESULTS):
            return str(kind)
    return None


def bind_parent_results(args: Any, results: list[Any]) -> Any:
    """``args`` with each marker replaced by what it stands for (args that are not an object,
    or hold no marker, come back as they are)."""
    if not isinstance(args, Mapping):
        return args
    bound = dict(args)
    for name, value in args.items():
        kind = _kind(value)
        if kind == ONE_RESULT:
            bound[name] = results[0] if results else None
        elif kind == ALL_RESULTS:
            bound[name] = list(results)
    return bound


async def read_parent_results(pool: AsyncConnectionPool, run_id: int) -> list[Any]:
    """The results of a run's parents, in the order of its edges."""
    async with pool.connection() as conn:
        cursor = await conn.execute(queries["run_parent_results"], {"id": run_id})
        return [row[0] for row in await cursor.fetchall()]

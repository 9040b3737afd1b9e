"""The claim of runs behind a limit (issue #14): a queue's or a task's ``max_running``, its
``rate`` (a token bucket in its settings row), a queue's ``key_max_running`` and a tenant's
``max_running`` (over every queue); and of the runs of a ``fair`` queue, taken in turns per
tenant (or concurrency key) under the same row lock.

A *unit* is what one such claim covers: one limited queue (all its tasks but the limited ones),
one limited task in one limited queue, or one limited task over the worker's open queues; and
each of those, and the worker's open queues, for one tenant with a ``max_running`` (every other
claim passes over that tenant's runs). Its claim is one statement (``run_claim_limited``, the
function ``pgsched.run_claim_limited_v4``): lock the settings rows that apply (SKIP LOCKED, so
the claims of every worker for the same limit take turns and never wait), then, in a statement
of its own, count what runs, spend the buckets' whole tokens and claim no more than every limit
leaves. A refusal always rests on a count of the runs' rows and leases, so a SIGKILLed worker's
slots come back when its leases expire; the settings rows' ``running_bound`` (an upper bound
the claims keep, schema 0033) only spares the count while no limit could bind.

What the fetcher learns besides the runs is when to look again (:attr:`LimitedClaim.retry_in`):
soon while a limit holds due runs back (or when another worker's counted runs end: it sends a
notification then, see ``Worker._notify_slots_freed``), or when the next token is due while a
rate holds them back: a worker waiting for a token makes no claim before it, and one that lost
a token to another worker waits a little longer (RACE_LOST_PAUSE_S), so idle claims stay at a
few a second per worker.

The hand-off (:class:`Handoff`, schema 0050): while a limited queue's max_running holds runs
back, the completer writes a batch that ended runs of that queue together with the queue's next
claim (``run_complete_and_claim_limited``), so the freed slots go to the next runs without a
commit, a wake-up and another claim in between.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pgsched.run_types import ClaimedRun
from pgsched.sql import queries

# While max_running or a key's limit holds due runs back (or another worker has the rows'
# turn), look again this often, or as soon as this worker's own outcomes are written. A claim
# that finds the limit reached costs 0.5-0.9 ms (measured with 160 runs running: BEGIN, the
# row lock, the count, COMMIT): at most 20 a second per worker.
HELD_BY_LIMIT_PAUSE_S = 0.05
# A worker that woke when its token was due and found it taken by another worker waits this
# long at least: the workers that lose the race for each token then claim a few times a second
# instead of once per token each (4 workers at 10/s made 70 claims a second, 17 per worker),
# while the worker that won keeps claiming as each token comes due. The bucket fills meanwhile
# (up to its burst), so the rate is not lost while another worker's slots are all taken.
RACE_LOST_PAUSE_S = 0.5
# Wake a millisecond after the token is due, not a hair before it (float rounding).
TOKEN_MARGIN_S = 0.001


@dataclass(frozen=True, slots=True)
class Unit:
    """What one limited claim covers: ``queues`` (one, if ``queue_limited``), of ``task`` only
    (a limited task) or of every task but the limited ones (``task`` None); of ``tenant`` only
    (one with a max_running), or of no tenant with a max_running (``tenant`` None)."""

    queues: tuple[str, ...]
    task: str | None
    queue_limited: bool
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Which of a worker's queues and which tasks are paused or limited, as last loaded."""

    paused_queues: frozenset[str] = frozenset()
    limited_queues: tuple[str, ...] = ()
    paused_tasks: tuple[str, ...] = ()
    limited_tasks: tuple[str, ...] = ()
    rated: frozenset[tuple[str, str]] = frozenset()  # (scope, name) of those with a rate
    limited_tenants: tuple[str, ...] = ()  # tenants with a max_running

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, str, bool, bool, bool]]) -> Limits:
        """From ``queue_settings_of_worker``'s rows: (scope, name, paused, limited, rated)."""
        return cls(
            rated=frozenset((scope, name) for scope, name, _, _, rated in rows if rated),
            paused_queues=frozenset(name for scope, name, paused, _, _ in rows if scope == "queue" and paused),
            limited_queues=tuple(
                sorted(name for scope, name, paused, limited, _ in rows if scope == "queue" and limited and not paused)
            ),
            paused_tasks=tuple(sorted(name for scope, name, paused, _, _ in rows if scope == "task" and paused)),
            limited_tasks=tuple(
                sorted(name for scope, name, paused, limited, _ in rows if scope == "task" and limited and not paused)
            ),
            limited_tenants=tuple(sorted(name for scope, name, _, limited, _ in rows if scope == "tenant" and limited)),
        )

    def open_queues(self, queues: Sequence[str]) -> list[str]:
        """``queues`` neither paused nor limited (``run_claim`` checks again)."""
        return [q for q in queues if q not in self.paused_queues and q not in self.limited_queues]

    def units(self, queues: Sequence[str]) -> list[Unit]:
        """The limited claims to make, limited queues first: each takes at most what its limits
        leave, so a backlog in an open queue cannot starve them. Then each of them, and the
        open queues' claim, once more per tenant with a max_running (usually none or few)."""
        units: list[Unit] = []
        for queue in self.limited_queues:
            units += [Unit((queue,), task, True) for task in self.limited_tasks]
            units.append(Unit((queue,), None, True))
        open_queues = tuple(self.open_queues(queues))
        if open_queues:
            units += [Unit(open_queues, task, False) for task in self.limited_tasks]
        scopes = [*units, Unit(open_queues, None, False)] if open_queues else list(units)
        for tenant in self.limited_tenants:
            units += [Unit(scope.queues, scope.task, scope.queue_limited, tenant) for scope in scopes]
        return units

    def rate_applies(self, unit: Unit) -> bool:
        """Whether a rate (of its queue or its task) applies to ``unit``, as last loaded."""
        return (unit.queue_limited and ("queue", unit.queues[0]) in self.rated) or (
            unit.task is not None and ("task", unit.task) in self.rated
        )

    def skipped_tasks(self, skip_tasks: list[str] | None) -> list[str] | None:
        """The tasks a claim of every task must pass over: paused, limited (claimed by their
        own units), and those the caller skips. None when there are none (the plain claim)."""
        skipped = [*(skip_tasks or ()), *self.paused_tasks, *self.limited_tasks]
        return skipped or None


@dataclass(frozen=True, slots=True)
class LimitedClaim:
    runs: list[ClaimedRun]
    # None: no due run waits behind a limit. Else seconds until it is worth claiming again:
    # until the next token when a rate holds runs back, else HELD_BY_LIMIT_PAUSE_S.
    retry_in: float | None
    by_rate: bool = False  # retry_in is a token's due time (no slot another worker frees helps)
    looked: bool = True  # False: the rows were another worker's turn, no run was looked at


@dataclass(frozen=True, slots=True)
class Handoff:
    """A limited claim to make in the completion's transaction: ``unit``'s, of up to ``limit``
    runs (slots the fetcher keeps for it until :meth:`Fetcher.handoff_claimed`), with the
    claim's ``params`` for ``run_complete_and_claim_limited`` (less the completion's arrays)."""

    unit: Unit
    limit: int
    params: dict[str, Any]
    cursor_kind: str | None


def handoff_params(unit: Unit, limits: Limits, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (a claim's, with the cursor's arrays or not) as run_complete_and_claim_limited
    takes them for ``unit``."""
    skip = params["skip_tasks"] if unit.task is not None else limits.skipped_tasks(params["skip_tasks"])
    return {
        "after_priority": None,
        "after_run_at": None,
        "after_id": None,
        "from_run_at": None,
        **params,
        "skip_tasks": skip,
        "queues": list(unit.queues),
        "task": unit.task,
        "queue_locked": unit.queue_limited,
        "tenant": unit.tenant,
    }


def handoff_outcome(rows: list[tuple[Any, ...]], limit: int) -> tuple[set[int], LimitedClaim, bool]:
    """From run_complete_and_claim_limited's rows: the ids the completion changed, the claim (as
    :func:`claim_limited` reads it), and whether it took every slot the limits left (nobody else
    needs waking for them)."""
    completed = set(rows[0][0])
    claim_rows = [row[1:] for row in rows]
    if not claim_rows[0][0]:
        return completed, LimitedClaim([], HELD_BY_LIMIT_PAUSE_S, looked=False), False
    claim = _outcome(claim_rows, limit)
    headroom, more_due = claim_rows[0][1], claim_rows[0][2]
    return completed, claim, len(claim.runs) >= headroom or not more_due


def takes(unit: Unit, only_tasks: list[str] | None, skip_tasks: list[str] | None) -> bool:
    """Whether a claim for these tasks (the process pool's split) covers ``unit`` at all."""
    if unit.task is None:
        return True
    return (only_tasks is None or unit.task in only_tasks) and (skip_tasks is None or unit.task not in skip_tasks)


async def claim_limited(
    conn: psycopg.AsyncConnection[Any],
    unit: Unit,
    limits: Limits,
    params: dict[str, Any],
    *,
    pgbouncer: bool = False,
) -> LimitedClaim:
    """Claim up to ``params["limit"]`` runs of ``unit`` within its limits, in one statement on
    ``conn`` (autocommit: it is its own transaction, and the row locks last until it commits).
    ``params``: run_claim's (limit, worker_id, lease_s, now, only_tasks, skip_tasks), and its
    cursor's arrays (after_priority, after_run_at, after_id, from_run_at) if it has one: then the
    claim in claim order starts there (a tenant's claim takes none). Through a transaction-mode
    pooler (``pgbouncer``) it skips the WAL flush by itself.

    One round trip: 0020's claim took four (BEGIN, the locks, the claim, COMMIT), and limits
    that never bind cost a drain 0.77x; pipelining them into two cost the worker more CPU than
    it saved (0.70-0.76x)."""
    skip = params["skip_tasks"] if unit.task is not None else limits.skipped_tasks(params["skip_tasks"])
    cursor = await conn.execute(
        queries[_query(unit, params)],
        {
            **params,
            "skip_tasks": skip,
            "queues": list(unit.queues),
            "task": unit.task,
            "queue_locked": unit.queue_limited,
            "tenant": unit.tenant,
            "skip_flush": pgbouncer,
        },
    )
    rows = await cursor.fetchall()
    if not rows[0][0]:
        # A row not locked: another worker's turn (or paused, or no longer limited: a reload
        # follows). Under a rate, that worker is taking the token this one woke for.
        if limits.rate_applies(unit):
            return LimitedClaim([], RACE_LOST_PAUSE_S, by_rate=True, looked=False)
        return LimitedClaim([], HELD_BY_LIMIT_PAUSE_S, looked=False)
    return _outcome(rows, params["limit"])


def _query(unit: Unit, params: dict[str, Any]) -> str:
    """The named claim for ``unit``: a tenant's, or from a cursor when ``params`` has one."""
    if unit.tenant is not None:
        return "run_claim_tenant_limited"
    return "run_claim_limited_from" if "after_priority" in params else "run_claim_limited"


def _outcome(rows: list[tuple[Any, ...]], limit: int) -> LimitedClaim:
    """The claim's runs and when to look again, from run_claim_limited's rows."""
    more_due, held_by_key = rows[0][2], rows[0][3]
    buckets = ((rows[0][4], rows[0][5]), (rows[0][6], rows[0][7]))  # (tokens before, per second)
    runs = [ClaimedRun(*row[8:]) for row in rows if row[8] is not None]
    if len(runs) >= limit or not (more_due or held_by_key):
        return LimitedClaim(runs, None)
    token_waits = [
        (1 - (tokens - len(runs))) / per_s
        for tokens, per_s in buckets
        if tokens is not None and per_s is not None and tokens - len(runs) < 1
    ]
    if more_due and token_waits:
        wait = max(token_waits) + TOKEN_MARGIN_S
        return LimitedClaim(runs, wait if runs else max(wait, RACE_LOST_PAUSE_S), by_rate=True)
    return LimitedClaim(runs, HELD_BY_LIMIT_PAUSE_S)

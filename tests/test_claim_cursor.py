"""Where a claim starts (pgsched.claim_cursor with run_claim): behind the last run claimed, so
it does not walk what it already consumed, and from the start every full pass, so no run that
sorts behind the cursor waits longer than that."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql

from pgsched.claim_cursor import BEHIND_EVERY_S, FROM_THE_START, FULL_PASS_S, SLACK_S, ClaimCursors
from pgsched.config import connection_kwargs
from pgsched.fetcher import CLAIM_ADAPTERS, CLAIM_CONNECTION
from pgsched.run_types import ClaimedRun
from pgsched.sql import queries
from tests.support.db import scalar

FULL_PASS = {name: [None] for name in FROM_THE_START}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def insert(
    conn: psycopg.Connection[Any], n: int = 1, *, priority: int = 0, run_at: datetime | None = None
) -> list[int]:
    rows = conn.execute(
        "INSERT INTO pgsched.runs (task, priority, run_at) "
        "SELECT 'noop', %s, coalesce(%s::timestamptz, now()) FROM generate_series(1, %s) RETURNING id",
        (priority, run_at, n),
    ).fetchall()
    return [row[0] for row in rows]


def claim(conn: psycopg.Connection[Any], cursors: ClaimCursors, limit: int = 10, explain: bool = False) -> Any:
    """One claim as the fetcher makes it: params from the cursors, advance them with the result."""
    params = {
        "queues": ["default"],
        **cursors.params(["default"]),
        "limit": limit,
        "worker_id": 1,
        "lease_s": 30.0,
        "now": None,
        "only_tasks": None,
        "skip_tasks": None,
    }
    if explain:
        conn.execute("BEGIN")
        plan = "\n".join(
            row[0] for row in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + queries["run_claim"].encode(), params)
        )
        conn.execute("ROLLBACK")
        cursors.advance(["default"], [])
        return plan
    runs = [ClaimedRun(*row) for row in conn.execute(queries["run_claim"].encode(), params).fetchall()]
    cursors.advance(["default"], runs)
    return [run.id for run in runs]


def complete(conn: psycopg.Connection[Any], ids: list[int]) -> None:
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL WHERE id = ANY(%s)",
        (ids,),
    )


def test_the_claim_returns_where_each_run_stood_in_claim_order(conn: psycopg.Connection[Any]) -> None:
    [run_id] = insert(conn, priority=7)
    params = {**ClaimCursors().params(["default"]), "queues": ["default"], "limit": 1, "worker_id": 1}
    row = conn.execute(
        queries["run_claim"], {**params, "lease_s": 30.0, "now": None, "only_tasks": None, "skip_tasks": None}
    ).fetchone()
    run = ClaimedRun(*row)  # type: ignore[misc]
    assert (run.id, run.priority) == (run_id, 7)
    assert run.run_at == scalar(conn, "SELECT run_at FROM pgsched.runs_all WHERE id = %s", (run_id,))


def test_the_fetchers_connection_reads_claimed_instants_in_utc_whatever_the_servers_zone(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """Its session's TimeZone is UTC (CLAIM_CONNECTION): psycopg then loads run_at without
    converting it through the server's zone, and the instant is the same."""
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET timezone = 'America/New_York'").format(sql.Identifier(conn.info.dbname))
    )
    due = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
    [run_id] = insert(conn, run_at=due)
    params = {**ClaimCursors().params(["default"]), "queues": ["default"], "limit": 1, "worker_id": 1}
    params |= {"lease_s": 30.0, "now": None, "only_tasks": None, "skip_tasks": None}
    with psycopg.connect(dsn, **connection_kwargs(False, **CLAIM_CONNECTION, context=CLAIM_ADAPTERS)) as claims:
        assert scalar(claims, "SHOW timezone") == "UTC"
        run = ClaimedRun(*claims.execute(queries["run_claim"], params).fetchone())  # type: ignore[misc]
    with psycopg.connect(dsn) as elsewhere:  # a session in the server's zone, for contrast
        assert scalar(elsewhere, "SHOW timezone") == "America/New_York"
    assert run.id == run_id
    assert run.run_at == due
    assert run.run_at is not None and run.run_at.tzinfo is timezone.utc


def test_a_claim_after_the_first_starts_behind_the_last_run_claimed() -> None:
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    assert cursors.params(["default"]) == FULL_PASS
    at = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    cursors.advance(["default"], [ClaimedRun(9, "t", {}, 1, 3, "default", None, None, 3, at)])
    clock.now += BEHIND_EVERY_S
    after = {"after_priority": [3], "after_run_at": [at], "after_id": [9]}
    assert cursors.params(["default"]) == {**after, "from_run_at": [at - timedelta(seconds=SLACK_S)]}
    cursors.advance(["default"], [])  # nothing found: the start stays
    clock.now += BEHIND_EVERY_S / 2  # too soon to look behind again: an empty range there
    assert cursors.params(["default"]) == {**after, "from_run_at": [at]}
    cursors.advance(["default"], [])
    clock.now += FULL_PASS_S
    assert cursors.params(["default"]) == FULL_PASS  # the full pass is due


def test_a_rewind_makes_the_next_claim_a_full_pass() -> None:
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    cursors.params(["q"])
    cursors.advance(["q"], [ClaimedRun(1, "t", {}, 1, 3, "q", None, None, 0, datetime.now(timezone.utc))])
    assert cursors.params(["q"])["after_priority"] == [0]
    cursors.advance(["q"], [])
    cursors.rewind()
    assert cursors.params(["q"]) == FULL_PASS


def test_each_kind_of_claim_keeps_its_own_start() -> None:
    """The process-pool split: a claim of some tasks must not move the start of the claim of
    the others past runs it left behind."""
    cursors = ClaimCursors(clock=Clock())
    cursors.params(["default"], "only")
    cursors.advance(["default"], [ClaimedRun(1, "t", {}, 1, 3, priority=5, run_at=datetime.now(timezone.utc))], "only")
    assert cursors.params(["default"], "only")["after_priority"] == [5]
    assert cursors.params(["default"], "skip") == FULL_PASS


def test_a_run_with_a_lower_priority_number_enqueued_behind_the_cursor_is_claimed_by_the_full_pass(
    conn: psycopg.Connection[Any],
) -> None:
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    insert(conn, 20, priority=5)
    first = claim(conn, cursors)
    assert len(first) == 10
    [urgent] = insert(conn, priority=-5)
    clock.now += FULL_PASS_S / 2
    assert urgent not in claim(conn, cursors, limit=5)  # it sorts behind where this claim starts
    clock.now += FULL_PASS_S / 2
    assert claim(conn, cursors, limit=1) == [urgent]  # the full pass, FULL_PASS_S after the last one


def test_a_run_due_earlier_than_the_slack_behind_the_cursor_is_claimed_by_the_full_pass(
    conn: psycopg.Connection[Any],
) -> None:
    """An enqueue transaction that stayed open a minute: its run_at (its now()) sorts far
    behind runs claimed in between."""
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    insert(conn, 3)
    assert len(claim(conn, cursors)) == 3
    [late] = insert(conn, run_at=datetime.now(timezone.utc) - timedelta(minutes=1))
    [recent] = insert(conn, run_at=datetime.now(timezone.utc) - timedelta(seconds=SLACK_S / 4))
    clock.now += BEHIND_EVERY_S
    assert claim(conn, cursors) == [recent]  # within the slack: found by the next look behind
    clock.now += FULL_PASS_S
    assert claim(conn, cursors) == [late]


def test_no_run_is_skipped_forever_while_runs_keep_coming(conn: psycopg.Connection[Any]) -> None:
    """Runs that sort behind the cursor, enqueued at every step while newer runs keep it
    moving: each is claimed within one full-pass interval of its enqueue."""
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    enqueued_at: dict[int, float] = {}
    claimed_at: dict[int, float] = {}
    for step in range(40):
        insert(conn, 3)
        for run_id in insert(conn, priority=-(step % 7), run_at=datetime.now(timezone.utc) - timedelta(hours=1)):
            enqueued_at[run_id] = clock.now
        for run_id in claim(conn, cursors, limit=3):
            claimed_at[run_id] = clock.now
        clock.now += 0.1
    for _ in range(int(FULL_PASS_S / 0.1) + 1):  # one more interval, with no new runs
        for run_id in claim(conn, cursors, limit=50):
            claimed_at[run_id] = clock.now
        clock.now += 0.1
    assert set(enqueued_at) <= set(claimed_at)
    assert max(claimed_at[r] - enqueued_at[r] for r in enqueued_at) <= FULL_PASS_S + 0.1 + 1e-9


def _claim_index_scan_buffers(plan: str) -> int:
    """Buffers the claim's scans of runs_claim_idx touched, index and heap (hit + read): the
    Append of its two scans (behind and ahead of the cursor)."""
    scan = plan[plan.index("->  Append") :]
    found = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", scan)
    assert found, plan
    return int(found[1]) + int(found[2] or 0)


def test_under_a_pinned_horizon_the_claim_does_not_walk_the_runs_it_already_claimed(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    """A REPEATABLE READ transaction holds vacuum's horizon: every run claimed after it leaves
    a dead claim-index entry nobody can remove. A claim from the start reads them all; one from
    the cursor reads a page or two, however many there are."""
    with psycopg.connect(dsn, autocommit=True) as pin:
        pin.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        pin.execute("SELECT count(*) FROM pgsched.workers")  # the snapshot
        clock = Clock()
        cursors = ClaimCursors(clock=clock)
        insert(conn, 12_000)
        for _ in range(40):
            complete(conn, claim(conn, cursors, limit=300))
        insert(conn, 10)
        clock.now += 0.1
        from_cursor = _claim_index_scan_buffers(claim(conn, cursors, explain=True))
        clock.now += FULL_PASS_S
        from_start = _claim_index_scan_buffers(claim(conn, cursors, explain=True))
        pin.execute("ROLLBACK")
    # Pages, not entries (a scan keeps its heap page pinned across consecutive entries): 12,000
    # dead entries sit on ~200 heap pages.
    assert from_start > 8 * from_cursor, (from_start, from_cursor)


def test_claims_within_one_bulk_enqueue_go_on_from_the_last_id(conn: psycopg.Connection[Any]) -> None:
    """enqueue_many writes one run_at for all its runs: the cursor's id keeps them in order."""
    clock = Clock()
    cursors = ClaimCursors(clock=clock)
    ids = insert(conn, 25)
    claimed = []
    for _ in range(3):
        claimed += claim(conn, cursors, limit=10)
        clock.now += 0.1
    assert claimed == ids

"""Where each claim starts in the claim index: just behind the last run this fetcher claimed
in that queue, and from the very start on a periodic full pass.

Why: a claim walks ``runs_claim_idx`` (queue, priority, run_at, id) in claim order. Claiming a
run leaves its old entry dead in that index until vacuum removes it, and while any transaction
holds vacuum's horizon back (a REPEATABLE READ report, a forgotten psql session, a replication
slot) nothing removes it and no scan can mark it dead either: a claim from the start visits
every run claimed since the horizon was pinned, one heap fetch each. At 400 runs/s that is
0.9 -> 9.7 ms a claim after 150 s, and ~60 ms after 15 minutes (issue 13). Starting where the
last claim ended skips those entries; what it still walks is bounded by the claim rate times
:data:`SLACK_S`, not by the age of the oldest transaction.

What can sort before the start, and how it is still claimed:

- a run enqueued by a transaction that began before the last claimed run's (``run_at`` is its
  transaction's ``now()``): every :data:`BEHIND_EVERY_S` a claim also looks :data:`SLACK_S`
  behind the cursor in its priority, so a run whose enqueue committed within a second of its
  ``now()`` is found within a tenth of a second;
- a run with a lower priority number than the last claimed one, a deferred run of a lower
  priority coming due, a run rescued or released with an earlier key, a run another worker's
  rolled-back claim had locked, an enqueue transaction that stayed open longer than
  :data:`SLACK_S`: the next **full pass**, at most :data:`FULL_PASS_S` after the previous one,
  walks from the start and claims them in claim order. No run is skipped longer than that while
  this fetcher claims; and a fetcher that finds a due run it did not claim rewinds at once
  (:meth:`ClaimCursors.rewind`).

A full pass under a pinned horizon costs what every claim cost before (it walks the dead
entries): once per :data:`FULL_PASS_S`, not on every claim.

Each fetcher keeps its own cursors in memory, per queue and per kind of claim (the
process-pool split claims some tasks apart: one claim's cursor must not pass over runs the
other claim left behind). Nothing is stored: a restarted worker starts with a full pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pgsched.run_types import ClaimedRun

# How far behind the last claimed run's run_at the next claim starts. An enqueue's run_at is
# its transaction's start: a run committed up to this long after it began sorts behind runs
# claimed in between and is still found without waiting for a full pass. Under a pinned
# horizon the claim walks the dead entries of this last second: rate x 1 s (400 at 400/s).
SLACK_S = 1.0
# At most this long between two claims from the very start of each queue's index: how long a
# run that sorts behind the cursor (a lower priority number, see above) can wait for it.
FULL_PASS_S = 1.0
# The last SLACK_S behind the cursor is looked at this often, not at every claim: under a held
# horizon that look walks the dead entries of the runs claimed in that second (400 at 400 runs/s,
# ~80 buffers, measured), and a run that committed late waits at most this long for it.
BEHIND_EVERY_S = 0.1


Key = tuple[int, datetime, int]  # (priority, run_at, id): the claim index's order within a queue


# run_claim's cursor parameters for a claim from the start of every queue (a full pass).
FROM_THE_START: dict[str, None] = {"after_priority": None, "after_run_at": None, "after_id": None, "from_run_at": None}


@dataclass(slots=True)
class _Cursor:
    last: Key | None = None  # the last run claimed; None: none yet
    full_pass_at: float = float("-inf")  # clock time of the last full pass
    behind_at: float = float("-inf")  # clock time of the last look behind the cursor


@dataclass(slots=True)
class ClaimCursors:
    """The claim's start per (queue, kind of claim). ``params`` before a claim, ``advance``
    with what it claimed."""

    full_pass_s: float = FULL_PASS_S
    slack_s: float = SLACK_S
    behind_every_s: float = BEHIND_EVERY_S
    clock: Callable[[], float] = time.monotonic
    _cursors: dict[tuple[str, str], _Cursor] = field(default_factory=dict)
    _full_pass: set[tuple[str, str]] = field(default_factory=set)  # keys whose claim now is a full pass

    def params(self, queues: Sequence[str], kind: str = "") -> dict[str, list[Any]]:
        """``after_priority``, ``after_run_at``, ``after_id`` (the last run claimed) and
        ``from_run_at`` (``slack_s`` before it) for ``run_claim`` over ``queues``; NULL
        elements: a full pass of that queue, due every ``full_pass_s``."""
        now = self.clock()
        starts: list[Key | None] = []
        behind: list[datetime | None] = []
        for queue in queues:
            cursor = self._cursors.setdefault((queue, kind), _Cursor())
            if cursor.last is None or now - cursor.full_pass_at >= self.full_pass_s:
                self._full_pass.add((queue, kind))
                cursor.behind_at = now
                starts.append(None)
                behind.append(None)
                continue
            self._full_pass.discard((queue, kind))
            starts.append(cursor.last)
            if now - cursor.behind_at >= self.behind_every_s:
                cursor.behind_at = now
                behind.append(_minus(cursor.last[1], self.slack_s))
            else:
                behind.append(cursor.last[1])  # an empty range: nothing behind this time
        return {
            "after_priority": [start and start[0] for start in starts],
            "after_run_at": [start and start[1] for start in starts],
            "after_id": [start and start[2] for start in starts],
            "from_run_at": behind,
        }

    def advance(self, queues: Sequence[str], claimed: Iterable[ClaimedRun], kind: str = "") -> None:
        """After the claim ``params`` was given for: each queue's cursor moves to the last run
        claimed in it. A full pass that claimed some sets it (it may move back: the pass found
        runs behind it); one that claimed none leaves it (nothing is due anywhere before it)."""
        last: dict[str, Key] = {}
        for run in claimed:
            if run.run_at is None:
                continue
            key = (run.priority, run.run_at, run.id)
            if run.queue not in last or key > last[run.queue]:
                last[run.queue] = key
        now = self.clock()
        for queue in queues:
            cursor = self._cursors.setdefault((queue, kind), _Cursor())
            if (queue, kind) in self._full_pass:
                self._full_pass.discard((queue, kind))
                cursor.full_pass_at = now
                if queue in last:  # none: nothing due in the whole queue, the old start still serves
                    cursor.last = last[queue]
            elif queue in last and (cursor.last is None or cursor.last < last[queue]):
                cursor.last = last[queue]

    def rewind(self) -> None:
        """The next claim of every queue is a full pass (a due run was left unclaimed: it may
        sort behind a cursor)."""
        for cursor in self._cursors.values():
            cursor.full_pass_at = float("-inf")


def _minus(instant: datetime, seconds: float) -> datetime:
    """``instant`` less ``seconds``, clamped at the earliest datetime (a run_at of -infinity
    reads as datetime.min)."""
    try:
        return instant - timedelta(seconds=seconds)
    except OverflowError:
        return instant

"""What the queues page draws and flags, from the per-minute rollup (``pgsched.run_rollup``):
the last hour per queue as a chart, and the queue/task pairs far above their own baseline
(the same hour over the last 7 days).

Both are kept in the process for a while (``Recent``), as are the failures page's groups: the
rollup moves once per maintenance round (5 s), the baseline is hourly and the failure counts
span a week, while pages poll every 2 s; recomputing them on every poll would make them the
largest part of an open page's database cost."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Generic, TypeVar

import psycopg
from psycopg.rows import dict_row

from pgsched.queues import queue_throughput
from pgsched.runs import failure_groups
from pgsched.sql import queries

CHART_MINUTES = 60
# A figure is flagged when it is at least this many times its usual value...
ANOMALY_FACTOR = 3.0
# ...over at least this many runs (a single failure in a quiet hour is not news).
ANOMALY_MIN_RUNS = 5
# Mean run and wait times below this are never flagged.
MIN_FLAGGED_S = 1.0
# Nor an oldest due run younger than this: a burst of enqueues makes waits of a few seconds.
MIN_FLAGGED_AGE_S = 30.0
CHART_KEPT_S = 10.0
ANOMALIES_KEPT_S = 60.0
# The failures page counts a week of failed runs: seconds matter less than its cost per poll.
FAILURES_KEPT_S = 15.0
T = TypeVar("T")


@dataclass(frozen=True)
class Minute:
    succeeded: int
    failed: int


@dataclass(frozen=True)
class Anomaly:
    queue: str
    task: str
    what: str  # "failures", "run time", "wait before start" or "oldest due run waits"
    factor: float
    now: str  # the figure now, in words
    usual: str
    span: str = "this hour"  # what "now" covers


@dataclass(frozen=True)
class Baseline:
    """What the rollup says against its own history: the flagged queue/task pairs, and per
    queue the mean wait from due to start at this hour over the last 7 days."""

    flagged: list[Anomaly]
    usual_wait_s: dict[str, float]


def last_hour(conn: psycopg.Connection, tenant: str | None, now: datetime | None = None) -> dict[str, list[Minute]]:
    """Per queue, the last 60 minutes oldest first (minutes without runs are zeros)."""
    end = (now or datetime.now(timezone.utc)).replace(second=0, microsecond=0)
    start = end - timedelta(minutes=CHART_MINUTES - 1)
    series: dict[str, list[Minute]] = {}
    for row in queue_throughput(conn, tenant=tenant, now=now):
        minutes = series.setdefault(row["queue"], [Minute(0, 0)] * CHART_MINUTES)
        index = int((row["minute"] - start).total_seconds() // 60)
        if 0 <= index < CHART_MINUTES:
            minutes[index] = Minute(row["succeeded"], row["failed"])
    return series


def with_charted_queues(live: list[dict[str, Any]], charts: dict[str, list[Minute]]) -> list[dict[str, Any]]:
    """The live queue figures, plus a row of zeros for each queue only the last hour's chart
    knows of (its runs finished more than a minute ago), by queue name."""
    known = {row["queue"] for row in live}
    idle = [
        {
            "queue": queue,
            "queued": 0,
            "due": 0,
            "running": 0,
            "failed": 0,
            "oldest_queued_age_s": None,
            "succeeded_last_minute": 0,
            "failed_last_minute": 0,
        }
        for queue in charts
        if queue not in known
    ]
    return sorted(live + idle, key=lambda row: row["queue"])


def bars(minutes: list[Minute], peak: int, *, height: float = 30.0) -> tuple[str, str]:
    """SVG path data for a chart of ``minutes`` (2 units wide each) scaled to ``peak``: the
    succeeded part of each bar and the failed part on top of it. Two paths rather than a
    rectangle per minute: a page of charts renders in a fraction of the time."""
    ok, bad = [], []
    for index, minute in enumerate(minutes):
        if peak <= 0 or minute.succeeded + minute.failed == 0:
            continue
        top = height * (minute.succeeded + minute.failed) / peak
        failed = height * minute.failed / peak
        if top > failed:
            ok.append(f"M{index * 2} {height - top:.2f}h1.6v{top - failed:.2f}h-1.6z")
        if failed:
            bad.append(f"M{index * 2} {height - failed:.2f}h1.6v{failed:.2f}h-1.6z")
    return "".join(ok), "".join(bad)


def anomalies(conn: psycopg.Connection, tenant: str | None, now: datetime | None = None) -> list[Anomaly]:
    """Queue/task pairs whose failure ratio, mean run time or mean wait before start this hour
    is far above the same hour of the last 7 days."""
    return baseline(conn, tenant, now).flagged


def baseline(conn: psycopg.Connection, tenant: str | None, now: datetime | None = None) -> Baseline:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(queries["rollup_against_baseline"], {"tenant": tenant, "now": now}).fetchall()
    flagged = [flag for row in rows for flag in _flags(row)]
    waits: dict[str, tuple[float, int]] = {}
    for row in rows:
        wait_s, runs = waits.get(row["queue"], (0.0, 0))
        waits[row["queue"]] = (wait_s + row["usual_wait_s"], runs + row["usual_runs"])
    usual = {queue: wait_s / runs for queue, (wait_s, runs) in waits.items() if runs >= ANOMALY_MIN_RUNS}
    return Baseline(flagged, usual)


def oldest_due_flags(live: list[dict[str, Any]], usual_wait_s: dict[str, float]) -> list[Anomaly]:
    """Queues whose oldest due run has waited far longer than their runs usually wait before
    they start (at this hour over the last 7 days): a stuck or starved queue, which finishes
    nothing and so shows in no rollup of this hour."""
    flags = []
    for row in live:
        age, usual = row.get("oldest_queued_age_s"), usual_wait_s.get(row["queue"])
        if age is None or usual is None or age < MIN_FLAGGED_AGE_S:
            continue
        if age >= ANOMALY_FACTOR * max(usual, MIN_FLAGGED_S):
            factor = age / max(usual, 0.01)
            flags.append(
                Anomaly(row["queue"], "", "oldest due run waits", factor, f"{age:.0f}s", f"{usual:.2f}s", "now")
            )
    return flags


def _flags(row: dict[str, Any]) -> list[Anomaly]:
    if row["runs"] < ANOMALY_MIN_RUNS or row["usual_runs"] < ANOMALY_MIN_RUNS:
        return []
    flags = []
    ratio = row["failed"] / row["runs"]
    # A baseline of no failures at all counts as one failure in it: "14x" stays finite.
    usual_ratio = max(row["usual_failed"], 1) / row["usual_runs"]
    if row["failed"] >= ANOMALY_MIN_RUNS and ratio >= ANOMALY_FACTOR * usual_ratio:
        flags.append(
            Anomaly(
                row["queue"],
                row["task"],
                "failures",
                ratio / usual_ratio,
                f"{ratio:.0%}",
                f"{row['usual_failed'] / row['usual_runs']:.0%}",
            )
        )
    for what, column in (("run time", "run_s"), ("wait before start", "wait_s")):
        mean, usual_mean = row[column] / row["runs"], row[f"usual_{column}"] / row["usual_runs"]
        # Sub-second means are noise (a run that took 3 ms instead of 1 is no news).
        if mean >= MIN_FLAGGED_S and mean >= ANOMALY_FACTOR * max(usual_mean, MIN_FLAGGED_S / ANOMALY_FACTOR):
            factor = mean / max(usual_mean, 0.01)
            flags.append(Anomaly(row["queue"], row["task"], what, factor, f"{mean:.2f}s", f"{usual_mean:.2f}s"))
    return flags


class Recent(Generic[T]):
    """Values by tenant scope, each recomputed once it is ``kept_s`` seconds old."""

    def __init__(self, kept_s: float) -> None:
        self.kept_s = kept_s
        self._values: dict[str | None, tuple[float, T]] = {}
        self._lock = threading.Lock()

    def get(self, tenant: str | None, compute: Callable[[], T]) -> T:
        now = time.monotonic()
        with self._lock:
            kept = self._values.get(tenant)
        if kept is not None and now - kept[0] < self.kept_s:
            return kept[1]
        value = compute()
        with self._lock:
            if len(self._values) > 1000:  # bounded: one entry per tenant scope seen
                self._values.clear()
            self._values[tenant] = (now, value)
        return value


class Insights:
    """One app's charts and anomaly flags, recomputed no more often than they can change."""

    def __init__(self) -> None:
        self._charts: Recent[dict[str, list[Minute]]] = Recent(CHART_KEPT_S)
        self._baselines: Recent[Baseline] = Recent(ANOMALIES_KEPT_S)
        self._failures: Recent[list[dict[str, Any]]] = Recent(FAILURES_KEPT_S)

    def charts(self, conn: psycopg.Connection, tenant: str | None) -> dict[str, list[Minute]]:
        return self._charts.get(tenant, lambda: last_hour(conn, tenant))

    def anomalies(self, conn: psycopg.Connection, tenant: str | None, live: list[dict[str, Any]]) -> list[Anomaly]:
        """The baseline's flags (recomputed once a minute) and the oldest due runs of ``live``,
        the queue figures of this poll, against it."""
        known = self._baselines.get(tenant, lambda: baseline(conn, tenant))
        return known.flagged + oldest_due_flags(live, known.usual_wait_s)

    def failure_groups(self, conn: psycopg.Connection, tenant: str | None) -> list[dict[str, Any]]:
        return self._failures.get(tenant, lambda: failure_groups(conn, tenant=tenant))

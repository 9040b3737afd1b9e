"""``GET /metrics``: the state of the installation in Prometheus' text exposition format
(version 0.0.4), read from the database at scrape time, so every API process reports the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import psycopg

from pgsched import health
from pgsched.api import store
from pgsched.beat import leader_status
from pgsched.queues import list_queues
from pgsched.quotas import list_tenants
from pgsched.runs import RUN_STATUSES

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]

# Histogram bucket bounds, in seconds: from a quick task (5 ms) to an hour-long report.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# The histograms describe the runs that finished this long ago or less.
HISTOGRAM_WINDOW_S = 300
_WINDOW_NOTE = (
    f"Over the runs that finished in the last {HISTOGRAM_WINDOW_S} s, per queue: a sliding window read at scrape "
    "time, not a counter, so use histogram_quantile() on the buckets as they are, without rate(). (A cumulative "
    "histogram would read every retained run at each scrape and shrink when old runs are pruned; the window "
    "reads only recent rows, through the finished_at index.)"
)
_HISTOGRAMS = {  # the metric column of run_duration_buckets: (name, help)
    "wait": (
        "pgsched_queue_wait_seconds",
        "How long runs waited to be claimed: from when they were due (run_at, or created_at if later) to "
        "their last start (a retried run: its last attempt's wait). " + _WINDOW_NOTE,
    ),
    "run": (
        "pgsched_run_duration_seconds",
        "How long runs ran: from their last start to their finish (succeeded, failed or cancelled). " + _WINDOW_NOTE,
    ),
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _family(name: str, help_text: str, samples: Iterable[Sample], kind: str = "gauge") -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        label_text = ",".join(f'{key}="{_escape(text)}"' for key, text in labels.items())
        lines.append(f"{name}{{{label_text}}} {_number(value)}" if label_text else f"{name} {_number(value)}")
    return lines


@dataclass
class _Buckets:
    """One queue's durations: counts per bucket (the last: above every bound) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS_S) + 1))
    total_s: float = 0.0


def _histogram(name: str, help_text: str, by_queue: dict[str, _Buckets]) -> list[str]:
    """A histogram family in the exposition format: cumulative buckets, +Inf, _sum and _count."""
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for queue, buckets in sorted(by_queue.items()):
        label = f'queue="{_escape(queue)}"'
        cumulative = 0
        for bound, runs in zip(DURATION_BUCKETS_S, buckets.counts):
            cumulative += runs
            lines.append(f'{name}_bucket{{{label},le="{bound!r}"}} {cumulative}')
        total = sum(buckets.counts)
        lines.append(f'{name}_bucket{{{label},le="+Inf"}} {total}')
        lines.append(f"{name}_sum{{{label}}} {_number(buckets.total_s)}")
        lines.append(f"{name}_count{{{label}}} {total}")
    return lines


def _duration_histograms(conn: psycopg.Connection, queues: Iterable[str]) -> list[str]:
    """Both histograms, with a series for every queue (zeros when none of its runs finished
    in the window), so series do not come and go with the traffic."""
    by_metric: dict[str, dict[str, _Buckets]] = {
        metric: {queue: _Buckets() for queue in queues} for metric in _HISTOGRAMS
    }
    row: dict[str, Any]
    for row in store.run_duration_buckets(conn, DURATION_BUCKETS_S, HISTOGRAM_WINDOW_S):
        buckets = by_metric[row["metric"]].setdefault(row["queue"], _Buckets())
        buckets.counts[row["bucket"]] += row["runs"]
        buckets.total_s += row["seconds"]
    lines: list[str] = []
    for metric, (name, help_text) in _HISTOGRAMS.items():
        lines += _histogram(name, help_text, by_metric[metric])
    return lines


def _limit_families(queues: list[dict[str, Any]]) -> list[str]:
    """Each queue's flow control: paused, its limits (a queue without one has no series), and
    the due runs they hold back now."""
    lines = _family(
        "pgsched_queue_paused",
        "1 while the queue is paused, by queue.",
        (({"queue": r["queue"]}, int(r["paused"])) for r in queues),
    )
    lines += _family(
        "pgsched_queue_held_back_runs",
        "Due runs the queue's limits (pause, max_running, rate) do not let start now, by queue.",
        (({"queue": r["queue"]}, r["held_back"]) for r in queues),
    )
    for column, name, help_text in (
        ("max_running", "pgsched_queue_max_running", "The queue's max_running, where set."),
        ("rate_per_s", "pgsched_queue_rate_per_second", "The queue's rate in run starts a second, where set."),
        ("key_max_running", "pgsched_queue_key_max_running", "The queue's key_max_running, where set."),
    ):
        lines += _family(name, help_text, (({"queue": r["queue"]}, r[column]) for r in queues if r[column] is not None))
    return lines


def _tenant_families(tenants: list[dict[str, Any]]) -> list[str]:
    """Each tenant with a quota row: its quotas (where set) and what they count now. The rows
    are few (tenants someone gave a quota), and each costs two index counts, no history."""
    lines: list[str] = []
    for column, name, help_text in (
        ("max_queued", "pgsched_tenant_max_queued", "The tenant's max_queued quota, where set."),
        ("runs_per_day", "pgsched_tenant_runs_per_day", "The tenant's runs_per_day quota, where set."),
        ("max_running", "pgsched_tenant_max_running", "The tenant's max_running, where set."),
    ):
        lines += _family(
            name, help_text, (({"tenant": r["name"]}, r[column]) for r in tenants if r[column] is not None)
        )
    for column, name, help_text in (
        ("queued", "pgsched_tenant_queued_runs", "Runs queued now, by tenant with a quota row."),
        ("running", "pgsched_tenant_running_runs", "Runs running now, by tenant with a quota row."),
        ("created_today", "pgsched_tenant_created_today", "Runs created today (UTC), as runs_per_day counts them."),
    ):
        lines += _family(name, help_text, (({"tenant": r["name"]}, r[column]) for r in tenants))
    return lines


def render(conn: psycopg.Connection) -> str:
    """Every metric, as one exposition-format document."""
    counts = store.run_counts(conn)
    queues = list_queues(conn)
    workers = store.list_workers(conn)
    by_queue: dict[str, dict[str, int]] = {}
    for row in counts:
        by_queue.setdefault(row["queue"], dict.fromkeys(RUN_STATUSES, 0))[row["status"]] = row["runs"]
    lines = _family(
        "pgsched_runs",
        "Runs by queue and status (every status listed, zeros included): queued and running, the runs "
        "there are now; succeeded, failed and cancelled, the runs that ended so in the last hour (from the "
        "per-minute rollup the beat leader recounts each maintenance round, so up to a round behind). No "
        "scrape counts the run history.",
        (
            ({"queue": queue, "status": status}, value)
            for queue, statuses in sorted(by_queue.items())
            for status, value in statuses.items()
        ),
    )
    lines += _family(
        "pgsched_queue_due_runs",
        "Queued runs that are due now, by queue.",
        (({"queue": row["queue"]}, row["due"]) for row in queues),
    )
    lines += _family(
        "pgsched_queue_oldest_due_age_seconds",
        "How long the oldest due run has waited, by queue.",
        (({"queue": row["queue"]}, row["oldest_queued_age_s"] or 0.0) for row in queues),
    )
    lines += _family(
        "pgsched_queue_succeeded_last_hour",
        "Runs that succeeded in the last hour, by queue.",
        (({"queue": row["queue"]}, row["succeeded_last_hour"]) for row in queues),
    )
    lines += _limit_families(queues)
    lines += _tenant_families(list_tenants(conn))
    lines += _family("pgsched_workers", "Live workers.", [({}, len(workers))])
    lines += _family(
        "pgsched_worker_slots",
        "Runs the live workers can hold at once.",
        [({}, sum(w["concurrency"] for w in workers))],
    )
    lines += _family(
        "pgsched_worker_running_runs", "Runs the live workers hold now.", [({}, sum(w["running"] for w in workers))]
    )
    lines += _duration_histograms(conn, by_queue)
    # Every queue a run or a worker row names, so a queue whose workers all died keeps its series.
    known = {*by_queue, *(row["queue"] for row in queues), *(queue for w in workers for queue in w["queues"])}
    lines += _vital_signs(conn, sorted(known), queues)
    return "\n".join(lines) + "\n"


def _per_queue(name: str, help_text: str, queues: Iterable[str], values: dict[str, float]) -> list[str]:
    """A gauge with a series for every queue (zero where ``values`` has none), so an alert on it
    sees a queue that has gone quiet rather than a series that vanished."""
    return _family(name, help_text, (({"queue": queue}, values.get(queue, 0)) for queue in queues))


def _vital_signs(conn: psycopg.Connection, known: list[str], queues: list[dict[str, Any]]) -> list[str]:
    """What deploy/prometheus/alerts.yml, the dashboard and an autoscaler read besides the counts."""
    return _queue_vital_signs(conn, known, queues) + _cluster_vital_signs(conn)


def _queue_vital_signs(conn: psycopg.Connection, known: list[str], queues: list[dict[str, Any]]) -> list[str]:
    """Per queue: the last minute's outcomes, live workers, expired leases, wanted workers."""
    live = health.live_workers_by_queue(conn)  # its queues are among ``known``: every worker row's are
    expired = health.expired_leases_by_queue(conn)
    wanted = health.desired_workers(conn, health.runs_per_worker(known, live))
    by_name = {row["queue"]: row for row in queues}
    lines: list[str] = []
    for outcome, note in (("succeeded", "."), ("failed", " (attempts used up; a retried attempt is not counted).")):
        lines += _per_queue(
            f"pgsched_queue_{outcome}_last_minute",
            f"Runs that ended {outcome} in the last minute, by queue{note}",
            known,
            {q: row[f"{outcome}_last_minute"] for q, row in by_name.items()},
        )
    lines += _per_queue(
        "pgsched_queue_live_workers",
        f"Workers serving the queue that heartbeated in the last {health.LIVE_WORKER_S:g} s.",
        known,
        {q: row["workers"] for q, row in live.items()},
    )
    lines += _per_queue(
        "pgsched_queue_lease_expired_runs",
        "Running runs whose lease ran out and that no sweep has rescued yet, by queue.",
        known,
        {q: row["runs"] for q, row in expired.items()},
    )
    lines += _per_queue(
        "pgsched_queue_lease_expired_seconds",
        "How long ago the oldest unrescued lease of the queue ran out (0: none).",
        known,
        {q: row["oldest_s"] for q, row in expired.items()},
    )
    lines += _per_queue(
        "pgsched_queue_desired_workers",
        "Workers the queue's backlog wants: pgsched.desired_workers(queue, per_worker), per_worker being "
        f"the largest concurrency of its live workers (else the default, {health.DEFAULT_RUNS_PER_WORKER}).",
        known,
        {q: float(n) for q, n in wanted.items()},
    )
    return lines


def _cluster_vital_signs(conn: psycopg.Connection) -> list[str]:
    """The beat leader, the oldest open transaction and what it leaves for vacuum."""
    oldest = health.oldest_transaction(conn)
    vacuum = health.run_table_vacuum_state(conn)
    return (
        _family(
            "pgsched_beat_leader",
            "1 while a beat holds the leader lock (it fires jobs and rescues expired leases), else 0.",
            [({}, float(leader_status(conn) is not None))],
        )
        + _family(
            "pgsched_database_oldest_transaction_seconds",
            "Age of the database's oldest open transaction (prepared ones included); 0: none.",
            [({}, oldest.age_s)],
        )
        + _family(
            "pgsched_database_oldest_xmin_age",
            "How many transactions back the oldest open transaction (or a replication slot) holds vacuum's horizon.",
            [({}, float(oldest.xmin_age))],
        )
        + _family(
            "pgsched_runs_dead_tuples",
            "Dead row versions in pgsched.runs (pg_stat_user_tables' estimate): they pile up while a transaction "
            "holds vacuum's horizon back.",
            [({}, float(vacuum.dead_tuples))],
        )
        + _family(
            "pgsched_runs_claim_index_bytes",
            "Size of the claim index (runs_claim_idx): a few pages while vacuum keeps up; it grows with every "
            "run claimed while the horizon is held back.",
            [({}, float(vacuum.claim_index_bytes))],
        )
        + _family(
            "pgsched_history_default_rows",
            f"Finished runs in runs_history's DEFAULT partition (counted up to {health.HISTORY_DEFAULT_CAP}): runs of "
            "a day without a partition. 0 while the beat leader creates day partitions ahead.",
            [({}, float(health.history_default_rows(conn)))],
        )
    )

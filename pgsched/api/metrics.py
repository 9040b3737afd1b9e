"""``GET /metrics``: the state of the installation in Prometheus' text exposition format
(version 0.0.4), read from the database at scrape time, so every API process reports the same.
"""

from __future__ import annotations

from typing import Iterable

import psycopg

from pgsched import admin
from pgsched.api import store

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Sample = tuple[dict[str, str], float]


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


def render(conn: psycopg.Connection) -> str:
    """Every metric, as one exposition-format document."""
    counts = store.run_counts(conn)
    queues = admin.queue_stats(conn)
    workers = store.list_workers(conn)
    by_queue: dict[str, dict[str, int]] = {}
    for row in counts:
        by_queue.setdefault(row["queue"], dict.fromkeys(admin.RUN_STATUSES, 0))[row["status"]] = row["runs"]
    lines = _family("pgsched_runs", "Runs by queue and status (every status listed, zeros included).", (
        ({"queue": queue, "status": status}, value)
        for queue, statuses in sorted(by_queue.items()) for status, value in statuses.items()))
    lines += _family("pgsched_queue_due_runs", "Queued runs that are due now, by queue.", (
        ({"queue": row["queue"]}, row["due"]) for row in queues))
    lines += _family("pgsched_queue_oldest_due_age_seconds", "How long the oldest due run has waited, by queue.", (
        ({"queue": row["queue"]}, row["oldest_queued_age_s"] or 0.0) for row in queues))
    lines += _family("pgsched_queue_succeeded_last_hour", "Runs that succeeded in the last hour, by queue.", (
        ({"queue": row["queue"]}, row["succeeded_last_hour"]) for row in queues))
    lines += _family("pgsched_workers", "Live workers.", [({}, len(workers))])
    lines += _family("pgsched_worker_slots", "Runs the live workers can hold at once.", [
        ({}, sum(w["concurrency"] for w in workers))])
    lines += _family("pgsched_worker_running_runs", "Runs the live workers hold now.", [
        ({}, sum(w["running"] for w in workers))])
    return "\n".join(lines) + "\n"

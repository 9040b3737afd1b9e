"""What the alert and dashboard tests share: promtool (Debian's `prometheus` package; .ci/run
installs it), the metric names a PromQL expression reads, and the ones a real /metrics serves."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.support.api import Api
from tests.support.beat import a_beat_leading
from tests.support.metrics import metric_samples

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

_METRIC = re.compile(r"\bpgsched_[a-z_]+\b")
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS``; the test skips where promtool is not installed (CI installs it)."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60)


def metric_names_in(expression: str) -> set[str]:
    """The pgsched metric families an expression reads (a histogram's _bucket/_sum/_count as
    the histogram's name)."""
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in _METRIC.findall(expression)}


def scraped_metric_names(api: Api, conn: psycopg.Connection, dsn: str) -> set[str]:
    """The metric families a real /metrics serves, with a queue, a worker and a leader present,
    so every per-queue family has a series."""
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'mail')")
    conn.execute("INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('h', 1, '{mail}', 8)")
    with a_beat_leading(dsn):
        samples = metric_samples(api)
    return {_HISTOGRAM_SUFFIX.sub("", name) for name in samples}

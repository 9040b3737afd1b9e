"""bench_app in a worker that has imported OpenTelemetry's API and configured no SDK: what a
service with ``pgsched[otel]`` installed, but not tracing, pays (benchmarks/tracing.py)."""

from __future__ import annotations

import opentelemetry.trace  # noqa: F401 - imported is the point: pgsched/tracing.py looks for it

from benchmarks.bench_app import app

__all__ = ["app"]

"""bench_app in a worker traced by OpenTelemetry's SDK whose exporter drops every span: the cost
of recording a span per run, without a collector's (benchmarks/tracing.py)."""

from __future__ import annotations

from typing import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from benchmarks.bench_app import app

__all__ = ["app"]


class DropSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(BatchSpanProcessor(DropSpans()))  # what a production setup uses
trace.set_tracer_provider(provider)

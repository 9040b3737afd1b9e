"""The App tests/test_tracing.py runs in real worker processes, traced by OpenTelemetry's SDK.

Every span this process (or a process-pool child of it) finishes is kept by the SDK's
in-memory exporter and appended, as one JSON line, to the file named by ``$PGSCHED_TEST_SPANS``,
which the test reads. Each task logs a line, so the test can read what a line about a run says.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pgsched import App

logger = logging.getLogger("tests.tracing_app")


class FileExporter(InMemorySpanExporter):
    """The in-memory exporter, which also appends each span to $PGSCHED_TEST_SPANS as it ends
    (the test cannot reach this process's memory)."""

    _lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = super().export(spans)
        with self._lock, open(os.environ["PGSCHED_TEST_SPANS"], "a") as out:
            for span in spans:
                out.write(json.dumps(_as_dict(span)) + "\n")
        return result


def _as_dict(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "links": [[f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}"] for link in span.links],
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [{"name": event.name, **dict(event.attributes or {})} for event in span.events],
        "pid": os.getpid(),
    }


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
trace.set_tracer_provider(provider)

app = App()


@app.task
async def traced_parent() -> None:
    """Queues traced_child from an async task (the asyncio enqueue)."""
    logger.warning("parent ran")
    await app.enqueue_async("traced_child", {})


@app.task(pool="process")
def traced_child() -> None:
    """Runs in a process-pool child; queues traced_leaf there (the sync enqueue)."""
    logger.warning("child ran")
    app.enqueue("traced_leaf", {})


@app.task
def traced_leaf() -> None:
    """A sync task in the worker's thread pool."""
    logger.warning("leaf ran")


@app.task(max_attempts=2, retry_backoff=0)
def traced_fails() -> None:
    raise ValueError("it broke")


@app.task
def untraced() -> None:
    return None

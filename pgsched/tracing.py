"""Tracing: every OpenTelemetry touch of pgsched, which is optional (``pgsched[otel]``).

A run keeps the W3C traceparent of the code that queued it (``runs.trace_context``): the
current span's when OpenTelemetry has one, else the :class:`pgsched.context.Origin`'s (an API
request's ``traceparent`` header, the span of the run a process-pool child executes). The
worker runs each attempt in a ``process {queue}`` CONSUMER span: a child of that context on
the first attempt, a new trace with a link to it on a retry (a retry is not part of the
request that queued the run, which may have ended hours ago).

OpenTelemetry is imported only once the process has imported it: code that never did has no
span to continue and no SDK to record one, so the hot path then pays a dict lookup. With the
API and no SDK the worker makes no span at all (nothing would record it), and runs a task
queues still continue its run's stored context, as a non-recording span would have passed on.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Iterator

from pgsched.context import Origin, enter_origin, leave_origin, origin
from pgsched.run_types import ClaimedRun, Outcome

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

_OTEL = "opentelemetry.trace"
# W3C trace-context: version-trace id-span id-flags, lowercase hex (schema 0015 checks the same).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16


def valid_traceparent(value: str | None) -> str | None:
    """``value`` if it is a W3C traceparent naming a trace and a span, else None (ignored, as
    the W3C spec says a receiver treats a malformed one)."""
    if value is None or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match[1] == _NO_TRACE or match[2] == _NO_SPAN or value.startswith("ff"):
        return None
    return value


def current_traceparent() -> str | None:
    """The trace context an enqueue made here stores on its run (None: none to continue)."""
    if _OTEL in sys.modules:
        traceparent = _span_traceparent()
        if traceparent is not None:
            return traceparent
    return origin().traceparent


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, for log lines; None without one."""
    if _OTEL not in sys.modules:
        return None
    traceparent = _span_traceparent()
    return None if traceparent is None else (traceparent[3:35], traceparent[36:52])


def _span_traceparent() -> str | None:
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@contextmanager
def continued(request_id: str | None, traceparent: str | None) -> Iterator[None]:
    """Enqueues made inside come from this request and continue this trace (an API request
    with its X-Request-ID and ``traceparent`` header)."""
    token = enter_origin(Origin(request_id, valid_traceparent(traceparent)))
    try:
        yield
    finally:
        leave_origin(token)


class RunSpan:
    """One attempt's span (None inside when no SDK records spans here) and how it ends."""

    __slots__ = ("span",)

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def record(self, outcome: Outcome) -> None:
        """A failed attempt (retried or not) marks the span as an error, with the exception."""
        if self.span is None or not self.span.is_recording():
            return
        self.span.set_attribute("pgsched.run.status", outcome.status)
        if outcome.error is not None and outcome.status in ("failed", "queued"):
            _record_error(self.span, outcome.error)


# Reusable: entering and leaving a nullcontext costs a tenth of a generator's context manager.
_UNRECORDED = nullcontext(RunSpan(None))


def run_span(run: ClaimedRun, worker_id: int) -> AbstractContextManager[RunSpan]:
    """The span an attempt of ``run`` executes in, current inside (sync tasks in threads and
    runs the task queues see it)."""
    if _OTEL not in sys.modules or not _recording():
        # Nothing would record the span. The run's own context still reaches the runs it queues:
        # enter_run made it the Origin's, as a non-recording span would have passed it on.
        return _UNRECORDED
    return _recorded_span(run, worker_id)


@contextmanager
def _recorded_span(run: ClaimedRun, worker_id: int) -> Iterator[RunSpan]:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    parent = _span_context(run.trace_context)
    first = run.attempt <= 1
    # No parent: a new trace, whatever span is current where the worker starts the run.
    context = otel_context.Context()
    if parent is not None and first:
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent), context)
    links = [trace.Link(parent)] if parent is not None and not first else None
    with _tracer().start_as_current_span(
        f"process {run.queue}",
        context=context,
        kind=trace.SpanKind.CONSUMER,
        links=links,
        attributes=_attributes(run, worker_id),
        record_exception=False,  # execute() never raises but to cancel; the outcome says how it went
        set_status_on_exception=False,
    ) as span:
        yield RunSpan(span)


@contextmanager
def span_continued(traceparent: str | None) -> Iterator[None]:
    """Inside a process-pool child: the worker's span of this run is current, so the task's own
    spans are its children and runs the task queues continue its trace (without OpenTelemetry
    here, :func:`pgsched.context.enter_run` keeps the traceparent for those runs)."""
    parent = _span_context(traceparent) if _OTEL in sys.modules else None
    if parent is None:
        yield
        return
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    token = otel_context.attach(trace.set_span_in_context(trace.NonRecordingSpan(parent)))
    try:
        yield
    finally:
        otel_context.detach(token)


def _attributes(run: ClaimedRun, worker_id: int) -> dict[str, Any]:
    # OpenTelemetry's messaging conventions, plus pgsched's own names for what they lack.
    return {
        "messaging.system": "pgsched",
        "messaging.operation.type": "process",
        "messaging.destination.name": run.queue,
        "messaging.message.id": str(run.id),
        "pgsched.run.id": run.id,
        "pgsched.task": run.task,
        "pgsched.run.attempt": run.attempt,
        "pgsched.run.max_attempts": run.max_attempts,
        "pgsched.worker.id": worker_id,
    }


def _span_context(traceparent: str | None) -> SpanContext | None:
    """The remote span a stored traceparent names (None: none, or not a valid one)."""
    if traceparent is None or valid_traceparent(traceparent) is None:
        return None
    from opentelemetry.trace import SpanContext, TraceFlags

    return SpanContext(
        trace_id=int(traceparent[3:35], 16),
        span_id=int(traceparent[36:52], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(traceparent[53:55], 16)),
    )


def _record_error(span: Span, error_json: str) -> None:
    from opentelemetry.trace import Status, StatusCode

    entry = json.loads(error_json)
    span.set_status(Status(StatusCode.ERROR, f"{entry.get('type')}: {entry.get('message')}"))
    span.add_event(
        "exception",
        {
            "exception.type": str(entry.get("type")),
            "exception.message": str(entry.get("message")),
            "exception.stacktrace": entry.get("traceback") or "",
        },
    )


_sdk_seen = False
_sdk_checked_at = -math.inf
SDK_CHECK_INTERVAL_S = 1.0


def _recording() -> bool:
    """Whether an SDK records spans here: a tracer provider other than the API's placeholders.
    A provider is set once per process, so a yes is kept; a no is checked again after
    SDK_CHECK_INTERVAL_S (get_tracer_provider reads os.environ: ~3 us, a twentieth of a run)."""
    global _sdk_seen, _sdk_checked_at
    if _sdk_seen:
        return True
    now = time.monotonic()
    if now - _sdk_checked_at < SDK_CHECK_INTERVAL_S:
        return False
    _sdk_checked_at = now
    from opentelemetry import trace

    _sdk_seen = not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _sdk_seen


@functools.cache
def _tracer() -> Any:
    """One tracer per process: a proxy until an SDK is configured, then the SDK's."""
    from opentelemetry import trace

    import pgsched

    return trace.get_tracer("pgsched", pgsched.__version__)

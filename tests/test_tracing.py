"""Traces from enqueue to execution (pgsched/tracing.py) and log lines that name their run and
request (pgsched/logs.py), read from real worker and API processes: the worker runs
tests/tracing_app.py, whose OpenTelemetry SDK writes every finished span to a file."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from pgsched import App
from pgsched.context import Origin, RunContext, enter_origin, leave_origin
from pgsched.logs import TEXT_FORMAT, CorrelationFilter, JsonFormatter, about
from tests.support.api import Api, ok, serving_api
from tests.support.cli import run_cli
from tests.support.db import scalar
from tests.support.workers import Workers, status_of

TRACING_APP = "tests.tracing_app:app"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def remote_span(trace_id: str = TRACE_ID, span_id: str = SPAN_ID) -> NonRecordingSpan:
    """A caller's span as this test process sees it (it records none: no SDK here)."""
    return NonRecordingSpan(SpanContext(int(trace_id, 16), int(span_id, 16), is_remote=True, trace_flags=TraceFlags(1)))


def spans(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def span_of(path: Path, run_id: int) -> list[dict[str, Any]]:
    """The worker's spans for ``run_id``, one per attempt, in the order they ended."""
    return [s for s in spans(path) if s["attributes"].get("pgsched.run.id") == run_id]


@pytest.fixture
def span_file(tmp_path: Path) -> Path:
    return tmp_path / "spans.jsonl"


@pytest.fixture
def traced_workers(workers: Workers, span_file: Path) -> Iterator[Workers]:
    """One worker of tests/tracing_app.py (JSON logs, a process pool for traced_child)."""
    workers.start(log_format="json", app=TRACING_APP, env={"PGSCHED_TEST_SPANS": str(span_file)})
    yield workers


def run_of(conn: psycopg.Connection, task: str, request_id: str) -> int | None:
    return scalar(conn, "SELECT id FROM pgsched.runs_all WHERE task = %s AND request_id = %s", (task, request_id))


def trace_context_of(conn: psycopg.Connection, run_id: int) -> str | None:
    return scalar(conn, "SELECT trace_context FROM pgsched.runs_all WHERE id = %s", (run_id,))


def test_one_trace_runs_from_an_http_request_through_its_run_to_the_runs_it_queued(
    dsn: str, conn: psycopg.Connection, traced_workers: Workers, span_file: Path
) -> None:
    with serving_api("--dsn", dsn, "--no-auth") as (url, _):
        response = httpx.post(
            f"{url}/runs",
            json={"task": "traced_parent"},
            headers={"traceparent": TRACEPARENT, "X-Request-ID": "checkout-42"},
        )
        run = ok(response, 201)
    assert response.headers["x-request-id"] == "checkout-42"
    assert (run["trace_context"], run["request_id"]) == (TRACEPARENT, "checkout-42")

    # parent (async, event loop) -> child (sync, process-pool child) -> leaf (sync, thread pool)
    leaf = traced_workers.wait_until(lambda: run_of(conn, "traced_leaf", "checkout-42"), 30, "the leaf run queued")
    traced_workers.wait_until(lambda: status_of(conn, leaf) == "succeeded", 30, "the leaf run to succeed")
    child = run_of(conn, "traced_child", "checkout-42")
    assert child is not None
    traced_workers.wait_until(lambda: len(span_of(span_file, leaf)) == 1, 10, "the leaf's span")
    [parent_span], [child_span], [leaf_span] = (span_of(span_file, r) for r in (run["id"], child, leaf))

    assert {s["trace_id"] for s in (parent_span, child_span, leaf_span)} == {TRACE_ID}
    assert parent_span["parent_id"] == SPAN_ID  # the API caller's span
    assert child_span["parent_id"] == parent_span["span_id"]  # queued by the parent's task
    assert leaf_span["parent_id"] == child_span["span_id"]  # queued inside a process-pool child
    assert trace_context_of(conn, child) == f"00-{TRACE_ID}-{parent_span['span_id']}-01"
    worker_id = traced_workers.started[0].worker_id
    assert parent_span["name"] == "process default" and parent_span["kind"] == "CONSUMER"
    assert parent_span["status"] == "UNSET"
    assert parent_span["attributes"] == {
        "messaging.system": "pgsched",
        "messaging.operation.type": "process",
        "messaging.destination.name": "default",
        "messaging.message.id": str(run["id"]),
        "pgsched.run.id": run["id"],
        "pgsched.task": "traced_parent",
        "pgsched.run.attempt": 1,
        "pgsched.run.max_attempts": 3,
        "pgsched.worker.id": worker_id,
        "pgsched.run.status": "succeeded",
    }

    # Each task's own log line names its run, the request and its span (JSON fields).
    lines = [json.loads(line) for line in traced_workers.started[0].log().splitlines() if line.startswith("{")]
    logged = {line["message"]: line for line in lines if line["logger"] == "tests.tracing_app"}
    for message, run_id, task, span in (
        ("parent ran", run["id"], "traced_parent", parent_span),
        ("child ran", child, "traced_child", child_span),
        ("leaf ran", leaf, "traced_leaf", leaf_span),
    ):
        line = logged[message]
        assert (line["run_id"], line["task"], line["queue"], line["attempt"]) == (run_id, task, "default", 1)
        assert (line["worker_id"], line["request_id"]) == (worker_id, "checkout-42")
        assert (line["trace_id"], line["span_id"]) == (TRACE_ID, span["span_id"])


def test_a_retry_is_a_new_trace_linked_to_the_enqueue_and_its_errors_are_on_the_spans(
    app: App, conn: psycopg.Connection, traced_workers: Workers, span_file: Path
) -> None:
    with trace.use_span(remote_span()):
        run_id = app.enqueue("traced_fails", max_attempts=2)  # this app does not know the task
    untraced = app.enqueue("untraced")  # no caller's span (as a beat fire): a new trace
    traced_workers.wait_until(lambda: status_of(conn, run_id) == "failed", 30, "the run to fail twice")
    traced_workers.wait_until(lambda: len(span_of(span_file, run_id)) == 2, 10, "a span per attempt")
    first, retry = span_of(span_file, run_id)

    assert (first["trace_id"], first["parent_id"], first["links"]) == (TRACE_ID, SPAN_ID, [])
    assert retry["trace_id"] != TRACE_ID and retry["parent_id"] is None
    assert retry["links"] == [[TRACE_ID, SPAN_ID]]
    assert [s["attributes"]["pgsched.run.attempt"] for s in (first, retry)] == [1, 2]
    for span, status in ((first, "queued"), (retry, "failed")):
        assert span["status"] == "ERROR" and span["attributes"]["pgsched.run.status"] == status
        [event] = span["events"]
        assert (event["name"], event["exception.type"], event["exception.message"]) == (
            "exception",
            "ValueError",
            "it broke",
        )
        assert "raise ValueError" in event["exception.stacktrace"]

    traced_workers.wait_until(lambda: len(span_of(span_file, untraced)) == 1, 30, "the untraced run's span")
    [fresh] = span_of(span_file, untraced)
    assert fresh["parent_id"] is None and fresh["links"] == [] and fresh["trace_id"] != TRACE_ID


def test_every_python_enqueue_path_keeps_the_callers_trace_context(app: App, conn: psycopg.Connection) -> None:
    app.task(name="noop")(lambda: None)

    async def enqueue_async() -> list[int]:
        ids = [await app.enqueue_async("noop"), *await app.enqueue_many_async("noop", [{}])]
        await app.aclose()
        return ids

    with trace.use_span(remote_span()):
        ids = [app.enqueue("noop"), *app.enqueue_many("noop", [{}, {}]), *asyncio.run(enqueue_async())]
    outside = [app.enqueue("noop"), *app.enqueue_many("noop", [{}])]
    stored = dict(conn.execute("SELECT id, trace_context FROM pgsched.runs_all").fetchall())
    assert [stored[i] for i in ids] == [TRACEPARENT] * 5
    assert [stored[i] for i in outside] == [None, None]


def test_the_sql_function_takes_a_trace_context_and_refuses_a_malformed_one(conn: psycopg.Connection) -> None:
    run_id = scalar(conn, "SELECT pgsched.enqueue_v2('noop', trace_context => %s)", (TRACEPARENT,))
    assert trace_context_of(conn, run_id) == TRACEPARENT
    assert trace_context_of(conn, scalar(conn, "SELECT pgsched.enqueue_v2('noop')")) is None
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="trace_context must be a W3C traceparent"):
        conn.execute("SELECT pgsched.enqueue_v2('noop', trace_context => 'not-a-traceparent')")
    # A plain INSERT meets the table's checks: nothing unreadable is ever stored.
    with pytest.raises(psycopg.errors.CheckViolation, match="run_trace_context_must_be_a_w3c_traceparent"):
        conn.execute("INSERT INTO pgsched.runs (task, trace_context) VALUES ('noop', 'x')")
    with pytest.raises(psycopg.errors.CheckViolation, match="run_request_id_must_be_1_to_128_visible"):
        conn.execute("INSERT INTO pgsched.runs (task, request_id) VALUES ('noop', E'a\\nb')")


def test_the_api_takes_or_makes_a_request_id_returns_it_and_its_runs_keep_it(api: Api, dsn: str) -> None:
    given = api.post("/runs", json={"task": "noop"}, headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123" and ok(given, 201)["request_id"] == "abc-123"
    shown = run_cli(dsn, "runs", "show", str(given.json()["id"]), "--json")
    assert json.loads(shown.stdout)["request_id"] == "abc-123", shown.stderr
    made = api.post("/runs", json={"task": "noop"})
    request_id = made.headers["x-request-id"]
    assert len(request_id) == 32 and ok(made, 201)["request_id"] == request_id
    batch = ok(api.post("/runs/batch", json={"task": "noop", "args": [{}, {}]}, headers={"X-Request-ID": "b-1"}), 201)
    for run_id in batch["ids"]:
        assert ok(api.get(f"/runs/{run_id}"))["request_id"] == "b-1"
    assert api.get("/health", as_=None).headers["x-request-id"]  # every response has one


@pytest.mark.parametrize(
    "header",
    ["x" * 129, "has space", "tab\there", "caf\u00e9", "\x7f"],
    ids=["too-long", "space", "control", "not-ascii", "del"],
)
def test_an_unusable_request_id_is_replaced_never_stored_or_refused(api: Api, header: str) -> None:
    response = api.post("/runs", json={"task": "noop"}, headers=[("X-Request-ID", header.encode("latin-1"))])
    run = ok(response, 201)
    assert run["request_id"] == response.headers["x-request-id"] != header
    assert len(run["request_id"]) == 32


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{'0' * 32}-{SPAN_ID}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"ff-{TRACE_ID}-{SPAN_ID}-01",
        "00-xyz",
        "x" * 5000,
    ],
    ids=["zero-trace", "zero-span", "version-ff", "short", "huge"],
)
def test_a_malformed_traceparent_is_ignored(api: Api, traceparent: str) -> None:
    run = ok(api.post("/runs", json={"task": "noop"}, headers={"traceparent": traceparent}), 201)
    assert run["trace_context"] is None


def format_both(record: logging.LogRecord) -> tuple[str, dict[str, Any]]:
    CorrelationFilter().filter(record)
    return logging.Formatter(TEXT_FORMAT).format(record), json.loads(JsonFormatter().format(record))


def test_a_line_about_a_run_names_it_as_fields_in_json_and_as_a_suffix_in_text() -> None:
    run = RunContext(7, "send", 2, 3, queue="mail", worker_id=4, request_id="r-1")
    record = logging.LogRecord("pgsched.worker", logging.INFO, "", 0, "run 7 released", None, None)
    record.__dict__.update(about(run))
    with trace.use_span(remote_span()):
        text, entry = format_both(record)
    assert text.endswith(
        f"run 7 released [run=7 task=send queue=mail attempt=2 worker=4 request=r-1 trace={TRACE_ID} span={SPAN_ID}]"
    )
    assert {
        k: entry[k] for k in ("run_id", "task", "queue", "attempt", "worker_id", "request_id", "trace_id", "span_id")
    } == {
        "run_id": 7,
        "task": "send",
        "queue": "mail",
        "attempt": 2,
        "worker_id": 4,
        "request_id": "r-1",
        "trace_id": TRACE_ID,
        "span_id": SPAN_ID,
    }
    token = enter_origin(Origin(request_id="only-a-request"))
    try:
        text, entry = format_both(logging.LogRecord("pgsched.api", logging.INFO, "", 0, "hello", None, None))
    finally:
        leave_origin(token)
    assert text.endswith("hello [request=only-a-request]") and entry["request_id"] == "only-a-request"
    text, entry = format_both(logging.LogRecord("pgsched", logging.INFO, "", 0, "plain", None, None))
    assert text.endswith(": plain") and "run_id" not in entry


def test_pgsched_never_imports_opentelemetry_itself(dsn: str) -> None:
    """Installed or not, OpenTelemetry costs nothing to a process that does not use it."""
    script = (
        "import sys, pgsched, pgsched.worker, pgsched.api.app, pgsched.logs\n"
        "app = pgsched.App(sys.argv[1]); app.task(name='noop')(lambda: None)\n"
        "app.enqueue('noop'); app.enqueue_many('noop', [{}]); app.close()\n"
        "assert not [m for m in sys.modules if m.startswith('opentelemetry')], 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", script, dsn], check=True, timeout=60)

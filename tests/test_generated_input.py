"""Bad input found by a machine, not by hand (issue #11): hypothesis generates values for every
field of the Python API, the CLI (enqueue, jobs add, runs list), the SQL function and a plain
INSERT of a run or a job, and each example must end one of two ways — refused with a clear
error and nothing written, or accepted and every reader (run detail and list, queue figures,
/metrics, a beat round) still works."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from pgsched.api.metrics import render as render_metrics
from pgsched.app import App
from pgsched.beat import fire_due_jobs
from pgsched.errors import PgschedError
from pgsched.instants import READER_ADAPTERS
from pgsched.jobs import list_jobs
from pgsched.queues import list_queues
from pgsched.runs import get_run, list_runs
from tests.support.cli import cli_in_process
from tests.support.db import scalar
from tests.support.generated import EXAMPLES

# Every offset a timezone can have, and instants from the far past to the far future.
offsets = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60))
EDGES = [
    datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),  # year 10000 in UTC
    datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),  # 1 BC in UTC
    datetime.max.replace(tzinfo=timezone.utc),
    datetime.min.replace(tzinfo=timezone.utc),
]
instants = st.sampled_from(EDGES) | st.datetimes(timezones=offsets)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
clean_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_characters="\x00")),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)


def mostly(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A valid value nine times in ten: most examples then reach the readers, not a first check
    (with each field as likely bad as good, 1 example in 150 got past the SQL function)."""
    return st.integers(0, 9).flatmap(lambda draw: valid if draw else anything)


names = st.sampled_from(["default", "emails", "a.b:c-d_e", "-x", " ", "x" * 64]) | st.text(max_size=70)
task_names = mostly(st.from_regex(r"[a-z][a-z_.]{0,30}", fullmatch=True), names)
queue_names = mostly(st.sampled_from(["default", "emails", "a.b:c-d_e", "Q" * 63]), names)
keys = mostly(st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=20).filter(str.strip), names)
args_objects = mostly(st.dictionaries(st.text(max_size=8), clean_json, max_size=4), json_values)
priorities = mostly(st.integers(-100, 100), st.integers(-(2**40), 2**40))
attempts = mostly(st.integers(1, 25), st.integers(-(2**40), 2**40))
due = mostly(st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=offsets), instants)
seconds = mostly(st.floats(0, 3600), st.floats() | st.integers(-(10**12), 10**12))
sql_instants = mostly(
    due.map(lambda t: t.isoformat()),
    st.sampled_from(["infinity", "-infinity", "4000-01-01 00:00Z BC", "294276-12-31 23:59:59Z", "now"]),
)


def readers_still_work(conn: psycopg.Connection) -> None:
    """What the API, the CLI and /metrics read: none of it may fail on what was accepted."""
    for run in list_runs(conn, limit=1000):
        get_run(conn, run["id"])
    list_queues(conn)
    render_metrics(conn)
    list_jobs(conn)


def insert_or_refuse(conn: psycopg.Connection, table: str, fixed: dict[str, Any], fields: dict[str, Any]) -> bool:
    """INSERT one row of ``fixed`` and the given (not None) ``fields``; True if accepted. A
    refusal must be a data exception (class 22) or a broken constraint (23): the value, named."""
    row = fixed | {name: value for name, value in fields.items() if value is not None}
    marks = ", ".join(f"%({name})s" for name in row)
    try:
        conn.execute(f"INSERT INTO pgsched.{table} ({', '.join(row)}) VALUES ({marks})".encode(), row)
    except psycopg.Error as exc:
        event("refused")
        # A DataError without a SQLSTATE is psycopg refusing to send a NUL: nothing reached the server.
        assert isinstance(exc, psycopg.DataError) or (exc.sqlstate or "")[:2] in {"22", "23"}, exc
        return False
    event("accepted")
    return True


def empty(conn: psycopg.Connection) -> None:
    conn.execute("TRUNCATE pgsched.runs, pgsched.jobs RESTART IDENTITY CASCADE")


@pytest.fixture
def reader(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True, context=READER_ADAPTERS) as conn:
        yield conn


@EXAMPLES
@given(
    task=task_names,
    args=args_objects,
    queue=st.none() | queue_names,
    priority=st.none() | priorities,
    max_attempts=st.none() | attempts,
    run_at=st.none() | due,
    delay=st.none() | seconds,
    unique_key=st.none() | keys,
)
def test_python_enqueue_refuses_cleanly_or_every_reader_reads_the_run(
    reader: psycopg.Connection, dsn: str, **fields: Any
) -> None:
    empty(reader)
    app = App(dsn)
    try:
        app.enqueue(fields.pop("task"), fields.pop("args"), **fields)
        event("accepted")
    except PgschedError:
        event("refused")
        assert scalar(reader, "SELECT count(*) FROM pgsched.runs_all") == 0, "refused, yet written"
    finally:
        app.close()
    readers_still_work(reader)


@EXAMPLES
@given(
    task=task_names,
    args=args_objects,
    queue=queue_names,
    priority=mostly(st.integers(-100, 100), st.none() | st.integers(-(2**31), 2**31 - 1)),
    run_at=sql_instants,
    max_attempts=mostly(st.integers(1, 25), st.none() | st.integers(-(2**31), 2**31 - 1)),
    unique_key=st.none() | keys,
)
def test_sql_enqueue_refuses_with_a_data_or_constraint_error_or_every_reader_reads_the_run(
    reader: psycopg.Connection, **fields: Any
) -> None:
    empty(reader)
    fields["args"] = None if fields["args"] is None else json.dumps(fields["args"])
    try:
        reader.execute(
            "SELECT pgsched.enqueue(task => %(task)s, args => %(args)s::jsonb, queue => %(queue)s,"
            " priority => %(priority)s, run_at => %(run_at)s::timestamptz, max_attempts => %(max_attempts)s,"
            " unique_key => %(unique_key)s)",
            fields,
        )
        event("accepted")
    except psycopg.Error as exc:
        event("refused")
        # Class 22 (data exception) or 23 (integrity constraint): the value, named; never a crash.
        # A DataError without a SQLSTATE is psycopg refusing to send a NUL: nothing reached the server.
        assert isinstance(exc, psycopg.DataError) or (exc.sqlstate or "")[:2] in {"22", "23"}, exc
        assert scalar(reader, "SELECT count(*) FROM pgsched.runs_all") == 0, "refused, yet written"
    readers_still_work(reader)


@EXAMPLES
@given(
    status=st.none() | mostly(st.just("queued"), st.sampled_from(["running", "succeeded", "failed", "cancelled"])),
    attempt=st.none() | mostly(st.just(0), st.integers(-(2**31), 2**31 - 1)),
    run_at=st.none() | sql_instants,
    created_at=st.none() | sql_instants,
    started_at=st.none() | sql_instants,
    finished_at=st.none() | sql_instants,
    lease_expires_at=st.none() | sql_instants,
    errors=st.none() | mostly(st.just("[]"), json_values.map(json.dumps)),
    tenant=st.none() | mostly(st.sampled_from(["acme", "a.b:c-d_e"]), names),
)
def test_a_run_row_from_any_sql_insert_is_refused_or_is_one_every_reader_reads(
    reader: psycopg.Connection, **fields: Any
) -> None:
    empty(reader)
    if not insert_or_refuse(reader, "runs", {"task": "t"}, fields):
        assert scalar(reader, "SELECT count(*) FROM pgsched.runs_all") == 0, "refused, yet written"
    # What was accepted breaks none of schema 0009's rules, and every reader reads it.
    assert scalar(reader, "SELECT count(*) FROM pgsched.runs r WHERE pgsched.run_problems(r) IS NOT NULL") == 0
    readers_still_work(reader)


@EXAMPLES
@given(
    cron=st.none() | mostly(st.sampled_from(["* * * * *", "*/5 * * * * *", "0 9 * * 1-5"]), st.text(max_size=40)),
    every_s=st.none() | mostly(st.floats(1, 86400), st.floats()),
    at=st.none() | sql_instants,
    tz=st.none() | mostly(st.sampled_from(["UTC", "Europe/Berlin", "America/Argentina/ComodRivadavia"]), names),
    next_run_at=st.none() | sql_instants,
)
def test_a_job_row_from_any_sql_insert_never_stops_a_beat_round(
    reader: psycopg.Connection, dsn: str, **fields: Any
) -> None:
    empty(reader)
    reader.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('healthy', 't', 60)")
    insert_or_refuse(reader, "jobs", {"name": "generated", "task": "t"}, fields)
    # Two rounds a minute apart: the healthy job fires in the second whatever the other row holds.
    now = datetime.now(timezone.utc)

    async def rounds() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, context=READER_ADAPTERS) as conn:
            return [await fire_due_jobs(conn, misfire_grace_s=5.0, now=now + timedelta(minutes=m)) for m in (0, 1)]

    asyncio.run(rounds())
    fired = "SELECT count(*) FROM pgsched.runs_all r JOIN pgsched.jobs j ON j.id = r.job_id WHERE j.name = 'healthy'"
    assert scalar(reader, fired) == 1
    readers_still_work(reader)


@EXAMPLES
@given(
    task=task_names,
    args=mostly(args_objects.map(json.dumps), st.text(max_size=30)),
    queue=st.none() | queue_names,
    priority=st.none() | mostly(st.integers(-100, 100).map(str), st.text(max_size=8) | priorities.map(str)),
    timing=st.none()
    | mostly(due.map(lambda t: ("--at", t.isoformat())), st.text(max_size=30).map(lambda t: ("--at", t)))
    | seconds.map(lambda s: ("--delay", repr(s))),
)
def test_cli_enqueue_refuses_in_one_error_line_or_every_reader_reads_the_run(
    reader: psycopg.Connection,
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    task: str,
    args: str,
    queue: str | None,
    priority: str | None,
    timing: tuple[str, str] | None,
) -> None:
    empty(reader)
    argv = ["enqueue", task, "--args", args]
    argv += ["--queue", queue] if queue is not None else []
    argv += ["--priority", priority] if priority is not None else []
    argv += list(timing) if timing is not None else []
    if cli_in_process(argv, dsn, capsys) != 0:
        assert scalar(reader, "SELECT count(*) FROM pgsched.runs_all") == 0, "refused, yet written"
    readers_still_work(reader)


@EXAMPLES
@given(
    name=mostly(st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True), names),
    task=task_names,
    schedule=mostly(
        st.sampled_from([("--cron", "*/5 * * * *"), ("--every", "60"), ("--at", "2030-01-01T00:00:00+02:00")]),
        st.tuples(st.sampled_from(["--cron", "--every", "--at"]), st.text(max_size=30))
        | due.map(lambda t: ("--at", t.isoformat()))
        | seconds.map(lambda s: ("--every", repr(s))),
    ),
    tz=st.none() | mostly(st.sampled_from(["UTC", "Europe/Berlin"]), names),
    misfire=st.none() | mostly(st.sampled_from(["coalesce", "skip", "all"]), st.text(max_size=10)),
    max_catchup=st.none() | mostly(st.integers(1, 1000).map(str), st.integers().map(str) | st.text(max_size=8)),
    tenant=st.none() | mostly(st.sampled_from(["acme", "a.b:c-d_e"]), names),
)
def test_cli_jobs_add_refuses_in_one_error_line_or_the_beat_and_every_reader_use_the_job(
    reader: psycopg.Connection,
    dsn: str,
    capsys: pytest.CaptureFixture[str],
    name: str,
    task: str,
    schedule: tuple[str, str],
    **options: str | None,
) -> None:
    empty(reader)
    argv = ["jobs", "add", name, "--task", task, *schedule]
    for option, value in options.items():
        argv += [f"--{option.replace('_', '-')}", value] if value is not None else []
    if cli_in_process(argv, dsn, capsys) != 0:
        assert scalar(reader, "SELECT count(*) FROM pgsched.jobs") == 0, "refused, yet written"
    else:
        assert scalar(reader, "SELECT count(*) FROM pgsched.jobs r WHERE pgsched.job_problems(r) IS NOT NULL") == 0

    async def beat_rounds() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True, context=READER_ADAPTERS) as conn:
            for minutes in (0, 60 * 24 * 400):
                await fire_due_jobs(
                    conn, misfire_grace_s=5.0, now=datetime.now(timezone.utc) + timedelta(minutes=minutes)
                )

    asyncio.run(beat_rounds())
    readers_still_work(reader)


@EXAMPLES
@given(
    status=st.none() | mostly(st.sampled_from(["queued", "failed"]), st.text(max_size=12)),
    queue=st.none() | queue_names,
    task=st.none() | task_names,
    job=st.none() | names,
    created_after=st.none() | mostly(due.map(datetime.isoformat), st.text(max_size=30)),
    finished_before=st.none() | mostly(due.map(datetime.isoformat), st.text(max_size=30)),
    limit=st.none() | mostly(st.integers(1, 1000).map(str), st.integers().map(str) | st.text(max_size=8)),
)
def test_cli_runs_list_answers_or_refuses_in_one_error_line_whatever_the_filters(
    reader: psycopg.Connection, dsn: str, capsys: pytest.CaptureFixture[str], **options: str | None
) -> None:
    argv = ["runs", "list", "--json"]
    for option, value in options.items():
        argv += [f"--{option.replace('_', '-')}", value] if value is not None else []
    cli_in_process(argv, dsn, capsys)

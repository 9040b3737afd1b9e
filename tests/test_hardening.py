"""Every entry point answers what its readers could not read with a clear error and writes
nothing (issue #11): the Python API and the CLI here; the REST API in test_api_hardening.py,
the beat's side in test_beat_isolation.py."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from pgsched.app import App
from pgsched.errors import InvalidInput
from pgsched.schedule import InvalidSchedule, Schedule
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import scalar

PAST_YEAR_9999_IN_UTC = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))
BEFORE_YEAR_1_IN_UTC = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14)))


def nothing_written(conn: psycopg.Connection) -> bool:
    return scalar(conn, "SELECT (SELECT count(*) FROM pgsched.runs_all) + (SELECT count(*) FROM pgsched.jobs)") == 0


@pytest.mark.parametrize(
    "options, fragment",
    [
        ({"run_at": PAST_YEAR_9999_IN_UTC}, "run_at must be between 0001-01-02 and 9999-12-30 UTC"),
        ({"run_at": BEFORE_YEAR_1_IN_UTC}, "run_at must be between"),
        ({"run_at": datetime(9999, 12, 29, tzinfo=timezone.utc), "delay": 3 * 86400}, "plus 259200s"),
    ],
    ids=["year-10000-in-utc", "1-bc-in-utc", "delay-past-9999"],
)
def test_enqueue_refuses_an_instant_no_reader_can_hold_and_writes_nothing(
    conn: psycopg.Connection, dsn: str, options: dict[str, object], fragment: str
) -> None:
    app = App(dsn)
    with pytest.raises(InvalidInput, match=fragment):
        app.enqueue("noop", {}, **options)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match=fragment):
        app.enqueue_many("noop", [{}], **options)  # type: ignore[arg-type]
    assert nothing_written(conn)


@pytest.mark.parametrize("at", [PAST_YEAR_9999_IN_UTC, BEFORE_YEAR_1_IN_UTC], ids=["year-10000", "1-bc"])
def test_a_one_off_at_an_instant_no_reader_can_hold_is_an_invalid_schedule(at: datetime) -> None:
    with pytest.raises(InvalidSchedule, match="at must be between"):
        Schedule(at=at)


def test_cli_enqueue_with_args_nested_too_deeply_is_one_error_line(conn: psycopg.Connection, dsn: str) -> None:
    deep = "[" * 1200 + "]" * 1200
    result = run_cli(dsn, "enqueue", "noop", "--args", f'{{"a": {deep}}}')
    assert_one_error_line(result, "--args is nested too deeply")
    assert nothing_written(conn)


def test_cli_jobs_add_at_an_instant_no_reader_can_hold_is_refused_and_writes_nothing(
    conn: psycopg.Connection, dsn: str
) -> None:
    result = run_cli(dsn, "jobs", "add", "x", "--task", "t", "--at", "0001-01-01T00:00:00+14:00")
    assert_one_error_line(result, "at must be between")
    assert nothing_written(conn)


@pytest.mark.parametrize(
    "args, env, named",
    [
        (["--dsn", "not a dsn"], {}, "the DSN"),
        ([], {"PGSCHED_DSN": "not a dsn"}, "PGSCHED_DSN"),
    ],
    ids=["option", "environment"],
)
@pytest.mark.parametrize("command", [["runs", "list"], ["stats"], ["jobs", "list"], ["beat", "status"], ["migrate"]])
def test_cli_with_a_malformed_dsn_says_so_in_one_line(
    command: list[str], args: list[str], env: dict[str, str], named: str
) -> None:
    result = run_cli(None, *command, *args, env=env)
    assert_one_error_line(result, named, "is not a valid connection string")


def test_cli_beat_with_a_malformed_direct_dsn_says_so_in_one_line() -> None:
    result = run_cli(None, "beat", env={"PGSCHED_DSN": "host=/nowhere", "PGSCHED_DIRECT_DSN": "not a dsn"})
    assert_one_error_line(result, "PGSCHED_DIRECT_DSN is not a valid connection string")

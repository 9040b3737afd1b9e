"""Settings per queue (issue #14, schema 0016): paused and max_running, set by SQL, the CLI or
the REST API; bad values refused at every entry point with nothing written; a change reaches
the workers by notification; a paused queue's runs wait while enqueueing still works."""

from __future__ import annotations

import asyncio
import re
import select
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgsched.app import App
from pgsched.enqueue import RunOptions
from pgsched.errors import InvalidInput
from pgsched.queue_settings import KEEP, get_queue_settings, parse_max_running, set_queue_settings
from tests.support.api import Api, ok
from tests.support.cli import assert_one_error_line, cli_in_process, run_cli
from tests.support.db import scalar
from tests.support.generated import EXAMPLES
from tests.support.inprocess import RunningWorker

BAD_MAX_RUNNING = ["0", "-1", str(10**12), "abc", "1.5", ""]
BAD_NAMES = ["bad name!", ".starts-with-a-dot", "x" * 64, "tab\tname", "trailing-newline\n"]


def settings_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT name, paused, max_running FROM pgsched.queues ORDER BY name").fetchall()


# ---- SQL


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ("('q', false, 0)", psycopg.errors.CheckViolation),
        ("('q', false, -1)", psycopg.errors.CheckViolation),
        ("('q', false, 1000000000000)", psycopg.errors.NumericValueOutOfRange),
        ("('bad name!', false, 5)", psycopg.errors.CheckViolation),
        ("('', false, 5)", psycopg.errors.CheckViolation),
        ("('q', NULL, 5)", psycopg.errors.NotNullViolation),
    ],
)
def test_sql_refuses_settings_no_worker_could_apply(conn: psycopg.Connection, values: str, error: type) -> None:
    with pytest.raises(error):
        conn.execute(f"INSERT INTO pgsched.queues (name, paused, max_running) VALUES {values}".encode())
    assert settings_rows(conn) == []


def test_a_plain_sql_update_notifies_the_workers_channel_with_the_queue_name(
    conn: psycopg.Connection, dsn: str
) -> None:
    conn.execute("INSERT INTO pgsched.queues (name) VALUES ('emails')")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN pgsched_queues")
        conn.execute("UPDATE pgsched.queues SET max_running = 3 WHERE name = 'emails'")
        select.select([listener.fileno()], [], [], 5)
        assert [(n.channel, n.payload) for n in listener.notifies(timeout=1, stop_after=1)] == [
            ("pgsched_queues", "emails")
        ]


# ---- Python


def test_settings_change_only_what_is_given_and_a_queue_never_set_has_the_defaults(conn: psycopg.Connection) -> None:
    assert get_queue_settings(conn, "emails") | {"updated_at": None} == {
        "name": "emails",
        "paused": False,
        "max_running": None,
        "rate": None,
        "burst": None,
        "key_max_running": None,
        "fair": False,
        "updated_at": None,
    }
    set_queue_settings(conn, "emails", max_running=5)
    set_queue_settings(conn, "emails", paused=True)
    assert settings_rows(conn) == [("emails", True, 5)]
    set_queue_settings(conn, "emails", max_running=None)
    assert settings_rows(conn) == [("emails", True, None)]
    with pytest.raises(InvalidInput, match="nothing to change"):
        set_queue_settings(conn, "emails", paused=KEEP, max_running=KEEP)


def test_a_queue_name_is_checked_whole_as_the_database_checks_it() -> None:
    with pytest.raises(InvalidInput, match="is not a valid name"):
        RunOptions(queue="emails\n")  # Python's $ matched before a trailing newline


# ---- CLI


def test_cli_sets_pauses_resumes_and_lists_queues(dsn: str, conn: psycopg.Connection) -> None:
    assert run_cli(dsn, "queues", "set", "emails", "--max-running", "5").returncode == 0
    assert run_cli(dsn, "queues", "pause", "emails").returncode == 0
    assert settings_rows(conn) == [("emails", True, 5)]
    listed = run_cli(dsn, "queues", "list", "--json")
    assert listed.returncode == 0 and '"max_running": 5' in listed.stdout, listed
    assert run_cli(dsn, "queues", "resume", "emails").returncode == 0
    assert run_cli(dsn, "queues", "set", "emails", "--max-running", "none").returncode == 0
    assert settings_rows(conn) == [("emails", False, None)]


@pytest.mark.parametrize("value", BAD_MAX_RUNNING)
def test_cli_refuses_a_bad_max_running_in_one_line_and_writes_nothing(
    dsn: str, conn: psycopg.Connection, value: str
) -> None:
    result = run_cli(dsn, "queues", "set", "emails", "--max-running", value)
    assert_one_error_line(result, "max_running must be an integer from 1 to 2147483647")
    assert settings_rows(conn) == []


@pytest.mark.parametrize("name", BAD_NAMES)
def test_cli_refuses_a_bad_queue_name_in_one_line_and_writes_nothing(
    dsn: str, conn: psycopg.Connection, name: str
) -> None:
    assert_one_error_line(run_cli(dsn, "queues", "pause", name), "is not a valid name")
    assert settings_rows(conn) == []


def test_cli_set_without_a_setting_is_refused(dsn: str) -> None:
    assert_one_error_line(run_cli(dsn, "queues", "set", "emails"), "nothing to change")


# ---- REST


def test_api_reads_patches_pauses_and_resumes_a_queue(api: Api, conn: psycopg.Connection) -> None:
    assert ok(api.get("/queues/emails", as_="read"))["max_running"] is None
    assert ok(api.patch("/queues/emails", json={"max_running": 5}, as_="write"))["max_running"] == 5
    paused = ok(api.post("/queues/emails/pause"))
    assert paused["paused"] and paused["max_running"] == 5
    assert ok(api.get("/queues/emails", as_="acme-read"))["paused"]  # shared: every key reads it
    assert not ok(api.post("/queues/emails/resume"))["paused"]
    assert ok(api.patch("/queues/emails", json={"max_running": None}))["max_running"] is None
    assert settings_rows(conn) == [("emails", False, None)]


@pytest.mark.parametrize(
    ("call", "status"),
    [
        (("PATCH", "/queues/emails", {"max_running": 0}), 400),
        (("PATCH", "/queues/emails", {"max_running": -1}), 400),
        (("PATCH", "/queues/emails", {"max_running": 10**12}), 400),
        (("PATCH", "/queues/emails", {"max_running": "abc"}), 400),
        (("PATCH", "/queues/emails", {"paused": "yes"}), 400),
        (("PATCH", "/queues/emails", {"max_running": 5, "speed": "10/s"}), 400),  # unknown field
        (("PATCH", "/queues/emails", {"rate": "0/s"}), 422),
        (("PATCH", "/queues/emails", {"rate": "abc"}), 422),
        (("PATCH", "/queues/emails", {"rate": "-1/s"}), 422),
        (("PATCH", "/queues/emails", {"rate": "10/d"}), 422),
        (("PATCH", "/queues/emails", {"rate": 10}), 400),
        (("PATCH", "/queues/emails", {"rate": "10/s", "burst": 0}), 400),
        (("PATCH", "/queues/emails", {"burst": 5}), 422),  # a burst without a rate
        (("PATCH", "/queues/emails", {"key_max_running": 0}), 400),
        (("PATCH", "/queues/emails", {}), 422),  # nothing to change
        (("PATCH", "/queues/bad%20name!", {"max_running": 5}), 422),
        (("POST", "/queues/" + "x" * 64 + "/pause", None), 422),
    ],
)
def test_api_refuses_bad_settings_with_a_json_error_and_writes_nothing(
    api: Api, conn: psycopg.Connection, call: tuple[str, str, Any], status: int
) -> None:
    method, path, body = call
    response = api.call(method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert settings_rows(conn) == []


@pytest.mark.parametrize(("key", "status"), [("acme", 403), ("read", 403)])
def test_only_a_key_without_a_tenant_and_with_write_scope_changes_a_shared_queue(
    api: Api, conn: psycopg.Connection, key: str, status: int
) -> None:
    assert api.post("/queues/emails/pause", as_=key).status_code == status
    assert api.patch("/queues/emails", json={"max_running": 1}, as_=key).status_code == status
    assert settings_rows(conn) == []


# ---- generated input: the CLI and PATCH agree with the rule, and refusals write nothing


def valid_max_running(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**31 - 1


max_running_texts = st.one_of(
    st.integers(-(2**40), 2**40).map(str), st.sampled_from(["none", "NONE", " 7 ", "0x10", "1e3"]), st.text(max_size=12)
)


@EXAMPLES
@given(text=max_running_texts)
def test_cli_set_max_running_stores_exactly_the_number_given_or_refuses_in_one_line(
    dsn: str, conn: psycopg.Connection, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    conn.execute("DELETE FROM pgsched.queues")
    try:
        expected: Any = parse_max_running(text)
    except InvalidInput:
        expected = InvalidInput
    code = cli_in_process(["queues", "set", "emails", "--max-running", text], dsn, capsys)
    if expected is InvalidInput:
        assert code != 0 and settings_rows(conn) == []
    else:
        assert code == 0 and settings_rows(conn) == [("emails", False, expected)]
        assert expected is None or str(expected) == text.strip()


def valid_rate(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[1-9][0-9]{0,6}/[smh]|[1-9][0-9]{0,6}", value) is not None


json_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)  # JSON has neither
    | st.text(max_size=8)
    | st.sampled_from(["10/s", "100/m", "5/h", "0/s", "7", "1.5/s", "10/d", "9999999/s", "10000000/s"])
)


@EXAMPLES
@given(body=st.dictionaries(st.sampled_from(["paused", "max_running", "rate", "name"]), json_values, max_size=3))
def test_api_patch_stores_exactly_what_is_valid_or_refuses_with_4xx(
    api: Api, conn: psycopg.Connection, body: dict[str, Any]
) -> None:
    conn.execute("DELETE FROM pgsched.queues")
    valid = (
        bool(body)
        and set(body) <= {"paused", "max_running", "rate"}
        and ("paused" not in body or isinstance(body["paused"], bool))
        and ("max_running" not in body or body["max_running"] is None or valid_max_running(body["max_running"]))
        and ("rate" not in body or body["rate"] is None or valid_rate(body["rate"]))
    )
    response = api.patch("/queues/emails", json=body)
    if not valid:
        assert 400 <= response.status_code < 500 and response.json()["detail"], response.text
        assert settings_rows(conn) == []
        return
    assert response.status_code == 200, response.text
    assert settings_rows(conn) == [("emails", body.get("paused", False), body.get("max_running"))]


# ---- a worker


def test_a_paused_queue_keeps_its_runs_queued_until_resumed_and_enqueue_still_works(
    app: App, dsn: str, conn: psycopg.Connection
) -> None:
    @app.task(queue="held")
    async def held() -> None:
        return None

    @app.task(queue="open")
    async def free() -> None:
        return None

    set_queue_settings(conn, "held", paused=True)
    paused_run = held.delay().id  # enqueue still works

    async def scenario() -> None:
        # A poll interval far longer than the wait below: only the notification can wake it.
        async with RunningWorker(app, dsn, poll_interval_s=30.0) as w:
            open_run = free.delay().id
            await w.finished(open_run)  # the worker claims: it passed over the paused queue
            assert (await w.row(paused_run))["status"] == "queued"
            set_queue_settings(conn, "held", paused=False)
            assert (await w.finished(paused_run, timeout=1.0))["status"] == "succeeded"

    asyncio.run(scenario())
    assert scalar(conn, "SELECT attempt FROM pgsched.runs_all WHERE id = %s", (paused_run,)) == 1

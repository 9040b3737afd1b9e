"""Bad input at every entry point (Python API, SQL, CLI): a clear error that names the problem,
and nothing changed in the database."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg.types.json import Jsonb

from pgsched import App
from pgsched.errors import DuplicateTask, InvalidArgs, InvalidInput
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import insert_restored, scratch_database

# Nothing here may change the database, so the tests share one (a fresh clone per test costs more
# than the tests themselves); each checks that the whole runs table is as it was.


@pytest.fixture(scope="module")
def shared_dsn(postgresql_proc) -> Iterator[str]:
    with scratch_database(postgresql_proc, "pgsched_bad_input") as dsn:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("INSERT INTO pgsched.runs (task) VALUES ('already-queued')")
            insert_restored(
                conn,
                "INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, result)"
                " VALUES ('already-done', 'succeeded', 1, now(), now(), '42')",
            )
        yield dsn


@pytest.fixture
def dsn(shared_dsn: str) -> str:
    return shared_dsn


@pytest.fixture
def conn(shared_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(shared_dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def queued_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT id FROM pgsched.runs_all WHERE task = 'already-queued'").fetchone()[0]


@pytest.fixture
def succeeded_id(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT id FROM pgsched.runs_all WHERE task = 'already-done'").fetchone()[0]


@pytest.fixture
def unchanged(conn: psycopg.Connection) -> Iterator[Callable[[], None]]:
    """Call it at the end of a test: asserts that the runs table is exactly as the test found it."""

    def state() -> list[tuple]:
        return conn.execute("SELECT r::text FROM pgsched.runs_all AS r ORDER BY id").fetchall()

    before = state()
    assert len(before) == 2

    def check() -> None:
        assert state() == before, "the runs table changed"

    yield check


@pytest.fixture
def app(shared_dsn: str) -> Iterator[App]:
    application = App(dsn=shared_dsn, pool_max_size=2)

    @application.task
    def send(to: str, subject: str = "hi") -> None: ...

    yield application
    application.close()


# ---- Python API


BAD_ENQUEUES = [
    pytest.param(dict(task="t", args=[1]), InvalidInput, "args must be a JSON object", id="args-list"),
    pytest.param(dict(task="t", args="x=1"), InvalidInput, "args must be a JSON object", id="args-str"),
    pytest.param(
        dict(task="t", args={"when": datetime(2024, 1, 1)}), InvalidInput, "not JSON-serialisable", id="args-datetime"
    ),
    pytest.param(dict(task="t", args={"x": object()}), InvalidInput, "not JSON-serialisable", id="args-object"),
    pytest.param(dict(task="t", args={"x": float("nan")}), InvalidInput, "not JSON-serialisable", id="args-nan"),
    pytest.param(
        dict(task="t", args={"blob": "x" * (1024 * 1024)}), InvalidInput, "the limit is 1048576", id="args-over-1mb"
    ),
    pytest.param(
        dict(task="t", queue="has space"), InvalidInput, "queue 'has space' is not a valid name", id="queue-space"
    ),
    pytest.param(dict(task="t", queue=""), InvalidInput, "queue '' is not a valid name", id="queue-empty"),
    pytest.param(dict(task="t", queue="-lead"), InvalidInput, "is not a valid name", id="queue-leading-dash"),
    pytest.param(dict(task="t", queue="q" * 64), InvalidInput, "is not a valid name", id="queue-64-chars"),
    pytest.param(
        dict(task="t", priority=101),
        InvalidInput,
        "priority must be an integer between -100 and 100, got 101",
        id="priority-101",
    ),
    pytest.param(dict(task="t", priority=-101), InvalidInput, "priority must be", id="priority--101"),
    pytest.param(dict(task="t", priority=1.5), InvalidInput, "priority must be", id="priority-float"),
    pytest.param(
        dict(task="t", max_attempts=0),
        InvalidInput,
        "max_attempts must be an integer from 1 to 1000, got 0",
        id="max-attempts-0",
    ),
    pytest.param(dict(task=""), InvalidInput, "task must be a non-empty name", id="task-empty"),
    pytest.param(dict(task="   "), InvalidInput, "task must be a non-empty name", id="task-blank"),
    pytest.param(dict(task="t" * 201), InvalidInput, "at most 200 characters", id="task-201-chars"),
    pytest.param(
        dict(task="t", run_at=datetime(2030, 1, 1)),
        InvalidInput,
        "run_at must be a timezone-aware datetime",
        id="run-at-naive",
    ),
    pytest.param(
        dict(task="t", run_at="2030-01-01T00:00:00+00:00"), InvalidInput, "run_at must be", id="run-at-string"
    ),
    pytest.param(
        dict(task="t", delay=-1), InvalidInput, "delay must be a number of seconds >= 0, got -1", id="delay-negative"
    ),
    pytest.param(
        dict(task="t", unique_key=""), InvalidInput, "unique_key must be a non-empty string", id="unique-key-empty"
    ),
    pytest.param(
        dict(task="send", args={"subject": "no recipient"}),
        InvalidArgs,
        "missing a required argument: 'to'",
        id="args-missing-required",
    ),
    pytest.param(
        dict(task="send", args={"to": "a", "cc": "b"}),
        InvalidArgs,
        "unexpected keyword argument 'cc'",
        id="args-unexpected",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_ENQUEUES)
def test_bad_enqueue_raises_a_clear_error_and_inserts_nothing(app, conn, unchanged, call, error, message):
    call = dict(call)  # the parameters are shared between tests
    task = call.pop("task")
    args = call.pop("args", None)
    with pytest.raises(error) as raised:
        app.enqueue(task, args, **call)
    assert message in str(raised.value)
    unchanged()


@pytest.mark.parametrize(("call", "error", "message"), BAD_ENQUEUES[:3] + BAD_ENQUEUES[-2:])
def test_bad_enqueue_async_raises_the_same_errors_and_inserts_nothing(app, conn, unchanged, call, error, message):
    call = dict(call)  # the parameters are shared between tests
    task = call.pop("task")
    args = call.pop("args", None)

    async def main() -> None:
        try:
            await app.enqueue_async(task, args, **call)
        finally:
            await app.aclose()

    with pytest.raises(error) as raised:
        asyncio.run(main())
    assert message in str(raised.value)
    unchanged()


def test_args_that_do_not_fit_the_task_name_the_task_and_its_signature(app, conn, unchanged):
    with pytest.raises(InvalidArgs) as raised:
        app.tasks["send"].enqueue(subject="x")
    message = str(raised.value)
    assert message.startswith("args do not fit send(to: ") and "subject: " in message
    assert "missing a required argument: 'to'" in message
    unchanged()


def test_invalid_args_is_an_invalid_input(app):
    with pytest.raises(InvalidInput):
        app.tasks["send"].enqueue(nobody="x")


def test_a_second_task_with_the_same_name_is_refused(app):
    with pytest.raises(DuplicateTask, match="a task named 'send' is already registered"):

        @app.task
        def send(to: str) -> None: ...

    with pytest.raises(DuplicateTask, match="'send'"):
        app.task(lambda: None, name="send")
    assert app.tasks["send"].signature.parameters.keys() == {"to", "subject"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(queue="no spaces"), "is not a valid name"),
        (dict(priority=1000), "priority must be"),
        (dict(max_attempts=0), "max_attempts must be"),
        (dict(timeout=0), "timeout must be a positive number"),
        (dict(retry_backoff=-1), "retry_backoff must be"),
        (dict(name=""), "task must be a non-empty name"),
    ],
)
def test_a_task_with_bad_options_is_refused_at_registration(app, options, message):
    with pytest.raises(InvalidInput, match=message):
        app.task(lambda: None, **options)
    assert list(app.tasks) == ["send"]


@pytest.mark.parametrize(
    ("all_args", "error", "message"),
    [
        pytest.param(
            [{"to": "a"}, [2], {"to": "c"}], InvalidInput, "args[1]: args must be a JSON object", id="not-a-dict"
        ),
        pytest.param(
            [{"to": "a"}, {"to": "b"}, {"to": object()}],
            InvalidInput,
            "args[2]: args are not JSON-serialisable",
            id="not-serialisable",
        ),
        pytest.param([{"to": "a"}, {"subject": "x"}], InvalidArgs, "args[1]: args do not fit send", id="does-not-fit"),
        pytest.param({"to": "a"}, InvalidInput, "enqueue_many takes a list of args objects", id="a-dict-not-a-list"),
    ],
)
def test_a_bad_item_in_enqueue_many_inserts_nothing(app, conn, unchanged, all_args, error, message):
    with pytest.raises(error) as raised:
        app.enqueue_many("send", all_args)
    assert message in str(raised.value)
    unchanged()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(dict(task="t", args={"text": "a\x00b"}), "unsupported Unicode escape sequence", id="nul-in-args"),
        pytest.param(dict(task="t", args={"a\x00": 1}), "unsupported Unicode escape sequence", id="nul-in-args-key"),
        pytest.param(dict(task="t\x00x"), "cannot contain NUL", id="nul-in-task"),
        pytest.param(dict(task="t", unique_key="k\x00"), "cannot contain NUL", id="nul-in-unique-key"),
    ],
)
def test_a_nul_character_the_database_cannot_store_is_invalid_input(app, unchanged, call, message):
    call = dict(call)
    task = call.pop("task")
    args = call.pop("args", None)
    with pytest.raises(InvalidInput, match=message):
        app.enqueue(task, args, **call)
    unchanged()


def test_a_nul_character_in_one_item_of_enqueue_many_inserts_nothing(app, unchanged):
    with pytest.raises(InvalidInput, match="the database rejected the run: unsupported Unicode escape sequence"):
        app.enqueue_many("t", [{"ok": 1}, {"ok": 2}, {"bad": "\x00"}, {"ok": 4}])
    unchanged()


def test_enqueue_many_refuses_bad_options_and_inserts_nothing(app, conn, unchanged):
    with pytest.raises(InvalidInput, match="priority must be"):
        app.enqueue_many("t", [{}, {}], priority=200)
    with pytest.raises(InvalidInput, match="run_at must be a timezone-aware"):
        app.enqueue_many("t", [{}, {}], run_at=datetime(2030, 1, 1))
    unchanged()


def test_a_bad_item_in_enqueue_many_async_inserts_nothing(app, conn, unchanged):
    async def main() -> None:
        try:
            await app.enqueue_many_async("t", [{"a": 1}, {"b": float("inf")}])
        finally:
            await app.aclose()

    with pytest.raises(InvalidInput, match=r"args\[1\]: args are not JSON-serialisable"):
        asyncio.run(main())
    unchanged()


def test_a_bad_enqueue_inside_the_callers_transaction_leaves_it_usable(postgresql):
    info = postgresql.info
    fresh = f"host={info.host} port={info.port} user={info.user} dbname={info.dbname}"
    application = App(dsn=fresh)
    with psycopg.connect(fresh) as tx:
        good = application.enqueue("t", {}, conn=tx)
        with pytest.raises(InvalidInput, match="priority must be"):
            application.enqueue("t", {}, priority=500, conn=tx)
        with pytest.raises(InvalidInput, match="args must be a JSON object"):
            application.enqueue_many("t", [{}, [1]], conn=tx)
        tx.commit()
    with psycopg.connect(fresh) as check:
        assert check.execute("SELECT array_agg(id) FROM pgsched.runs_all").fetchone()[0] == [good]


# ---- SQL: pgsched.enqueue()


@pytest.mark.parametrize(
    ("sql", "params", "message"),
    [
        pytest.param(
            "SELECT pgsched.enqueue('t', %s)", (Jsonb([1]),), "args must be a JSON object, got array", id="args-array"
        ),
        pytest.param(
            "SELECT pgsched.enqueue('t', '\"text\"')", (), "args must be a JSON object, got string", id="args-string"
        ),
        pytest.param("SELECT pgsched.enqueue('t', NULL)", (), "args must be a JSON object, got NULL", id="args-null"),
        pytest.param(
            "SELECT pgsched.enqueue('t', priority => 500)",
            (),
            "priority must be between -100 and 100, got 500",
            id="priority-500",
        ),
        pytest.param(
            "SELECT pgsched.enqueue('t', max_attempts => 0)",
            (),
            "max_attempts must be at least 1, got 0",
            id="max-attempts-0",
        ),
        pytest.param("SELECT pgsched.enqueue('')", (), "task must be a non-empty name", id="task-empty"),
        pytest.param("SELECT pgsched.enqueue(' ')", (), "task must be a non-empty name", id="task-blank"),
        pytest.param("SELECT pgsched.enqueue(NULL)", (), "task must be a non-empty name", id="task-null"),
    ],
)
def test_sql_enqueue_rejects_bad_input_with_a_message_naming_it(conn, unchanged, sql, params, message):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        conn.execute(sql, params)
    assert "pgsched.enqueue: " + message in str(raised.value)
    unchanged()


@pytest.mark.parametrize(
    ("sql", "constraint"),
    [
        (
            "SELECT pgsched.enqueue('t', queue => 'bad queue')",
            "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63",
        ),
        ("SELECT pgsched.enqueue('t', unique_key => '')", "unique_key_must_not_be_empty"),
    ],
)
def test_sql_enqueue_rejects_what_the_table_rejects_by_constraint_name(conn, unchanged, sql, constraint):
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(sql)
    assert raised.value.diag.constraint_name == constraint
    assert constraint in str(raised.value)
    unchanged()


# ---- SQL: plain INSERT


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ("('t', '[1]', 'default', 0)", "args_must_be_a_json_object"),
        ("('t', '\"x\"', 'default', 0)", "args_must_be_a_json_object"),
        ("('t', '{}', 'no spaces allowed', 0)", "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
        ("('t', '{}', '', 0)", "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
        ("('t', '{}', '-leading-dash', 0)", "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
        ("('t', '{}', E'trailing-newline\\n', 0)", "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
        (f"('t', '{{}}', '{'q' * 64}', 0)", "queue_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
        ("('t', '{}', 'default', 101)", "priority_must_be_between_minus_100_and_100"),
        ("('t', '{}', 'default', -101)", "priority_must_be_between_minus_100_and_100"),
        ("('', '{}', 'default', 0)", "task_must_not_be_empty"),
    ],
)
def test_plain_insert_of_a_bad_run_names_the_violated_rule(conn, unchanged, values, constraint):
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(f"INSERT INTO pgsched.runs (task, args, queue, priority) VALUES {values}")
    assert raised.value.diag.constraint_name == constraint
    unchanged()


# Rows no code path would write, each refused by schema 0009 (issue 11's examples).
INSTANTS = "run_instants_must_be_within_years_1_to_9999"
NO_READER_CAN_READ = {
    "run-at-infinity": ("run_at", "'infinity'", INSTANTS),
    "run-at-minus-infinity": ("run_at", "'-infinity'", INSTANTS),
    "run-at-4000-bc": ("run_at", "'4000-01-01 BC'", INSTANTS),
    "run-at-year-10000-in-utc": (
        "run_at",
        "'9999-12-31T23:59:59-14:00'",
        INSTANTS,
    ),
    "run-at-1-bc-in-utc": ("run_at", "'0001-01-01T00:00:00+14:00'", INSTANTS),
    "created-at-infinity": ("created_at", "'infinity'", INSTANTS),
    "attempt-negative": ("attempt", "-5", "run_attempt_must_not_be_negative"),
    "errors-not-an-array": ("errors", "'{}'", "run_errors_must_be_a_json_array"),
    "tenant-bad": ("tenant", "'bad tenant!'", "run_tenant_must_match_a_z_0_9_dot_dash_underscore_colon_max_63"),
    "running-without-lease": ("status", "'running'", "run_status_must_agree_with_its_times_and_lease"),
    "succeeded-without-finished-at": ("status", "'succeeded'", "run_status_must_agree_with_its_times_and_lease"),
    "queued-with-a-lease": ("lease_expires_at", "now()", "run_status_must_agree_with_its_times_and_lease"),
    "running-with-lease": (
        "status, started_at, lease_expires_at, worker_id",
        "'running', now(), now() + interval '1 minute', 1",
        "run_must_be_inserted_queued",
    ),
    "succeeded-consistent": ("status, finished_at", "'succeeded', now()", "run_must_be_inserted_queued"),
    "queued-attempt-3": ("attempt", "3", "run_must_be_inserted_queued"),
}


@pytest.mark.parametrize(("columns", "values", "constraint"), NO_READER_CAN_READ.values(), ids=NO_READER_CAN_READ)
def test_plain_insert_of_a_run_no_reader_could_read_is_refused_naming_the_rule(
    conn, unchanged, columns, values, constraint
):
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(f"INSERT INTO pgsched.runs (task, {columns}) VALUES ('t', {values})".encode())
    assert raised.value.diag.constraint_name == constraint
    unchanged()


def test_a_copy_with_one_run_not_inserted_queued_among_good_ones_writes_none(conn, unchanged):
    # Since 0036 the rule is checked per row (a trigger's WHEN), not over the statement's rows.
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        with conn.cursor().copy("COPY pgsched.runs (task, attempt) FROM STDIN") as copy:
            for attempt in (0, 0, 2, 0):
                copy.write_row(("t", attempt))
    assert raised.value.diag.constraint_name == "run_must_be_inserted_queued"
    assert "got status queued and attempt 2" in str(raised.value)
    unchanged()


@pytest.mark.parametrize("run_at", ["infinity", "-infinity", "4000-01-01 BC"])
def test_sql_enqueue_of_an_instant_no_reader_could_read_is_refused(conn, unchanged, run_at):
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("SELECT pgsched.enqueue('t', run_at => %s::timestamptz)", (run_at,))
    assert raised.value.diag.constraint_name == INSTANTS
    unchanged()


def test_plain_update_to_a_state_no_reader_could_read_is_refused(conn, unchanged, queued_id):
    for change in ("status = 'running'", "finished_at = 'infinity'", "attempt = -1", "errors = '\"x\"'"):
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(f"UPDATE pgsched.runs SET {change} WHERE id = %s".encode(), (queued_id,))
    unchanged()


def test_plain_insert_accepts_the_longest_and_oddest_valid_queue_names(conn, unchanged):
    with conn.transaction(force_rollback=True):  # the module's other tests expect no new rows
        for queue in ("q" * 63, "a.b:c-d_e", "0"):
            conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', %s)", (queue,))
    unchanged()


def test_plain_insert_of_args_over_1_mb_is_refused(conn, unchanged):
    # Random text does not compress, so the stored value is over the limit too.
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute(
            "INSERT INTO pgsched.runs (task, args) SELECT 't', jsonb_build_object('blob', string_agg("
            "md5(i::text), '')) FROM generate_series(1, 40000) AS i"
        )
    assert raised.value.diag.constraint_name == "args_must_be_at_most_1_mb"
    unchanged()


def test_plain_insert_of_max_attempts_0_is_refused(conn, unchanged):
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("INSERT INTO pgsched.runs (task, max_attempts) VALUES ('t', 0)")
    assert raised.value.diag.constraint_name == "max_attempts_must_be_at_least_1"
    unchanged()


def test_a_multi_row_insert_with_one_bad_row_inserts_none(conn, unchanged):
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("INSERT INTO pgsched.runs (task, priority) VALUES ('a', 1), ('b', 1000), ('c', 2)")
    unchanged()


# ---- CLI


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        pytest.param(["enqueue", "T", "--args", "[1]"], ["--args must be a JSON object, got list"], id="args-list"),
        pytest.param(["enqueue", "T", "--args", "not json"], ["--args is not valid JSON"], id="args-not-json"),
        pytest.param(
            ["enqueue", "T", "--priority", "999"],
            ["priority must be an integer between -100 and 100, got 999"],
            id="priority-999",
        ),
        pytest.param(
            ["enqueue", "T", "--at", "2024-01-01T00:00"], ["--at needs a timezone", "2024-01-01T00:00"], id="at-naive"
        ),
        pytest.param(["enqueue", "T", "--at", "next tuesday"], ["--at must be an ISO 8601 timestamp"], id="at-garbage"),
        pytest.param(["enqueue", "T", "--queue", "no spaces"], ["queue 'no spaces' is not a valid name"], id="queue"),
        pytest.param(
            ["enqueue", "T", "--delay", "5", "--at", "2030-01-01T00:00Z"],
            ["--delay or --at, not both"],
            id="delay-and-at",
        ),
        pytest.param(["enqueue", " "], ["task must be a non-empty name"], id="task-blank"),
        pytest.param(
            ["enqueue", "T", "--args", '{"x": "\\u0000"}'], ["\\u0000 cannot be converted to text"], id="args-nul"
        ),
    ],
)
def test_cli_enqueue_of_bad_input_prints_one_error_and_inserts_nothing(dsn, conn, unchanged, args, fragments):
    assert_one_error_line(run_cli(dsn, *args), *fragments)
    unchanged()


def test_cli_enqueue_of_args_that_do_not_fit_the_apps_task_prints_one_error(dsn, conn, unchanged):
    result = run_cli(dsn, "enqueue", "greet", "--args", '{"nme": "x"}', "--app", "pgsched.example:app")
    assert_one_error_line(result, "args do not fit greet", "'name'")
    unchanged()


def test_cli_runs_show_of_a_missing_run_says_so(dsn):
    assert_one_error_line(run_cli(dsn, "runs", "show", "999999"), "no run with id 999999")


def test_cli_runs_show_of_a_non_number_is_a_usage_error(dsn):
    result = run_cli(dsn, "runs", "show", "abc")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Usage:" in result.stderr and "Invalid value for 'ID'" in result.stderr


def test_cli_runs_cancel_of_a_succeeded_run_is_refused_and_leaves_it(dsn, succeeded_id, unchanged):
    assert_one_error_line(
        run_cli(dsn, "runs", "cancel", str(succeeded_id)),
        f"cannot cancel run {succeeded_id}: it is succeeded",
        "only waiting, queued or running runs can be cancelled",
    )
    unchanged()


def test_cli_runs_retry_of_a_queued_run_is_refused_and_leaves_it(dsn, queued_id, unchanged):
    assert_one_error_line(run_cli(dsn, "runs", "retry", str(queued_id)), f"cannot retry run {queued_id}: it is queued")
    unchanged()


def test_cli_runs_cancel_of_a_missing_run_says_so(dsn):
    assert_one_error_line(run_cli(dsn, "runs", "cancel", "424242"), "no run with id 424242")


def test_cli_runs_list_with_an_unknown_status_names_the_valid_ones(dsn):
    assert_one_error_line(
        run_cli(dsn, "runs", "list", "--status", "bogus"),
        "status must be one of waiting, queued, running, succeeded, failed, cancelled",
        "'bogus'",
    )


def test_cli_worker_with_an_app_that_cannot_be_imported_says_so(dsn):
    assert_one_error_line(
        run_cli(dsn, "worker", "--app", "nosuchmodule:app", timeout=30), "cannot import 'nosuchmodule' for --app"
    )


def test_cli_worker_with_an_app_spec_without_attribute_explains_the_form(dsn):
    assert_one_error_line(
        run_cli(dsn, "worker", "--app", "nosuchmodule", timeout=30), "--app must look like module:attribute"
    )


def test_cli_worker_with_concurrency_0_is_refused(dsn):
    assert_one_error_line(run_cli(dsn, "worker", "--concurrency", "0", timeout=30), "concurrency must be at least 1")


def test_cli_with_a_database_that_cannot_be_reached_says_so(dsn, conn, unchanged):
    result = run_cli(None, "enqueue", "T", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2")
    assert_one_error_line(result, "cannot reach the database")
    result = run_cli(None, "runs", "list", "--dsn", "host=127.0.0.1 port=1 connect_timeout=2")
    assert_one_error_line(result, "cannot reach the database")
    unchanged()


def test_cli_on_a_database_without_the_schema_says_to_migrate(dsn, conn):
    empty = conn.info.dbname + "_bad_input_empty"
    conn.execute(f'CREATE DATABASE "{empty}" TEMPLATE template0')
    try:
        other = dsn.replace(f"dbname={conn.info.dbname}", f"dbname={empty}")
        assert_one_error_line(run_cli(other, "runs", "list"), "run `pgsched migrate` first")
        assert_one_error_line(run_cli(other, "enqueue", "T"), "run `pgsched migrate` first")
    finally:
        conn.execute(f'DROP DATABASE "{empty}" WITH (FORCE)')

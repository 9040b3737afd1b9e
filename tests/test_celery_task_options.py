"""The task options Celery users reach for (issue #16), where they map cleanly onto pgsched's:
``autoretry_for`` (only those exceptions retry), ``max_retries`` (attempts - 1), ``time_limit``
(the timeout), ``rate_limit`` (the task's rate over all workers: tests/test_rate_limits.py; a
bad one is refused here). Plus generated apply_async
options: each is refused naming the problem with nothing queued, or queued as documented."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pgsched.errors import InvalidInput
from pgsched.process_pool import ChildFailed, ProcessPool
from pgsched.run_types import ClaimedRun
from tests.support.db import empty_tables, scalar
from tests.support.inprocess import finish


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


def last_error_type(row: dict[str, Any]) -> str:
    return str(row["errors"][-1]["type"])


def test_autoretry_for_retries_only_the_exceptions_it_names(app, dsn):
    @app.task(autoretry_for=(ConnectionError,), max_retries=1, retry_backoff=0)
    async def fetch(fail_with: str) -> None:
        raise {"ConnectionError": ConnectionError, "KeyError": KeyError}[fail_with]("boom")

    retried = fetch.delay("ConnectionError").id
    not_retried = fetch.delay("KeyError").id
    rows = finish(app, dsn, retried, not_retried)
    assert [(r["status"], r["attempt"], r["max_attempts"]) for r in rows] == [("failed", 2, 2), ("failed", 1, 2)]
    assert [last_error_type(r) for r in rows] == ["ConnectionError", "KeyError"]


def test_without_autoretry_for_every_exception_is_retried_as_before(app, dsn):
    @app.task(max_attempts=2, retry_backoff=0)
    async def flaky() -> None:
        raise KeyError("x")

    [row] = finish(app, dsn, flaky.delay().id)
    assert (row["status"], row["attempt"]) == ("failed", 2)


def test_time_limit_is_the_timeout(app, dsn):
    @app.task(time_limit=0.2, max_retries=0)
    async def stuck() -> None:
        await asyncio.sleep(30)

    assert app.tasks["stuck"].timeout == 0.2 and app.tasks["stuck"].max_attempts == 1
    [row] = finish(app, dsn, stuck.delay().id)
    assert (row["status"], last_error_type(row)) == ("failed", "Timeout")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "10/d"}, "rate_limit: a rate is N/s, N/m or N/h"),
        ({"rate_limit": 0}, "rate_limit: a rate is N/s, N/m or N/h"),
        ({"max_retries": 2, "max_attempts": 5}, "max_retries=2 and max_attempts=5 disagree"),
        ({"max_retries": -1}, "max_retries must be an integer >= 0"),
        ({"time_limit": 5, "timeout": 10}, "time_limit and timeout are the same setting"),
        ({"autoretry_for": ("ConnectionError",)}, "autoretry_for must be exception classes"),
    ],
)
def test_celery_task_options_that_do_not_fit_are_refused_and_register_nothing(app, options, message):
    with pytest.raises(InvalidInput, match=message):

        @app.task(**options)
        def job() -> None: ...

    assert "job" not in app.tasks


def test_max_retries_and_max_attempts_that_agree_are_accepted(app):
    @app.task(max_retries=4, max_attempts=5)
    def job() -> None: ...

    assert job.max_attempts == 5


# ---- generated apply_async options

GENERATED = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
offsets = st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60))
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.none() | offsets)
seconds = st.floats(-10, 10**6, allow_nan=False) | st.integers(-10, 10**6)
options = st.fixed_dictionaries(
    {},
    optional={
        "countdown": st.none() | seconds,
        "eta": st.none() | instants,
        "expires": st.none() | seconds | instants,
        "priority": st.none() | st.integers(-150, 150),
        "queue": st.none() | st.sampled_from(["default", "emails", "bad queue", "", "a" * 64]),
        "task_id": st.none() | st.text(max_size=3),
    },
)


def expected_refusal(opts: dict[str, Any]) -> bool:
    """Whether the documented rules refuse these options (the test's own reading of them)."""
    countdown, eta, expires = opts.get("countdown"), opts.get("eta"), opts.get("expires")
    if countdown is not None and eta is not None:
        return True
    if eta is not None and eta.tzinfo is None:
        return True
    if countdown is not None and countdown < 0:
        return True
    if opts.get("priority") is not None and not -100 <= opts["priority"] <= 100:
        return True
    if opts.get("queue") in ("bad queue", "", "a" * 64):
        return True
    task_id = opts.get("task_id")
    if task_id is not None and (not task_id.strip() or "\x00" in task_id):
        return True
    if expires is None:
        return False
    if isinstance(expires, datetime):
        if expires.tzinfo is None:
            return True
        expiry = expires
    else:
        if expires <= 0:
            return True
        expiry = datetime.now(timezone.utc) + timedelta(seconds=expires)
    due = (eta or datetime.now(timezone.utc)) + timedelta(seconds=countdown or 0)
    return expiry <= due


@GENERATED
@given(opts=options)
def test_generated_apply_async_options_are_refused_with_nothing_queued_or_queued_as_mapped(app, conn, opts):
    if "ping" not in app.tasks:
        app.task(name="ping")(lambda n=0: None)
    ping = app.tasks["ping"]
    conn.execute("DELETE FROM pgsched.runs")
    try:
        handle = ping.apply_async((1,), **opts)
    except InvalidInput as exc:
        event("refused")
        assert expected_refusal(opts) or _near_the_boundary(opts), (opts, exc)
        assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 0
        return
    event("queued")
    assert not expected_refusal(opts) or _near_the_boundary(opts), opts
    row = conn.execute(
        "SELECT args, queue, priority, unique_key, run_at, created_at, expires_at FROM pgsched.runs_all WHERE id = %s",
        (handle.id,),
    ).fetchone()
    assert row is not None
    args, queue, priority, unique_key, run_at, created_at, expires_at = row
    assert args == {"n": 1}
    assert (queue, priority, unique_key) == (
        opts.get("queue") or "default",
        0 if opts.get("priority") is None else opts["priority"],
        opts.get("task_id"),
    )
    if opts.get("eta") is not None:
        assert run_at == opts["eta"]
    elif opts.get("countdown") is not None:
        assert abs((run_at - created_at).total_seconds() - opts["countdown"]) < 0.01
    if isinstance(opts.get("expires"), datetime):
        assert expires_at == opts["expires"]
    assert (expires_at is None) == (opts.get("expires") is None)


def _near_the_boundary(opts: dict[str, Any]) -> bool:
    """An expiry within a second of the due time: the client's clock and the test's differ by the
    time between the two reads, so either answer is right."""
    expires = opts.get("expires")
    if expires is None:
        return False
    now = datetime.now(timezone.utc)
    expiry = expires if isinstance(expires, datetime) else now + timedelta(seconds=expires)
    due = (opts.get("eta") or now) + timedelta(seconds=opts.get("countdown") or 0)
    return abs((expiry - due).total_seconds()) < 1


def test_autoretry_for_decides_in_a_process_pool_child_too():
    async def main() -> dict[str, bool]:
        pool = ProcessPool("tests.process_app:app", 1, frozenset({"raise_in_child"}))
        await pool.start()
        outcome = {}
        try:
            for kind in ("ConnectionError", "KeyError"):
                with pytest.raises(ChildFailed) as failed:
                    await pool.call(ClaimedRun(1, "raise_in_child", {"kind": kind}, 1, 3), {"kind": kind}, None)
                outcome[failed.value.kind] = failed.value.retryable
        finally:
            await pool.close()
        return outcome

    assert asyncio.run(main()) == {"ConnectionError": True, "KeyError": False}

"""Calling a task the Celery way (issue #16): ``delay`` and ``apply_async`` queue runs whose args
are stored by name, and return run handles whose ``get()`` / ``wait()`` are woken by the
``pgsched_finished`` notification of the run they wait on. Real worker, real database."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from pgsched import App
from pgsched.errors import InvalidArgs, InvalidInput, RunCancelled, RunFailed, RunNotFound, WaitInsideTask
from pgsched.handles import RunHandle
from pgsched.sql import queries
from tests.support.db import empty_tables, scalar, scalar_async
from tests.support.inprocess import RunningWorker
from tests.support.waiting import wait_until_async


@pytest.fixture
def dsn(module_dsn: str) -> str:
    return empty_tables(module_dsn)


def runs(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "SELECT count(*) FROM pgsched.runs_all"))


def args_of(conn: psycopg.Connection, run_id: int) -> Any:
    return scalar(conn, "SELECT args FROM pgsched.runs_all WHERE id = %s", (run_id,))


def with_worker(app: App, dsn: str, body: Any, **options: Any) -> Any:
    """Run ``body(worker)`` (a coroutine function) while an in-process worker works."""

    async def main() -> Any:
        async with RunningWorker(app, dsn, **{"concurrency": 4, **options}) as w:
            return await body(w)

    return asyncio.run(main())


# ---- delay: positional args bound by the signature, stored by name


def test_delay_stores_positional_args_by_name_and_get_returns_the_result(app, dsn, conn):
    @app.task
    async def add(x: int, y: int, *, scale: int = 1) -> int:
        return (x + y) * scale

    handle = add.delay(2, 3, scale=10)
    assert isinstance(handle, RunHandle) and handle.status == "queued" and not handle.ready()
    assert args_of(conn, handle.id) == {"x": 2, "y": 3, "scale": 10}

    async def body(w: RunningWorker) -> Any:
        return await asyncio.to_thread(handle.get, 10)

    assert with_worker(app, dsn, body) == 50
    assert handle.ready() and handle.successful() and not handle.failed() and handle.result == 50


def test_delay_folds_extra_keywords_into_the_args_of_a_task_that_takes_them(app, conn):
    @app.task
    def tag(name: str, **labels: str) -> None: ...

    handle = tag.delay("a", colour="red")
    assert args_of(conn, handle.id) == {"name": "a", "colour": "red"}


@pytest.mark.parametrize("option", ["countdown", "eta", "queue", "expires", "priority", "task_id", "link"])
def test_a_celery_option_passed_to_delay_is_refused_and_points_at_apply_async(app, conn, option):
    @app.task
    def send(to: str) -> None: ...

    with pytest.raises(InvalidInput, match=rf"{option}= passed to send.delay\(\) is a Celery option.*apply_async"):
        send.delay("a@b.c", **{option: 60})
    assert runs(conn) == 0


def test_delay_passes_an_option_name_the_task_really_takes(app, conn):
    @app.task
    def route(queue: str) -> None: ...

    handle = route.delay(queue="emails")
    assert args_of(conn, handle.id) == {"queue": "emails"}
    assert scalar(conn, "SELECT queue FROM pgsched.runs_all WHERE id = %s", (handle.id,)) == "default"


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1, 2, 3), {}, "too many positional arguments"),
        ((), {}, "missing a required argument: 'x'"),
        ((1,), {"x": 2}, "multiple values for argument 'x'"),
        ((1,), {"z": 2}, "unexpected keyword argument 'z'"),
    ],
)
def test_args_that_do_not_fit_the_signature_are_refused_and_nothing_is_queued(app, conn, args, kwargs, message):
    @app.task
    def pair(x: int, y: int = 0) -> None: ...

    with pytest.raises(InvalidArgs, match=message):
        pair.delay(*args, **kwargs)
    with pytest.raises(InvalidArgs, match=message):
        pair.apply_async(args, kwargs)
    assert runs(conn) == 0


def test_a_task_whose_args_cannot_be_named_refuses_positional_values(app, conn):
    @app.task
    def total(*numbers: int) -> int:
        return sum(numbers)

    with pytest.raises(InvalidArgs, match="'numbers' takes values by position only"):
        total.delay(1, 2)
    assert runs(conn) == 0


# ---- apply_async: Celery's options mapped onto a run


def test_apply_async_maps_countdown_queue_priority_and_task_id(app, conn):
    @app.task
    def ping(n: int) -> None: ...

    handle = ping.apply_async((1,), countdown=120, queue="slow", priority=7, task_id="ping-1")
    row = conn.execute(
        "SELECT queue, priority, unique_key, run_at - created_at AS wait FROM pgsched.runs_all WHERE id = %s",
        (handle.id,),
    ).fetchone()
    assert row is not None and row[:3] == ("slow", 7, "ping-1")
    assert timedelta(seconds=119) < row[3] <= timedelta(seconds=121)
    again = ping.apply_async((2,), task_id="ping-1")
    assert again == handle and runs(conn) == 1  # the same task_id is the same run


def test_apply_async_eta_is_the_run_at(app, conn):
    @app.task
    def ping() -> None: ...

    eta = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    handle = ping.apply_async(eta=eta)
    assert scalar(conn, "SELECT run_at FROM pgsched.runs_all WHERE id = %s", (handle.id,)) == eta


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"countdown": 5, "eta": datetime(2031, 1, 1, tzinfo=timezone.utc)}, "countdown and eta cannot both be given"),
        ({"eta": datetime(2031, 1, 1)}, "eta must be a timezone-aware datetime"),
        ({"expires": datetime(2031, 1, 1)}, "expires must be a timezone-aware datetime"),
        (
            {"eta": datetime(2031, 1, 2, tzinfo=timezone.utc), "expires": datetime(2031, 1, 1, tzinfo=timezone.utc)},
            "expires .* is not after the run is due .*: it would never start",
        ),
        ({"countdown": 60, "expires": 30}, "is not after the run is due"),
        ({"countdown": -1}, "countdown must be a number of seconds >= 0"),
        ({"expires": 0}, "expires must be a timezone-aware datetime or seconds from now"),
        ({"priority": 101}, "priority must be an integer between -100 and 100"),
        ({"queue": "no spaces"}, "queue 'no spaces' is not a valid name"),
        ({"task_id": ""}, "task_id must be a non-empty string"),
    ],
)
def test_apply_async_refuses_bad_options_naming_them_and_queues_nothing(app, conn, options, message):
    @app.task
    def ping() -> None: ...

    with pytest.raises(InvalidInput, match=message):
        ping.apply_async(**options)
    assert runs(conn) == 0


def test_a_task_id_another_tasks_run_holds_is_refused(app, conn):
    @app.task
    def first() -> None: ...

    @app.task
    def second() -> None: ...

    held = first.apply_async(task_id="order-7")
    with pytest.raises(
        InvalidInput, match=r"task_id 'order-7' already belongs to run \d+ of task 'first', not 'second'"
    ):
        second.apply_async(task_id="order-7")
    assert runs(conn) == 1 and held.status == "queued"


# ---- handles: get / wait, woken by the run's notification


def test_get_raises_run_failed_with_the_remote_type_message_and_traceback(app, dsn):
    @app.task(max_attempts=1)
    async def explode(why: str) -> None:
        raise ValueError(why)

    handle = explode.delay("no fuel")

    async def body(w: RunningWorker) -> Any:
        return await asyncio.to_thread(handle.get, 10)

    with pytest.raises(RunFailed) as failed:
        with_worker(app, dsn, body)
    error = failed.value
    assert (error.run_id, error.error_type, error.error_message) == (handle.id, "ValueError", "no fuel")
    assert error.remote_traceback is not None and "raise ValueError(why)" in error.remote_traceback
    assert handle.failed() and isinstance(handle.result, RunFailed)
    assert isinstance(handle.get(propagate=False), RunFailed)


def test_wait_returns_the_result_in_asyncio(app, dsn):
    @app.task
    async def double(x: int) -> int:
        return 2 * x

    async def body(w: RunningWorker) -> Any:
        return await double.delay(21).wait(timeout=10)

    assert with_worker(app, dsn, body) == 42


def test_get_and_wait_time_out_with_timeout_error_when_no_worker_runs_the_run(app):
    @app.task
    def idle() -> None: ...

    handle = idle.delay()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=f"run {handle.id} did not finish within 0.3s"):
        handle.get(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        asyncio.run(handle.wait(timeout=0.2))


def test_get_inside_a_task_raises_at_once(app, dsn):
    @app.task
    def inner() -> int:
        return 1

    @app.task
    def outer() -> str:
        try:
            inner.delay().get(timeout=30)
        except WaitInsideTask as exc:
            return type(exc).__name__
        return "waited"

    @app.task
    async def outer_async() -> str:
        try:
            await inner.delay().wait(timeout=30)
        except WaitInsideTask as exc:
            return type(exc).__name__
        return "waited"

    handles = [outer.delay(), outer_async.delay()]

    async def body(w: RunningWorker) -> Any:
        return [await h.wait(timeout=10) for h in handles]

    started = time.monotonic()
    assert with_worker(app, dsn, body) == ["WaitInsideTask", "WaitInsideTask"]
    assert time.monotonic() - started < 10


def test_app_run_gives_the_handle_of_any_run(app, conn):
    run_id = app.enqueue("anything", {"a": 1})
    handle = app.run(run_id)
    assert handle == RunHandle(app, run_id) and handle.status == "queued" and handle.result is None
    with pytest.raises(RunNotFound):
        _ = app.run(run_id + 1000).status
    with pytest.raises(InvalidInput, match="a run id is a positive integer"):
        app.run(0)


def test_a_cancelled_run_raises_run_cancelled_for_its_waiter(app, conn):
    @app.task
    def slow() -> None: ...

    handle = slow.delay()
    conn.execute("SELECT pgsched.cancel(%s)", (handle.id,))
    with pytest.raises(RunCancelled) as cancelled:
        handle.get(timeout=5)
    assert cancelled.value.reason == "cancel requested" and cancelled.value.status == "cancelled"


# ---- the notification: sent for runs someone waits on, and only for them


def finish_by_sql(conn: psycopg.Connection, run_id: int) -> None:
    conn.execute("UPDATE pgsched.runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (run_id,))


def test_a_run_nobody_waits_on_ends_without_a_notification(app, dsn, conn):
    watched, unwatched = app.enqueue("t"), app.enqueue("t")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(queries["run_listen_finished"])
        conn.execute(queries["run_watch"], {"id": watched})
        finish_by_sql(conn, unwatched)
        finish_by_sql(conn, watched)
        heard = [n.payload for n in listener.notifies(timeout=1)]
    assert heard == [str(watched)]


def test_watching_a_queued_run_wakes_the_workers_that_skipped_its_locked_row(app, dsn, conn):
    run_id = app.enqueue("t", queue="mail")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(queries["worker_listen"])
        conn.execute(queries["run_watch"], {"id": run_id})
        conn.execute(queries["run_watch"], {"id": run_id})  # a second waiter: already watched, no write
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=0.5)]
    assert heard == [("pgsched", "mail")]


def test_a_waiter_is_woken_by_the_notification_not_by_a_poll(app, dsn):
    run_id = app.enqueue("t")
    handle = app.run(run_id)

    async def finish_later() -> float:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
            watched = "SELECT awaited IS TRUE FROM pgsched.runs_all WHERE id = %s"
            await wait_until_async(
                lambda: scalar_async(other, watched, run_id), 10, "the waiter to mark the run awaited", poll=0.01
            )
            await other.execute(
                "UPDATE pgsched.runs SET status = 'succeeded', result = '7', finished_at = now() WHERE id = %s",
                (run_id,),
            )
            return time.monotonic()

    async def main() -> tuple[Any, float, float]:
        finisher = asyncio.create_task(finish_later())
        result = await handle.wait(timeout=20)
        return result, time.monotonic(), await finisher

    result, woken, finished = asyncio.run(main())
    assert result == 7
    assert woken - finished < 1.0  # a notification, not the end of a timeout

"""Django (pgsched.contrib.django) with a real project (tests/django_project) on the suite's
PostgreSQL: a run queued inside ``transaction.atomic()`` exists if and only if the block commits,
and ``manage.py pgsched_worker`` runs the project's tasks with its ORM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from tests.support.db import empty_tables, scalar

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = "tests.django_project.settings"


@pytest.fixture(scope="module")
def django_dsn(module_dsn: str) -> Iterator[str]:
    """Django set up on this module's database (settings read once per process: one module).
    The environment is restored afterwards, so later tests' subprocesses do not inherit it."""
    saved = {name: os.environ.get(name) for name in ("PGSCHED_TEST_DJANGO_DSN", "DJANGO_SETTINGS_MODULE")}
    os.environ["PGSCHED_TEST_DJANGO_DSN"] = module_dsn
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS
    import django
    from django.core.management import call_command
    from django.db import connections

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    try:
        yield module_dsn
    finally:
        from tests.django_project.shop.tasks import app

        app.close()
        connections.close_all()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def dsn(django_dsn: str) -> str:
    with psycopg.connect(django_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM shop_order")
    return empty_tables(django_dsn)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


def counts(conn: psycopg.Connection) -> tuple[Any, Any]:
    return scalar(conn, "SELECT count(*) FROM shop_order"), scalar(conn, "SELECT count(*) FROM pgsched.runs_all")


def test_delay_inside_atomic_joins_djangos_transaction_and_exists_once_it_commits(conn):
    from django.db import transaction

    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import ship

    with transaction.atomic():
        order = Order.objects.create(item="lamp")
        handle = ship.delay(order.id)
        assert counts(conn) == (0, 0)  # neither is visible before the commit
    assert counts(conn) == (1, 1)
    assert handle.status == "queued"
    assert scalar(conn, "SELECT args FROM pgsched.runs_all WHERE id = %s", (handle.id,)) == {"order_id": order.id}


def test_a_rolled_back_atomic_block_leaves_no_run(conn):
    from django.db import transaction

    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import app, ship

    with pytest.raises(RuntimeError), transaction.atomic():
        order = Order.objects.create(item="desk")
        ship.delay(order.id)
        app.enqueue("ship", {"order_id": order.id})
        raise RuntimeError("payment declined")
    assert counts(conn) == (0, 0)


def test_outside_an_atomic_block_the_app_enqueues_through_its_own_pool(conn):
    from django.db import connection

    from tests.django_project.shop.tasks import ship

    assert not connection.in_atomic_block
    handle = ship.delay(1)
    assert counts(conn) == (0, 1) and handle.status == "queued"


def test_django_connection_is_djangos_own(conn):
    from django.db import connection, transaction

    from pgsched.contrib.django import django_connection
    from tests.django_project.shop.tasks import app

    with transaction.atomic():
        assert django_connection() is connection.connection
        app.enqueue("ship", {"order_id": 1}, conn=django_connection())
        transaction.set_rollback(True)
    assert counts(conn) == (0, 0)


def manage(dsn: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PGSCHED_TEST_DJANGO_DSN": dsn, "DJANGO_SETTINGS_MODULE": SETTINGS}
    return subprocess.Popen(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_manage_py_pgsched_worker_runs_the_projects_tasks_with_its_orm(conn, dsn):
    from tests.django_project.shop.models import Order
    from tests.django_project.shop.tasks import ship

    order = Order.objects.create(item="chair")
    handle = ship.delay(order.id)
    worker = manage(dsn, "pgsched_worker", "--concurrency", "2")
    try:
        result = handle.get(timeout=60)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert result == "chair"
    assert Order.objects.get(id=order.id).shipped
    assert worker.returncode == 0, stderr


def test_manage_py_pgsched_worker_names_an_app_that_does_not_import(dsn):
    worker = manage(dsn, "pgsched_worker", "--app", "tests.django_project.nowhere:app")
    _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 1
    assert "CommandError: cannot import 'tests.django_project.nowhere' for --app" in stderr
    assert "Traceback" not in stderr


# ---- Django's Tasks framework (the django-tasks backport) on PgschedBackend


def test_a_django_task_is_a_run_with_its_priority_negated_and_its_queue(conn):
    from pgsched.contrib.django import DJANGO_TASK
    from tests.django_project.shop.tasks import add

    result = add.enqueue(2, 3)
    row = conn.execute("SELECT task, queue, priority, args, max_attempts FROM pgsched.runs_all").fetchone()
    path = "tests.django_project.shop.tasks.add"
    assert row == (DJANGO_TASK, "emails", -20, {"path": path, "args": [2, 3], "kwargs": {}}, 1)
    assert result.id == str(scalar(conn, "SELECT id FROM pgsched.runs_all")) and result.status == "READY"


def test_a_django_task_in_a_rolled_back_atomic_block_leaves_no_run(conn):
    from django.db import transaction

    from tests.django_project.shop.tasks import add

    with transaction.atomic():
        add.enqueue(1, 1)
        transaction.set_rollback(True)
    assert counts(conn) == (0, 0)


def test_django_tasks_run_on_a_pgsched_worker_and_their_results_read_back(dsn):
    import asyncio

    from tests.django_project.shop.tasks import add, app, fail
    from tests.support.inprocess import RunningWorker

    added, failed = add.enqueue(20, 22), fail.enqueue("out of stock")

    async def main() -> None:
        async with RunningWorker(app, dsn, queues=["default", "emails"]):
            for result in (added, failed):
                await app.run(int(result.id)).wait(timeout=20, propagate=False)

    asyncio.run(main())
    added.refresh()
    failed.refresh()
    assert (added.status, added.return_value, added.attempts) == ("SUCCESSFUL", 42, 1)
    assert failed.status == "FAILED" and failed.errors[0].exception_class is ValueError
    assert "out of stock" in failed.errors[0].traceback


def test_the_backend_refuses_what_it_cannot_run(conn):
    import dataclasses

    import django_tasks
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist

    from tests.django_project.shop.tasks import add, greet

    with pytest.raises(InvalidTaskError, match="pgsched does not pass a task context yet"):
        dataclasses.replace(add, func=greet, takes_context=True)
    with pytest.raises(InvalidTaskError, match="Queue 'nowhere' is not valid"):
        add.using(queue_name="nowhere")
    backend = django_tasks.task_backends["default"]
    for missing in ("12345", "abc", str(backend.app.enqueue("other"))):
        with pytest.raises(TaskResultDoesNotExist):
            backend.get_result(missing)
    assert counts(conn) == (0, 1)

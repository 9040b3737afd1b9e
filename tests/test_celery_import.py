"""`pgsched beat import-celery` against a real Celery app object (tests/celery_project.py): every
schedule it can carry over becomes a job, in the Celery app's timezone; what it cannot (solar, a
custom class, an option without a counterpart) is named with the reason while the rest import;
--dry-run writes nothing; a path that does not import is one error line."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from pgsched.celery_import import import_entries, read_beat_schedule
from pgsched.jobs import list_jobs
from tests.celery_project import app as pgsched_app
from tests.celery_project import celery_app
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import scalar

CELERY_APP = "tests.celery_project:celery_app"
CARRIED = {"morning-report", "sync-stock", "heartbeat", "cleanup"}


def jobs(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    return {
        row[0]: {"task": row[1], "cron": row[2], "every_s": row[3], "tz": row[4], "args": row[5], "queue": row[6]}
        for row in conn.execute("SELECT name, task, cron, every_s, tz, args, queue FROM pgsched.jobs")
    }


def test_every_schedule_that_maps_becomes_a_job_in_the_celery_timezone(conn):
    entries = import_entries(conn, read_beat_schedule(celery_app, pgsched_app), dry_run=False)
    assert {e.name for e in entries if e.action == "create"} == CARRIED
    assert jobs(conn) == {
        "morning-report": {
            "task": "shop.tasks.report",
            "cron": "30 7 * * mon-fri",
            "every_s": None,
            "tz": "Europe/Berlin",
            "args": {"kind": "daily"},
            "queue": "reports",
        },
        "sync-stock": {
            "task": "shop.tasks.sync_stock",
            "cron": None,
            "every_s": 300.0,
            "tz": "UTC",
            "args": {},
            "queue": "default",
        },
        "heartbeat": {
            "task": "shop.tasks.heartbeat",
            "cron": None,
            "every_s": 30.0,
            "tz": "UTC",
            "args": {},
            "queue": "default",
        },
        "cleanup": {  # positional args named by the pgsched task's signature
            "task": "shop.tasks.cleanup",
            "cron": None,
            "every_s": 3600.0,
            "tz": "UTC",
            "args": {"days": 7},
            "queue": "default",
        },
    }
    assert all(job["next_run_at"] is not None for job in list_jobs(conn))


def test_what_cannot_be_carried_over_is_named_with_its_reason(conn):
    skipped = {e.name: e.skipped for e in read_beat_schedule(celery_app, pgsched_app) if e.spec is None}
    assert set(skipped) == {"sunrise-lights", "odd-days", "with-expiry"}
    assert "solar schedules (sunrise at 52.52, 13.4) have no pgsched equivalent" in str(skipped["sunrise-lights"])
    assert "the schedule class every_other_day is custom" in str(skipped["odd-days"])
    assert "options expires have no pgsched counterpart" in str(skipped["with-expiry"])


def test_positional_args_without_the_pgsched_app_are_skipped_not_guessed():
    [cleanup] = [e for e in read_beat_schedule(celery_app) if e.name == "cleanup"]
    assert cleanup.spec is None and "positional args (7,) need the task's signature" in str(cleanup.skipped)


def test_the_cli_dry_run_shows_the_table_and_writes_nothing(dsn, conn):
    shown = run_cli(dsn, "beat", "import-celery", CELERY_APP, "--app", "tests.celery_project:app", "--dry-run")
    assert shown.returncode == 0, shown.stderr
    assert "would import 4 of 7 entries; 3 skipped" in shown.stdout
    assert "30 7 * * mon-fri (Europe/Berlin)" in shown.stdout and "skip: solar schedules" in shown.stdout
    assert scalar(conn, "SELECT count(*) FROM pgsched.jobs") == 0


def test_the_cli_imports_then_updates_in_place(dsn, conn):
    first = run_cli(dsn, "beat", "import-celery", CELERY_APP, "--app", "tests.celery_project:app")
    assert first.returncode == 0 and "imported 4 of 7 entries; 3 skipped" in first.stdout, first.stderr
    ids = dict(conn.execute("SELECT name, id FROM pgsched.jobs").fetchall())
    again = run_cli(dsn, "beat", "import-celery", CELERY_APP, "--app", "tests.celery_project:app")
    assert again.returncode == 0 and again.stdout.count("update") == 4, again.stdout
    assert dict(conn.execute("SELECT name, id FROM pgsched.jobs").fetchall()) == ids


@pytest.mark.parametrize(
    ("path", "fragments"),
    [
        ("tests.no_such_module:celery_app", ("cannot import 'tests.no_such_module' for the Celery app",)),
        ("tests.celery_project:missing", ("module 'tests.celery_project' has no attribute 'missing'",)),
        ("tests.celery_project:not_a_celery_app", ("must name a Celery app, found object",)),
        ("no-colon", ("the Celery app must look like module:attribute",)),
    ],
)
def test_a_celery_app_path_that_does_not_import_is_one_error_line(dsn, conn, path, fragments):
    assert_one_error_line(run_cli(dsn, "beat", "import-celery", path), *fragments)
    assert scalar(conn, "SELECT count(*) FROM pgsched.jobs") == 0

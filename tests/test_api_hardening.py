"""The REST API refuses what its readers cannot read, and never answers a committed write
with an error: a 4xx or 5xx means nothing was written (issue #11)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.api import Api
from tests.support.cli import run_cli
from tests.support.db import drop_the_rules_of_0009, scalar

LONG_TZ = "Europe/" + "x" * 300


def rows(conn: psycopg.Connection) -> tuple[int, int]:
    return scalar(conn, "SELECT count(*) FROM pgsched.runs_all"), scalar(conn, "SELECT count(*) FROM pgsched.jobs")


def every_list_answers(api: Api) -> None:
    for path in ("/runs", "/jobs", "/queues", "/workers", "/metrics"):
        assert api.get(path).status_code == 200, path


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "f", "task": "noop", "every": 1e-300}, "every"),
        ({"name": "f", "task": "noop", "every": 0.5}, "every"),
        ({"name": "f", "task": "noop", "cron": "* * * * *", "tz": LONG_TZ}, "tz"),
        ({"name": "f", "task": "noop", "cron": "* * * * *", "tz": "x" * 256}, "tz"),
    ],
    ids=["every-1e-300", "every-half-a-second", "tz-307-characters", "tz-256-characters"],
)
def test_post_jobs_refuses_a_schedule_the_beat_cannot_fire_with_a_4xx_and_writes_nothing(
    api: Api, conn: psycopg.Connection, body: dict[str, Any], field: str
) -> None:
    response = api.post("/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in response.text
    assert rows(conn) == (0, 0)
    every_list_answers(api)


@pytest.mark.parametrize("change", [{"every": 1e-300}, {"tz": LONG_TZ}], ids=["every-1e-300", "tz-307-characters"])
def test_patch_jobs_refuses_a_schedule_the_beat_cannot_fire_and_leaves_the_job_as_it_was(
    api: Api, conn: psycopg.Connection, change: dict[str, Any]
) -> None:
    before = api.post("/jobs", json={"name": "j", "task": "noop", "every": 60})
    assert before.status_code == 201, before.text
    response = api.patch("/jobs/j", json=change)
    assert response.status_code == 422, response.text
    assert api.get("/jobs/j").json() == before.json()


@pytest.mark.parametrize(
    "run_at", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"], ids=["year-10000-in-utc", "1-bc-in-utc"]
)
def test_post_runs_with_an_instant_no_reader_can_hold_writes_nothing_and_every_list_still_answers(
    api: Api, conn: psycopg.Connection, run_at: str
) -> None:
    response = api.post("/runs", json={"task": "noop", "run_at": run_at})
    assert 400 <= response.status_code < 500, response.text
    assert rows(conn) == (0, 0)
    every_list_answers(api)


def test_rows_with_instants_no_datetime_holds_never_break_a_list_or_a_detail(
    api: Api, conn: psycopg.Connection, dsn: str
) -> None:
    # Rows that slipped in before schema 0009 bounded what plain SQL writes: every reader must
    # still answer. (0009 repairs the ones it finds; this database lacks its rules, as a database
    # restored without them would.)
    drop_the_rules_of_0009(conn)
    infinite = scalar(conn, "INSERT INTO pgsched.runs (task, run_at) VALUES ('t', 'infinity') RETURNING id")
    ancient = scalar(conn, "INSERT INTO pgsched.runs (task, created_at) VALUES ('t', '4000-01-01 BC') RETURNING id")
    conn.execute("INSERT INTO pgsched.runs (task, run_at) VALUES ('t', '9999-12-31T23:59:59-14:00')")
    conn.execute("INSERT INTO pgsched.runs (task, run_at) VALUES ('t', '-infinity')")  # GET /queues, stats
    conn.execute(  # the /metrics histograms: it finished a moment ago (0009 refuses an insert not queued)
        "INSERT INTO pgsched.runs (task, status, attempt, worker_id, started_at, finished_at, created_at)"
        " VALUES ('t', 'succeeded', 1, 1, now(), now(), 'infinity')"
    )
    conn.execute("INSERT INTO pgsched.jobs (name, task, at) VALUES ('never', 't', 'infinity')")
    every_list_answers(api)
    assert api.get(f"/runs/{infinite}").json()["run_at"].startswith("9999-12-31T23:59:59")
    assert api.get(f"/runs/{ancient}").json()["created_at"].startswith("0001-01-01T00:00:00")
    assert api.get("/jobs/never").status_code == 200
    for command in (
        ["runs", "list"],
        ["runs", "show", str(infinite)],
        ["stats"],
        ["jobs", "list"],
        ["jobs", "show", "never"],
    ):
        result = run_cli(dsn, *command)
        assert result.returncode == 0, f"{command}: {result.stderr}"

"""runs_history (schema 0029, issue 13 part 1): the home of finished runs, in day partitions the
beat leader creates ahead and drops past the retention, and pgsched.runs_all, through which
every reader sees runs in either table as one."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest

from pgsched.app import App
from pgsched.maintenance import HistoryRound, maintain_history, prune_finished
from tests.support.api import Api, ok
from tests.support.cli import run_cli
from tests.support.history import drop_day_partitions, partitions
from tests.support.inprocess import finish
from tests.support.metrics import metric_samples


def move_to_history(conn: psycopg.Connection[Any], *run_ids: int) -> None:
    """What the move does with a run that ended for good: in one transaction, into runs_history
    and out of runs (so every snapshot sees it in exactly one of them)."""
    with conn.transaction():
        conn.execute("INSERT INTO pgsched.runs_history SELECT * FROM pgsched.runs WHERE id = ANY(%s)", [list(run_ids)])
        conn.execute("DELETE FROM pgsched.runs WHERE id = ANY(%s)", [list(run_ids)])


def partition_of(conn: psycopg.Connection[Any], run_id: int) -> str:
    """The table (or partition) that holds a run."""
    row = conn.execute(
        "SELECT tableoid::regclass::text FROM pgsched.runs WHERE id = %(id)s"
        " UNION ALL SELECT tableoid::regclass::text FROM pgsched.runs_history WHERE id = %(id)s",
        {"id": run_id},
    ).fetchone()
    assert row is not None, f"run {run_id} is nowhere"
    return str(row[0])


def stray(conn: psycopg.Connection[Any], run_id: int, finished_at: str) -> None:
    conn.execute(
        "INSERT INTO pgsched.runs_history (id, task, finished_at, status, created_at, run_at, args, queue,"
        " priority, attempt, max_attempts, errors)"
        " VALUES (%s, 't', %s, 'succeeded', now(), now(), '{}', 'default', 0, 1, 1, '[]')",
        [run_id, finished_at],
    )


def history_round(dsn: str, **kwargs: Any) -> HistoryRound:
    async def main() -> HistoryRound:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await maintain_history(own, **kwargs)

    return asyncio.run(main())


def prune(dsn: str, retention_s: float, now: datetime | None = None) -> int:
    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await prune_finished(own, retention_s=retention_s, now=now)

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def no_day_partitions(conn: psycopg.Connection[Any]) -> None:
    """These tests start where an installation upgraded to 0029 starts: no day partition yet
    (0030, post-deploy, makes today's and the next three on a fresh database)."""
    drop_day_partitions(conn)


@pytest.fixture
def finished_runs(app: App, dsn: str, conn: psycopg.Connection[Any]) -> dict[str, int]:
    """A succeeded and a failed run, in runs_history, and a queued one in runs."""

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(max_attempts=1)
    def boom() -> None:
        raise ValueError("no")

    done, failed = add.delay(2, 3), boom.delay()
    finish(app, dsn, done.id, failed.id)
    history_round(dsn, retention_s=7 * 86400)
    move_to_history(conn, done.id, failed.id)
    queued = add.delay(1, 1)
    return {"succeeded": done.id, "failed": failed.id, "queued": queued.id}


def test_a_finished_run_in_history_reads_as_before_from_python(
    app: App, conn: psycopg.Connection[Any], finished_runs: dict[str, int]
) -> None:
    today = datetime.now(UTC).date()
    assert partition_of(conn, finished_runs["succeeded"]) == f"pgsched.runs_history_{today:%Y%m%d}"
    assert partition_of(conn, finished_runs["queued"]) == "pgsched.runs"
    handle = app.run(finished_runs["succeeded"])
    assert handle.status == "succeeded" and handle.get(timeout=5) == 5
    with pytest.raises(Exception, match="no"):
        app.run(finished_runs["failed"]).get(timeout=5)
    assert conn.execute("SELECT count(*) FROM pgsched.recent_failures").fetchone() == (1,)
    assert [row[0] for row in conn.execute("SELECT queue FROM pgsched.queue_stats WHERE failed = 1")] == ["default"]


def test_rest_and_cli_see_runs_of_both_tables_as_one(
    api: Api, dsn: str, finished_runs: dict[str, int], conn: psycopg.Connection[Any]
) -> None:
    run = ok(api.get(f"/runs/{finished_runs['succeeded']}", as_="read"))
    assert (run["status"], run["result"]) == ("succeeded", 5)
    page = ok(api.get("/runs", as_="read"))
    assert [r["id"] for r in page["items"]] == sorted(finished_runs.values(), reverse=True)
    failed = ok(api.get("/runs", params={"status": "failed"}, as_="read"))
    assert [r["id"] for r in failed["items"]] == [finished_runs["failed"]]
    shown = run_cli(dsn, "runs", "show", str(finished_runs["succeeded"]))
    assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stderr
    listed = run_cli(dsn, "runs", "list")
    assert listed.returncode == 0 and str(finished_runs["failed"]) in listed.stdout, listed.stderr
    assert api.get(f"/runs/{max(finished_runs.values()) + 1}", as_="read").status_code == 404


def test_maintenance_creates_day_partitions_ahead_once(dsn: str, conn: psycopg.Connection[Any]) -> None:
    now = datetime(2026, 12, 7, 23, 59, tzinfo=UTC)
    first = history_round(dsn, retention_s=7 * 86400, now=now, days_ahead=3)
    assert first.created == [f"runs_history_2026120{d}" for d in (7, 8, 9)] + ["runs_history_20261210"]
    assert history_round(dsn, retention_s=7 * 86400, now=now, days_ahead=3).created == []
    assert partitions(conn) == first.created
    # A run finished on the 8th (UTC) lands in that day's partition.
    stray(conn, 1, "2026-12-08 00:00:00+00")
    assert partition_of(conn, 1) == "pgsched.runs_history_20261208"


def test_strays_of_a_day_move_into_its_partition_when_it_is_created(dsn: str, conn: psycopg.Connection[Any]) -> None:
    stray(conn, 1, "2026-12-07 12:00:00+00")
    stray(conn, 2, "2020-01-01 12:00:00+00")
    assert partition_of(conn, 1) == "pgsched.runs_history_default"
    history_round(dsn, retention_s=30 * 86400, now=datetime(2026, 12, 7, 13, tzinfo=UTC), days_ahead=0)
    assert partition_of(conn, 1) == "pgsched.runs_history_20261207"
    assert partition_of(conn, 2) == "pgsched.runs_history_default"


def test_retention_drops_whole_days_and_prunes_only_the_default_partition_row_by_row(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    day = date(2026, 12, 1)
    for offset in range(5):
        conn.execute("SELECT pgsched.history_partition_create(%s)", [day + timedelta(days=offset)])
        stray(conn, 10 + offset, f"{day + timedelta(days=offset)} 12:00:00+00")
    stray(conn, 1, "2020-01-01 00:00:00+00")  # in the DEFAULT partition, long past the retention
    now = datetime(2026, 12, 6, 6, tzinfo=UTC)
    # Two days' retention: cut-off 12-04 06:00, so 12-01 to 12-03 are wholly past it; 12-04's
    # run (12:00) is kept, and so is its partition.
    done = history_round(dsn, retention_s=2 * 86400, now=now, days_ahead=0)
    assert done.dropped == ["runs_history_20261201", "runs_history_20261202", "runs_history_20261203"]
    assert partitions(conn) == ["runs_history_20261204", "runs_history_20261205", "runs_history_20261206"]
    assert prune(dsn, 2 * 86400, now=now) == 1
    assert [row[0] for row in conn.execute("SELECT id FROM pgsched.runs_history ORDER BY id")] == [13, 14]


def test_a_retention_shorter_than_a_day_prunes_rows_in_the_partitions(dsn: str, conn: psycopg.Connection[Any]) -> None:
    history_round(dsn, retention_s=3600, days_ahead=0)
    stray(conn, 1, str(datetime.now(UTC) - timedelta(minutes=90)))
    stray(conn, 2, str(datetime.now(UTC)))
    assert prune(dsn, 3600) == 1
    assert [row[0] for row in conn.execute("SELECT id FROM pgsched.runs_history")] == [2]


def test_a_drop_that_cannot_get_its_lock_gives_up_and_is_retried_next_round(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("SELECT pgsched.history_partition_create('2026-12-01')")
    now = datetime(2026, 12, 10, tzinfo=UTC)
    with psycopg.connect(dsn) as reader:  # a long read of the history holds its lock
        reader.execute("SELECT count(*) FROM pgsched.runs_all").fetchone()
        blocked = history_round(dsn, retention_s=86400, now=now, days_ahead=0, lock_timeout="50ms")
        # Attaching a day locks the DEFAULT partition, which the reader reads too: both wait.
        assert blocked.timed_out == ["runs_history_20261210", "runs_history_20261201"]
        assert blocked.dropped == blocked.created == [] and partitions(conn) == ["runs_history_20261201"]
        reader.rollback()
    retried = history_round(dsn, retention_s=86400, now=now, days_ahead=0)
    assert (retried.created, retried.dropped, retried.timed_out) == (
        ["runs_history_20261210"],
        ["runs_history_20261201"],
        [],
    )


def test_metrics_say_how_many_runs_sit_in_the_default_partition(api: Api, conn: psycopg.Connection[Any]) -> None:
    assert metric_samples(api)["pgsched_history_default_rows"] == [({}, 0.0)]
    stray(conn, 1, "2020-01-01 00:00:00+00")
    stray(conn, 2, "2020-01-02 00:00:00+00")
    assert metric_samples(api)["pgsched_history_default_rows"] == [({}, 2.0)]


def test_partition_functions_refuse_bad_input_and_write_nothing(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="day must be a date"):
        conn.execute("SELECT pgsched.history_partition_create(NULL)")
    # Only a day partition past the cut-off is dropped: never the DEFAULT one, nor another table.
    assert conn.execute("SELECT pgsched.history_partition_drop('runs_history_default', now())").fetchone() == (False,)
    assert conn.execute("SELECT pgsched.history_partition_drop('runs', now())").fetchone() == (False,)
    assert conn.execute("SELECT to_regclass('pgsched.runs_history_default') IS NOT NULL").fetchone() == (True,)


def test_an_installation_upgraded_to_0029_keeps_its_finished_runs_where_they_are_and_reads_them(
    empty_dsn: str,
) -> None:
    from pgsched.migrate import migrate
    from pgsched.runs import get_run, list_runs

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        migrate(conn, up_to="0028")
        conn.execute("INSERT INTO pgsched.runs (task) SELECT 't' FROM generate_series(1, 3)")
        conn.execute(
            "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
            " WHERE id < 3"
        )
        assert [m.version for m in migrate(conn)][-1] >= "0029"
        assert conn.execute("SELECT count(*) FROM pgsched.runs_history").fetchone() == (0,)
        assert [run["id"] for run in list_runs(conn, limit=10)] == [3, 2, 1]
        assert get_run(conn, 1)["status"] == "succeeded"
    assert len(history_round(empty_dsn, retention_s=86400, days_ahead=1).created) == 2


def test_retry_of_a_run_in_history_moves_it_back_queued_with_its_attempts(
    app: App, dsn: str, conn: psycopg.Connection[Any], finished_runs: dict[str, int], api: Api
) -> None:
    failed = finished_runs["failed"]
    ok(api.post(f"/runs/{failed}/retry"))
    assert partition_of(conn, failed) == "pgsched.runs"
    row = conn.execute("SELECT status, attempt, max_attempts, finished_at FROM pgsched.runs WHERE id = %s", [failed])
    assert row.fetchone() == ("queued", 1, 2, None)
    assert conn.execute("SELECT count(*) FROM pgsched.runs_history WHERE id = %s", [failed]).fetchone() == (0,)
    # It runs again, a second attempt, and fails for good again.
    [again] = finish(app, dsn, failed)
    assert (again["status"], again["attempt"]) == ("failed", 2)
    # A succeeded run in history is refused, as it was in runs, and stays where it is.
    refused = api.post(f"/runs/{finished_runs['succeeded']}/retry")
    assert refused.status_code == 409 and "it is succeeded" in refused.text
    assert partition_of(conn, finished_runs["succeeded"]).startswith("pgsched.runs_history_")


def test_bulk_retry_moves_back_what_is_in_history_and_requeues_what_is_in_runs(
    app: App, dsn: str, conn: psycopg.Connection[Any], finished_runs: dict[str, int]
) -> None:
    from pgsched.runs import retry_runs

    @app.task(max_attempts=1)
    def boom_too() -> None:
        raise ValueError("no")

    in_runs = boom_too.delay().id
    finish(app, dsn, in_runs)
    everything = [finished_runs["failed"], in_runs, finished_runs["succeeded"], 10**9]
    assert retry_runs(conn, everything) == sorted([finished_runs["failed"], in_runs])
    statuses = conn.execute("SELECT id, status::text FROM pgsched.runs WHERE id = ANY(%s) ORDER BY id", [everything])
    assert statuses.fetchall() == [(finished_runs["failed"], "queued"), (in_runs, "queued")]


def test_cancel_of_a_run_in_history_says_it_ended_not_that_it_does_not_exist(
    api: Api, finished_runs: dict[str, int]
) -> None:
    refused = api.post(f"/runs/{finished_runs['succeeded']}/cancel")
    assert refused.status_code == 409 and "it is succeeded" in refused.text
    assert api.post(f"/runs/{10**9}/cancel").status_code == 404

"""Reads from a real streaming replica (PGSCHED_READ_DSN): the API's lists and statistics and
the dashboard's list pages read there; writes, and reads of what a request just wrote, stay on
the primary; a replica that lags past the bound or stops sends reads to the primary, with a
warning, never an error."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient

from pgsched.api import ApiSettings, create_app
from pgsched.errors import ConfigError
from tests.support.api import TEST_SETTINGS, Api, make_keys, ok
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.replica import Replica, streaming_replica
from tests.support.ui import sign_in
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def replica(postgresql_proc: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    with streaming_replica(postgresql_proc, Path(tmp_path_factory.mktemp("replica"))) as standby:
        yield standby


@pytest.fixture
def dbname(replica: Replica, conn: psycopg.Connection) -> Iterator[str]:
    """This test's database, replayed on the replica; replay resumed afterwards whatever the test did."""
    name = conn.info.dbname
    replica.wait_for(name)
    yield name
    replica.start_if_stopped()
    replica.resume_replay(name)


@contextmanager
def api_reading_from(replica: Replica, dsn: str, conn: psycopg.Connection, max_lag_s: float) -> Iterator[Api]:
    settings = ApiSettings(dsn=dsn, read_dsn=replica.dsn(conn.info.dbname), read_max_lag_s=max_lag_s, **TEST_SETTINGS)
    with TestClient(create_app(settings)) as client:
        yield Api(client, make_keys(conn))


def listed(api: Api, path: str = "/runs") -> list[int]:
    return [item["id"] for item in ok(api.get(path, as_="read"))["items"]]


def test_lists_read_from_the_replica_and_writes_go_to_the_primary(
    replica: Replica, dbname: str, dsn: str, conn: psycopg.Connection
) -> None:
    with api_reading_from(replica, dsn, conn, max_lag_s=3600) as api:
        first = ok(api.post("/runs", json={"task": "t", "queue": "q"}), 201)["id"]
        replica.wait_for(dbname)
        assert listed(api) == [first]
        replica.pause_replay(dbname)
        second = ok(api.post("/runs", json={"task": "t", "queue": "q"}), 201)["id"]  # on the primary
        # The same request's own read-back, and a later read of that one run: the primary's.
        assert ok(api.get(f"/runs/{second}", as_="read"))["status"] == "queued"
        # The lists come from the replica, whose replay is paused: the second run is not there yet.
        assert listed(api) == [first]
        [queue] = ok(api.get("/queues", as_="read"))["items"]
        assert (queue["queue"], queue["queued"]) == ("q", 1)
        replica.resume_replay(dbname)
        wait_until(lambda: listed(api) == [second, first], 10, "the replayed run in the list")


def test_a_replica_lagging_past_the_bound_sends_reads_to_the_primary_with_a_warning(
    replica: Replica, dbname: str, dsn: str, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    with api_reading_from(replica, dsn, conn, max_lag_s=0.5) as api:
        first = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
        replica.wait_for(dbname)
        replica.pause_replay(dbname)
        second = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
        with caplog.at_level(logging.WARNING, logger="pgsched.api"):
            # Behind by more than half a second once the primary's commit is that old.
            wait_until(lambda: listed(api) == [second, first], 15, "the list from the primary")
        assert any("reads go to the primary" in r.message and "behind" in r.message for r in caplog.records)
        replica.resume_replay(dbname)
        replica.wait_for(dbname)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="pgsched.api"):
            wait_until(
                lambda: listed(api) and any("replica again" in r.message for r in caplog.records),
                15,
                "reads back on it",
            )


def test_a_stopped_replica_sends_reads_to_the_primary_never_an_error(
    replica: Replica, dbname: str, dsn: str, conn: psycopg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    with api_reading_from(replica, dsn, conn, max_lag_s=3600) as api:
        first = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
        replica.wait_for(dbname)
        assert listed(api) == [first]
        replica.stop()
        second = ok(api.post("/runs", json={"task": "t"}), 201)["id"]
        with caplog.at_level(logging.WARNING, logger="pgsched.api"):
            for path in ("/runs", "/runs/failures", "/queues", "/queues/-/throughput", "/jobs"):
                assert api.get(path, as_="read").status_code == 200, path  # never a 500
            assert listed(api) == [second, first]
            assert ok(api.get("/workers", as_="admin"))["items"] == []
        assert any("reads go to the primary" in r.message for r in caplog.records)
        replica.start()
        replica.wait_for(dbname)
        wait_until(lambda: listed(api) == [second, first], 15, "reads from the replica again")


def test_the_dashboard_lists_read_from_the_replica(
    replica: Replica, dbname: str, dsn: str, conn: psycopg.Connection
) -> None:
    keys = make_keys(conn)
    settings = ApiSettings(dsn=dsn, read_dsn=replica.dsn(dbname), read_max_lag_s=3600, **TEST_SETTINGS)
    with TestClient(create_app(settings)) as client:
        sign_in(client, keys["admin"])
        replica.wait_for(dbname)
        replica.pause_replay(dbname)
        conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('only-on-the-primary', 'q')")
        for path in ("/ui/runs", "/ui", "/ui/failures", "/ui/jobs"):
            page = client.get(path)
            assert page.status_code == 200, (path, page.text)
            assert "only-on-the-primary" not in page.text, path
        replica.resume_replay(dbname)
        wait_until(lambda: "only-on-the-primary" in client.get("/ui/runs").text, 10, "the replayed run on the page")


def test_a_blank_read_dsn_or_a_bound_of_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="read replica"):
        ApiSettings(dsn="dbname=x", read_dsn=" ")
    with pytest.raises(ConfigError, match="read_max_lag_s"):
        ApiSettings(dsn="dbname=x", read_max_lag_s=0)


@pytest.mark.parametrize("bound", ["0", "-1", "nan"])
def test_pgsched_api_refuses_a_read_lag_bound_that_is_not_positive(dsn: str, bound: str) -> None:
    result = run_cli(dsn, "api", "--read-dsn", dsn, "--read-max-lag-s", bound, "--port", "0")
    assert_one_error_line(result, "--read-max-lag-s", "must be > 0")

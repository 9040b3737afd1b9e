"""`pgsched doctor` as a deployment check against a real PostgreSQL: the table of OK / WARN /
FAIL with what to do, and exit 1 on any FAIL (tests/test_upgrade.py covers the schema and rows
checks, --fix and the JSON fields that came before)."""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest

from pgsched.checks import Check, Connections, Status, Thresholds, check_deployment, clock_check
from pgsched.doctor import diagnose
from tests.support.beat import a_beat_leading
from tests.support.cli import run_cli
from tests.support.proxy import forwarding
from tests.support.workers import Workers

DIRECT = Connections(pgbouncer=False, direct_dsn=None)


def checks_of(conn: psycopg.Connection, connections: Connections = DIRECT, **thresholds: float) -> dict[str, Check]:
    return {c.name: c for c in check_deployment(conn, diagnose(conn), connections, Thresholds(**thresholds))}


def doctor_json(dsn: str, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, dict[str, Any]]]:
    result = run_cli(dsn, "doctor", "--json", *args, env=env)
    report = json.loads(result.stdout)
    return result.returncode, {check["name"]: check for check in report["checks"]}


def add_worker(conn: psycopg.Connection, queues: list[str], silent_s: float = 0) -> None:
    conn.execute(
        "INSERT INTO pgsched.workers (host, pid, queues, concurrency, last_seen_at)"
        " VALUES ('worker-host', 4321, %s, 10, now() - make_interval(secs => %s))",
        (queues, silent_s),
    )


def test_a_fresh_database_passes_and_the_table_says_what_was_checked(dsn: str):
    result = run_cli(dsn, "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("schema", "rows", "autovacuum", "long transactions", "pooler", "beat leader", "clock"):
        assert re.search(rf"│ {name} +│ (OK|WARN) ", result.stdout), name
    assert "healthy" in result.stdout
    # The suite's own server runs with synchronous_commit=off for speed: a warning, not a failure.
    code, checks = doctor_json(dsn)
    assert code == 0 and checks["synchronous_commit"]["status"] == "WARN"
    assert "turn it on" in checks["synchronous_commit"]["todo"]
    assert checks["schema"]["status"] == checks["autovacuum"]["status"] == checks["pooler"]["status"] == "OK"


def test_autovacuum_turned_off_for_the_runs_table_fails(dsn: str, conn: psycopg.Connection):
    conn.execute("ALTER TABLE pgsched.runs SET (autovacuum_enabled = off)")
    code, checks = doctor_json(dsn)
    assert code == 1
    assert checks["autovacuum"]["status"] == "FAIL" and "pgsched.runs" in checks["autovacuum"]["found"]
    assert "RESET (autovacuum_enabled)" in checks["autovacuum"]["todo"]


def test_a_transaction_held_open_warns_then_fails_naming_its_holder(dsn: str, conn: psycopg.Connection):
    assert checks_of(conn)["long transactions"].status is Status.OK
    with psycopg.connect(dsn, application_name="forgotten-report") as holder:
        holder.execute("SELECT txid_current()")  # idle in transaction from here on
        # Thresholds of 0 s instead of waiting for the real ones: any open transaction is past them.
        warned = checks_of(conn, transaction_warn_s=0, transaction_fail_s=3600)["long transactions"]
        failed = checks_of(conn, transaction_warn_s=0, transaction_fail_s=0)["long transactions"]
        pid = holder.info.backend_pid
        holder.rollback()
    assert warned.status is Status.WARN and failed.status is Status.FAIL
    assert f"pid {pid}" in failed.found and "forgotten-report" in failed.found
    assert "pg_terminate_backend" in failed.todo


def test_pgbouncer_without_a_direct_dsn_fails(dsn: str):
    code, checks = doctor_json(dsn, env={"PGSCHED_PGBOUNCER": "1"})
    assert code == 1 and checks["pooler"]["status"] == "FAIL"
    assert "PGSCHED_DIRECT_DSN" in checks["pooler"]["todo"]


def test_a_direct_dsn_must_reach_the_same_database_directly(dsn: str, empty_dsn: str):
    code, checks = doctor_json(dsn, "--direct-dsn", dsn)
    assert code == 0 and checks["pooler"]["status"] == "OK", checks["pooler"]
    code, checks = doctor_json(dsn, "--direct-dsn", empty_dsn)
    assert code == 1 and "another database" in checks["pooler"]["found"]
    code, checks = doctor_json(dsn, "--direct-dsn", re.sub(r"port=\d+", "port=1", dsn))
    assert code == 1 and "does not connect" in checks["pooler"]["found"]


def test_something_between_the_dsn_and_postgresql_is_noticed(dsn: str, conn: psycopg.Connection):
    info = conn.info
    with forwarding(info.host, info.port) as port:
        pooled = re.sub(r"port=\d+", f"port={port}", dsn)
        with psycopg.connect(pooled, autocommit=True) as through:
            between = checks_of(through)["pooler"]
        as_direct = checks_of(conn, Connections(pgbouncer=True, direct_dsn=pooled))["pooler"]
    assert between.status is Status.WARN and f"connects to port {port}" in between.found
    assert "PGSCHED_PGBOUNCER=1" in between.todo
    assert as_direct.status is Status.FAIL and "does not reach PostgreSQL directly" in as_direct.found


def test_the_beat_leader_is_reported_while_one_holds_the_lock(dsn: str, conn: psycopg.Connection):
    absent = checks_of(conn)["beat leader"]
    assert absent.status is Status.WARN and "pgsched beat" in absent.todo
    with a_beat_leading(dsn):
        leading = checks_of(conn)["beat leader"]
    assert leading.status is Status.OK and "beat-host pid 4242" in leading.found


def test_workers_per_queue_due_runs_nobody_serves_and_a_silent_worker(workers: Workers, conn: psycopg.Connection):
    workers.start("--queues", "mail")
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'reports'), ('t', 'reports')")
    # Silent past the 60 s that count as live, short of the 120 s after which a sweep deletes its row.
    add_worker(conn, ["archive"], silent_s=90)
    checks = checks_of(conn)
    assert checks["workers: mail"].status is Status.OK and checks["workers: mail"].found.startswith("1 live")
    reports = checks["workers: reports"]
    assert reports.status is Status.WARN and "2 run(s) due, no live worker" in reports.found
    assert "--queues reports" in reports.todo
    [silent] = [c for name, c in checks.items() if name.startswith("worker ")]
    assert silent.status is Status.WARN and "worker-host pid 4321 silent for 90 s" in silent.found


@pytest.mark.parametrize(("offset_s", "status"), [(0.0, Status.OK), (5.0, Status.WARN), (-120.0, Status.FAIL)])
def test_this_hosts_clock_is_measured_against_the_databases(conn: psycopg.Connection, offset_s: float, status: Status):
    import time

    check = clock_check(conn, Thresholds(), clock=lambda: time.time() + offset_s)
    assert check.status is status, check
    if offset_s:
        assert ("ahead of" if offset_s > 0 else "behind") in check.found


def test_max_connections_too_low_for_the_live_workers_warns(conn: psycopg.Connection):
    assert checks_of(conn)["max_connections"].status is Status.OK
    for _ in range(40):  # 40 workers hold about 240 connections: more than the suite's server allows
        add_worker(conn, ["mail"])
    check = checks_of(conn)["max_connections"]
    assert check.status is Status.WARN and "40 live worker(s)" in check.found
    assert "raise max_connections above" in check.todo


def test_a_pending_migration_fails_and_the_checks_that_need_the_schema_wait(dsn: str, conn: psycopg.Connection):
    conn.execute("DELETE FROM pgsched.schema_migrations WHERE version = '0014'")
    code, checks = doctor_json(dsn)
    assert code == 1
    assert checks["schema"]["status"] == "FAIL" and "0014_desired_workers" in checks["schema"]["found"]
    assert checks["schema"]["todo"] == "run `pgsched migrate`"
    assert list(checks) == ["schema", "rows"]

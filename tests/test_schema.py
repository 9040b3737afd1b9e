"""The schema: migrations (CLI, concurrent runs), every named query against it, the views people
read at a psql prompt, and the wheel carrying the schema and the CLI inside ``pgsched``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgsched.migrate import MIGRATION_LOCK_KEY, available
from pgsched.queues import list_queues
from pgsched.sql import queries
from tests.support.db import insert_restored, scalar
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
PREPARABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES")  # what PREPARE accepts


def first_keyword(sql: str) -> str:
    return sql.split(None, 1)[0].upper()


# Utility statements (CREATE, COPY, LISTEN): PREPARE refuses them, so they are run instead.
NOT_PREPARABLE = {name for name, sql in queries.items() if first_keyword(sql) not in PREPARABLE}


def captured(command: list[str], timeout: float, **options: Any) -> subprocess.CompletedProcess[str]:
    """``command`` run to its end (``options``: cwd, env), its output captured as text."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, **options)


def pgsched_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "PGSCHED_DSN"}
    env["COLUMNS"] = "200"
    return captured([sys.executable, "-m", "pgsched.cli.main", *args], env=env, timeout=timeout)


def relation_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]


def recorded_migrations(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as c:
        return c.execute("SELECT version, name FROM pgsched.schema_migrations ORDER BY version").fetchall()


ALL_MIGRATIONS = [(m.version, m.name) for m in available()]


# ---- migrations


def test_the_shipped_migrations_start_with_0001_core():
    assert ALL_MIGRATIONS[0] == ("0001", "core")
    assert [version for version, _ in ALL_MIGRATIONS] == sorted({version for version, _ in ALL_MIGRATIONS})


def test_migrate_check_fails_on_an_empty_database_and_passes_after_migrate(empty_dsn):
    check = pgsched_cli("migrate", "--check", "--dsn", empty_dsn)
    assert check.returncode == 1, check.stderr
    assert "Traceback" not in check.stderr
    assert check.stderr.startswith("error: ") and "migration(s) pending: 0001_core" in check.stderr
    assert not relation_exists(empty_dsn, "pgsched.schema_migrations"), "--check must change nothing"
    assert not relation_exists(empty_dsn, "pgsched.runs")

    applied = pgsched_cli("migrate", "--dsn", empty_dsn)
    assert applied.returncode == 0, applied.stderr
    assert f"applied {len(ALL_MIGRATIONS)} migration(s)" in applied.stdout and "0001_core" in applied.stdout
    assert relation_exists(empty_dsn, "pgsched.runs")
    assert recorded_migrations(empty_dsn) == ALL_MIGRATIONS

    check = pgsched_cli("migrate", "--check", "--dsn", empty_dsn)
    assert (check.returncode, check.stdout.strip()) == (0, "schema is up to date"), check.stderr

    again = pgsched_cli("migrate", "--dsn", empty_dsn)
    assert (again.returncode, again.stdout.strip()) == (0, "schema is up to date"), again.stderr
    assert recorded_migrations(empty_dsn) == ALL_MIGRATIONS


def test_two_concurrent_migrates_both_succeed_and_apply_each_migration_once(empty_dsn):
    env = {key: value for key, value in os.environ.items() if key != "PGSCHED_DSN"}
    with psycopg.connect(empty_dsn, autocommit=True) as blocker:
        # Hold the migration lock so both processes are provably inside migrate, waiting on it, at once.
        blocker.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "pgsched.cli.main", "migrate", "--dsn", empty_dsn],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:

            def still_waiting() -> None:
                assert all(p.poll() is None for p in procs), "a migrate finished while the lock was held"

            waiting = (
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
            wait_until(
                lambda: scalar(blocker, waiting) == 2,
                30,
                "both migrates to reach the lock",
                poll=0.02,
                check=still_waiting,
            )
        finally:
            blocker.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                outputs = [p.communicate(timeout=60) for p in procs]
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.communicate()
    for proc, (_out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    assert sorted(out.strip().splitlines()[0] for out, _ in outputs) == [
        f"applied {len(ALL_MIGRATIONS)} migration(s)",
        "schema is up to date",
    ]
    assert recorded_migrations(empty_dsn) == ALL_MIGRATIONS


def test_the_test_databases_are_fully_migrated(conn):
    assert (
        conn.execute("SELECT version, name FROM pgsched.schema_migrations ORDER BY version").fetchall()
        == ALL_MIGRATIONS
    )


# ---- named queries


def as_prepared_statement(sql: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s placeholders as $1..$n (in order of first appearance), %% as %."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql).replace("%%", "%"), names


def test_the_placeholder_conversion_numbers_by_first_appearance():
    sql, names = as_prepared_statement("SELECT %(b)s, %(a)s, %(b)s, format('%%s', 1)")
    assert (sql, names) == ("SELECT $1, $2, $1, format('%s', 1)", ["b", "a"])


def test_every_named_query_says_what_it_is_for_on_the_line_after_its_name():
    text = (Path(__file__).parent.parent / "schema" / "queries.sql").read_text()
    lines = text.splitlines()
    undescribed = [
        line.removeprefix("-- name: ")
        for line, following in zip(lines, [*lines[1:], ""])
        if line.startswith("-- name: ") and not following.startswith("-- ")
    ]
    assert undescribed == []


def test_the_queries_that_cannot_be_prepared_are_the_utility_statements():
    assert {"migration_bootstrap", "run_copy", "worker_listen"} <= NOT_PREPARABLE
    assert {name: first_keyword(queries[name]) for name in NOT_PREPARABLE} == {
        name: first_keyword(queries[name])
        for name in NOT_PREPARABLE
        if first_keyword(queries[name]) in ("CREATE", "COPY", "LISTEN", "UNLISTEN")
    }


def test_every_named_query_can_be_prepared_against_the_schema(conn):
    failures = {}
    prepared = 0
    for name, sql in sorted(queries.items()):
        if name in NOT_PREPARABLE:
            continue
        statement, params = as_prepared_statement(sql)
        try:
            conn.execute(f"PREPARE check_{name} AS {statement}".encode())
        except psycopg.Error as exc:
            failures[name] = f"{type(exc).__name__}: {exc}".strip()
            continue
        types = conn.execute(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s", (f"check_{name}",)
        ).fetchone()[0]
        if len(types) != len(params):
            failures[name] = f"{len(params)} placeholders, {len(types)} parameters"
        conn.execute(f"DEALLOCATE check_{name}")
        prepared += 1
    assert failures == {}
    assert prepared == len(queries) - len(NOT_PREPARABLE) >= 20


def test_the_utility_statements_run(conn):
    for name in NOT_PREPARABLE:
        if first_keyword(queries[name]) in ("LISTEN", "UNLISTEN"):
            conn.execute(queries[name])
    conn.execute(queries["migration_bootstrap"])  # idempotent on a migrated database
    with conn.cursor().copy(queries["run_copy"]) as copy:
        copy.write_row((10**9, "copied", "{}", "default", 0, "2030-01-01T00:00:00Z", 3, None, None, None, None))
    assert conn.execute("SELECT task FROM pgsched.runs WHERE id = %s", (10**9,)).fetchone()[0] == "copied"


# ---- views


@pytest.fixture
def fixture_runs(conn: psycopg.Connection) -> dict[str, int]:
    """A small world: one live worker, runs in every state in queue 'a', two finished ones in 'b'."""
    worker = conn.execute(
        "INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('host-a', 111, '{a}', 4) RETURNING id"
    ).fetchone()[0]

    def run(name: str, queue: str, status: str, **columns: str) -> tuple[str, int]:
        names = ["task", "queue", "status", *columns]
        values = ["%s", "%s", "%s::pgsched.run_status", *columns.values()]
        sql = f"INSERT INTO pgsched.runs ({', '.join(names)}) VALUES ({', '.join(values)}) RETURNING id"
        return name, insert_restored(conn, sql.encode(), (name, queue, status)).fetchone()[0]

    def errors(*entries: tuple[str, str]) -> str:
        items = ", ".join(
            f"jsonb_build_object('attempt', {i}, 'type', '{t}', 'message', '{m}', 'traceback', 'tb {i}')"
            for i, (t, m) in enumerate(entries, start=1)
        )
        return f"jsonb_build_array({items})"

    ids = dict(
        [
            run("due-old", "a", "queued", run_at="now() - interval '5 minutes'"),
            run("due-new", "a", "queued", run_at="now() - interval '1 minute'"),
            run("future", "a", "queued", run_at="now() + interval '1 hour'"),
            run(
                "running-live",
                "a",
                "running",
                attempt="1",
                worker_id=str(worker),
                started_at="now() - interval '10 seconds'",
                lease_expires_at="now() + interval '20 seconds'",
            ),
            run(
                "running-orphan",
                "a",
                "running",
                attempt="2",
                worker_id="999999",
                started_at="now() - interval '50 seconds'",
                lease_expires_at="now() - interval '20 seconds'",
            ),
            run(
                "failed-a",
                "a",
                "failed",
                attempt="2",
                max_attempts="2",
                finished_at="now() - interval '2 minutes'",
                errors=errors(("ValueError", "first try"), ("KeyError", "second try")),
            ),
            run("done-recent", "a", "succeeded", attempt="1", finished_at="now() - interval '10 minutes'"),
            run("done-old", "a", "succeeded", attempt="1", finished_at="now() - interval '2 hours'"),
            run(
                "failed-b",
                "b",
                "failed",
                attempt="1",
                max_attempts="1",
                finished_at="now() - interval '30 minutes'",
                errors=errors(("Timeout", "timed out after 1s")),
            ),
            run("cancelled-b", "b", "cancelled", finished_at="now()"),
        ]
    )
    ids["worker"] = worker
    return ids


def test_queue_stats_counts_each_queue(conn, fixture_runs):
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {row.pop("queue"): row for row in cur.execute("SELECT * FROM pgsched.queue_stats").fetchall()}
    assert set(rows) == {"a", "b"}
    a_age = rows["a"].pop("oldest_queued_age")
    assert rows["a"] == {
        "queued": 3,
        "due": 2,
        "running": 2,
        "failed": 1,
        "succeeded_last_hour": 1,
        "succeeded_last_minute": 0,
        "failed_last_minute": 0,
    }
    assert timedelta(minutes=5) <= a_age < timedelta(minutes=6)
    assert rows["b"] == {
        "queued": 0,
        "due": 0,
        "running": 0,
        "failed": 1,
        "succeeded_last_hour": 0,
        "oldest_queued_age": None,
        "succeeded_last_minute": 0,
        "failed_last_minute": 0,
    }


def test_queue_stats_from_indexes_match_a_full_scan_and_skip_idle_queues(conn: psycopg.Connection) -> None:
    # queue_stats_for reads only what indexes isolate (0007); a plain aggregate over every run
    # must agree on each active queue, and a queue with nothing but old successes is left out.
    insert_restored(
        conn,
        """
        INSERT INTO pgsched.runs (task, queue, status, attempt, run_at, started_at, finished_at, lease_expires_at,
                                  tenant)
        SELECT 't', 'q' || (g % 4),
               (ARRAY['queued', 'running', 'succeeded', 'failed'])[1 + g % 7 % 4]::pgsched.run_status,
               CASE WHEN g % 7 % 4 = 0 THEN 0 ELSE 1 END,
               now() + ((g % 11 - 5) || ' minutes')::interval,
               CASE WHEN g % 7 % 4 > 0 THEN now() - interval '3 hours' END,
               CASE WHEN g % 7 % 4 > 1 THEN now() - ((g % 130) || ' minutes')::interval END,
               CASE WHEN g % 7 % 4 = 1 THEN now() + interval '30 seconds' END,
               CASE WHEN g % 3 = 0 THEN 'acme' END
        FROM generate_series(1, 2000) AS g""",
    )
    insert_restored(
        conn,
        "INSERT INTO pgsched.runs (task, queue, status, attempt, finished_at)"
        " VALUES ('t', 'idle', 'succeeded', 1, now() - interval '2 hours')",
    )
    full_scan = """
        SELECT queue, count(*) FILTER (WHERE status = 'queued'),
               count(*) FILTER (WHERE status = 'queued' AND run_at <= now()),
               count(*) FILTER (WHERE status = 'running'), count(*) FILTER (WHERE status = 'failed'),
               count(*) FILTER (WHERE status = 'succeeded' AND finished_at > now() - interval '1 hour'),
               now() - min(run_at) FILTER (WHERE status = 'queued' AND run_at <= now()),
               count(*) FILTER (WHERE status = 'succeeded' AND finished_at > now() - interval '1 minute'),
               count(*) FILTER (WHERE status = 'failed' AND finished_at > now() - interval '1 minute')
        FROM pgsched.runs WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s
        GROUP BY queue HAVING queue <> 'idle' ORDER BY queue"""
    with conn.transaction():  # one snapshot and one now() for both sides
        for tenant in (None, "acme"):
            expected = conn.execute(full_scan, {"tenant": tenant}).fetchall()
            got = conn.execute("SELECT * FROM pgsched.queue_stats_for(%s) ORDER BY queue", (tenant,)).fetchall()
            assert got == expected and len(got) == 4


def test_queue_stats_query_reports_the_oldest_due_age_in_seconds(conn, fixture_runs):
    stats = list_queues(conn)
    assert [row["queue"] for row in stats] == ["a", "b"]
    assert 300 <= stats[0]["oldest_queued_age_s"] < 360
    assert stats[1]["oldest_queued_age_s"] is None


def test_running_view_shows_running_runs_with_their_workers_host_and_pid(conn, fixture_runs):
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM pgsched.running ORDER BY id").fetchall()
    assert [row["task"] for row in rows] == ["running-live", "running-orphan"]
    live, orphan = rows
    assert (live["worker_id"], live["worker_host"], live["worker_pid"], live["attempt"]) == (
        fixture_runs["worker"],
        "host-a",
        111,
        1,
    )
    assert timedelta(seconds=10) <= live["running_for"] < timedelta(seconds=70)
    # A run keeps the id of a worker that is gone: it shows, without host and pid.
    assert (orphan["worker_id"], orphan["worker_host"], orphan["worker_pid"]) == (999999, None, None)


def test_recent_failures_shows_the_last_error_of_each_failed_run_newest_first(conn, fixture_runs):
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT * FROM pgsched.recent_failures").fetchall()
    assert [(r["task"], r["queue"], r["error_type"], r["error_message"], r["traceback"]) for r in rows] == [
        ("failed-a", "a", "KeyError", "second try", "tb 2"),
        ("failed-b", "b", "Timeout", "timed out after 1s", "tb 1"),
    ]
    assert rows[0]["id"] == fixture_runs["failed-a"] and rows[0]["attempt"] == rows[0]["max_attempts"] == 2


def test_the_views_are_empty_on_an_empty_database(conn):
    for view in ("queue_stats", "running", "recent_failures"):
        assert conn.execute(f"SELECT count(*) FROM pgsched.{view}").fetchone()[0] == 0, view


# ---- the wheel


def copy_sources(destination: Path) -> Path:
    """The project as a fresh checkout would have it: no build leftovers in the shared work tree."""
    ignore = shutil.ignore_patterns(
        ".git", "__pycache__", "*.egg-info", "build", "dist", ".pytest_cache", ".venv", "tests", "benchmarks"
    )
    shutil.copytree(ROOT, destination, ignore=ignore)
    return destination


@pytest.mark.slow
def test_the_wheel_installs_pgsched_with_its_cli_and_schema_and_migrates(tmp_path, empty_dsn):
    source = copy_sources(tmp_path / "src")
    dist = tmp_path / "dist"
    build = captured([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(source)], timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [wheel] = dist.glob("pgsched-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
        names = set(archive.namelist())
    assert top_level == {"pgsched", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert {
        "pgsched/cli/main.py",
        "pgsched/schema/0001_core.sql",
        "pgsched/schema/queries.sql",
        "pgsched/py.typed",
    } <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = captured([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)], timeout=900)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    env = {key: value for key, value in os.environ.items() if key not in ("PGSCHED_DSN", "PYTHONPATH")}
    migrated = captured(
        [str(venv / "bin" / "pgsched"), "migrate", "--dsn", empty_dsn], cwd=tmp_path, env=env, timeout=120
    )
    assert migrated.returncode == 0, migrated.stderr
    assert f"applied {len(ALL_MIGRATIONS)} migration(s)" in migrated.stdout
    assert recorded_migrations(empty_dsn) == ALL_MIGRATIONS

    probe_script = (
        "import importlib.util, pgsched.cli, pgsched.cli.main, pgsched.schema, pgsched.sql, pathlib\n"
        "print(pathlib.Path(pgsched.__file__).parent.parent)\n"
        "print(importlib.util.find_spec('cli'), importlib.util.find_spec('schema'))\n"
        "print(len(pgsched.sql.queries))\n"
    )
    probe = captured([str(venv / "bin" / "python"), "-c", probe_script], cwd=tmp_path, env=env, timeout=60)
    assert probe.returncode == 0, probe.stderr
    site_packages, specs, count = probe.stdout.splitlines()
    assert Path(site_packages).is_relative_to(venv), "pgsched was imported from outside the new venv"
    assert specs == "None None", "a top-level cli or schema module was installed"
    assert int(count) == len(queries)
    assert not (Path(site_packages) / "cli").exists() and not (Path(site_packages) / "schema").exists()


def test_queue_stats_without_the_last_hour_read_only_the_last_minute(conn: psycopg.Connection) -> None:
    # What the dashboard polls every 2 s (0017): the last minute's finished runs, not the hour's.
    insert_restored(
        conn,
        "INSERT INTO pgsched.runs (task, queue, status, attempt, started_at, finished_at) VALUES"
        " ('t', 'half-hour-ago', 'succeeded', 1, now() - interval '31 minutes', now() - interval '30 minutes'),"
        " ('t', 'just-now', 'succeeded', 1, now() - interval '11 seconds', now() - interval '10 seconds'),"
        " ('t', 'just-now', 'failed', 1, now() - interval '6 seconds', now() - interval '5 seconds')",
    )
    conn.execute("INSERT INTO pgsched.runs (task, queue) VALUES ('t', 'waiting')")
    columns = "queue, queued, succeeded_last_hour, succeeded_last_minute, failed_last_minute"
    live = conn.execute(f"SELECT {columns} FROM pgsched.queue_stats_v2(NULL, false) ORDER BY 1".encode()).fetchall()
    assert live == [("just-now", 0, None, 1, 1), ("waiting", 1, None, 0, 0)]
    hour = conn.execute(f"SELECT {columns} FROM pgsched.queue_stats_for(NULL) ORDER BY 1".encode()).fetchall()
    assert hour == [("half-hour-ago", 0, 1, 0, 0), ("just-now", 0, 1, 1, 1), ("waiting", 1, 0, 0, 0)]

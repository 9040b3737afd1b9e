"""`pgsched doctor`'s deployment checks: each question a deploy pipeline (or a person) should ask
of an installation, answered OK, WARN or FAIL with what to do.

FAIL is what breaks pgsched's guarantees or will: a pending migration, rows breaking the rules,
autovacuum off, a transaction holding vacuum's horizon for long, LISTEN and the leader lock with
no session to live on, a clock far from the database's, connections nearly exhausted. Whether a
beat leads and workers are alive is WARN: a pipeline runs doctor right after `pgsched migrate`,
before it starts the processes (the alerts in deploy/prometheus watch them at run time).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Callable

import psycopg
from psycopg.rows import dict_row

from pgsched import health
from pgsched.beat import leader_status
from pgsched.config import DIRECT_DSN_ENV, PGBOUNCER_ENV
from pgsched.doctor import Diagnosis
from pgsched.queues import list_queues
from pgsched.sql import queries

# Connections one worker holds: its pool (up to 4, worker.py), the fetcher's and the listener's.
WORKER_CONNECTIONS = 6


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    """One line of doctor's table: what was checked, the verdict, what was found, what to do."""

    name: str
    status: Status
    found: str
    todo: str = ""


@dataclass(frozen=True, slots=True)
class Thresholds:
    transaction_warn_s: float = 60.0
    transaction_fail_s: float = 600.0  # deploy/prometheus/alerts.yml's PgschedLongTransaction
    clock_skew_warn_s: float = 1.0
    clock_skew_fail_s: float = 30.0
    connections_warn: float = 0.8  # of the connections non-superusers may open
    connections_fail: float = 0.95


@dataclass(frozen=True, slots=True)
class Connections:
    """How pgsched's processes are configured to connect (config.py): through PgBouncer or not,
    and the direct DSN for LISTEN and the leader lock."""

    pgbouncer: bool
    direct_dsn: str | None


def check_deployment(
    conn: psycopg.Connection[Any],
    diagnosis: Diagnosis,
    connections: Connections,
    thresholds: Thresholds = Thresholds(),
) -> list[Check]:
    """Every check, in the order a person reads them. ``conn`` is an autocommit connection."""
    checks = [schema_check(diagnosis), rows_check(diagnosis)]
    if diagnosis.pending_migrations:  # the rest reads tables and functions that may not exist yet
        return checks
    checks += [
        autovacuum_check(conn),
        long_transaction_check(conn, thresholds),
        pooler_check(conn, connections),
        beat_leader_check(conn),
        *worker_checks(conn),
        clock_check(conn, thresholds),
        *settings_checks(conn, thresholds),
    ]
    return checks


def schema_check(d: Diagnosis) -> Check:
    if d.pending_migrations:
        return Check("schema", Status.FAIL, "pending: " + ", ".join(d.pending_migrations), "run `pgsched migrate`")
    if d.waiting_post_deploy:
        return Check(
            "schema",
            Status.WARN,
            "waiting for --post-deploy: " + ", ".join(d.waiting_post_deploy),
            "once every pgsched process runs this release: `pgsched migrate --post-deploy`",
        )
    return Check("schema", Status.OK, "up to date")


def rows_check(d: Diagnosis) -> Check:
    if d.breaking:
        found = "; ".join(f"{row['rows']} {row['table_name']} row(s), first id {row['first_id']}" for row in d.breaking)
        return Check("rows", Status.FAIL, f"breaking the rules: {found}", "`pgsched doctor --fix` repairs them")
    if d.unvalidated:
        return Check(
            "rows",
            Status.WARN,
            f"{len(d.unvalidated)} constraint(s) not yet validated (they hold for every write)",
            "`pgsched doctor --fix` validates them",
        )
    return Check("rows", Status.OK, "every row keeps the rules")


def autovacuum_check(conn: psycopg.Connection[Any]) -> Check:
    row = _one(conn, "doctor_autovacuum")
    if not row["autovacuum"] or not row["track_counts"]:
        off = "autovacuum" if not row["autovacuum"] else "track_counts (autovacuum needs it)"
        return Check(
            "autovacuum", Status.FAIL, f"{off} is off", "turn it on: dead runs slow every claim until vacuumed"
        )
    if row["disabled_on"]:
        tables = ", ".join(f"pgsched.{name}" for name in row["disabled_on"])
        return Check(
            "autovacuum",
            Status.FAIL,
            f"off for {tables}",
            "ALTER TABLE … RESET (autovacuum_enabled): queue tables turn over fast",
        )
    return Check("autovacuum", Status.OK, "on, for every pgsched table")


def long_transaction_check(conn: psycopg.Connection[Any], thresholds: Thresholds) -> Check:
    oldest = health.oldest_transaction(conn)
    found = f"oldest open for {oldest.age_s:.0f} s, {oldest.xmin_age} transactions behind: {oldest.holder}"
    todo = "end it (pg_terminate_backend, ROLLBACK PREPARED): it holds vacuum's horizon"
    if oldest.holder is None:
        return Check("long transactions", Status.OK, "none open")
    if oldest.age_s >= thresholds.transaction_fail_s:
        return Check("long transactions", Status.FAIL, found, todo)
    if oldest.age_s >= thresholds.transaction_warn_s:
        return Check("long transactions", Status.WARN, found, todo)
    return Check("long transactions", Status.OK, f"oldest open for {oldest.age_s:.0f} s")


def pooler_check(conn: psycopg.Connection[Any], connections: Connections) -> Check:
    """PgBouncer in the path, and a session for LISTEN and the leader lock."""
    server = _one(conn, "doctor_server")
    if connections.direct_dsn:
        return _direct_dsn_check(server, connections.direct_dsn)
    if connections.pgbouncer:
        return Check(
            "pooler",
            Status.FAIL,
            f"{PGBOUNCER_ENV} says the DSN is pooled and no direct DSN is set",
            f"set {DIRECT_DSN_ENV}: without it no beat can lead and workers poll instead of LISTEN",
        )
    if _proxied(conn, server):
        return Check(
            "pooler",
            Status.WARN,
            f"the server listens on port {server['port']}, the DSN connects to {_where(conn)}: something sits between",
            f"if it is PgBouncer in transaction mode, set {PGBOUNCER_ENV}=1 and {DIRECT_DSN_ENV}",
        )
    return Check("pooler", Status.OK, "the DSN reaches PostgreSQL directly: LISTEN and the leader lock use it")


def _direct_dsn_check(server: dict[str, Any], direct_dsn: str) -> Check:
    try:
        with psycopg.connect(direct_dsn, autocommit=True, prepare_threshold=None, connect_timeout=10) as direct:
            reached = _one(direct, "doctor_server")
            proxied = _proxied(direct, reached)
    except psycopg.Error as error:
        return Check(
            "pooler", Status.FAIL, f"the direct DSN does not connect: {error}".strip(), f"fix {DIRECT_DSN_ENV}"
        )
    if (reached["database"], reached["started"]) != (server["database"], server["started"]):
        return Check(
            "pooler",
            Status.FAIL,
            f"the direct DSN reaches database {reached['database']!r} of another server or another database",
            f"point {DIRECT_DSN_ENV} at the same database as the DSN",
        )
    if proxied:
        return Check(
            "pooler",
            Status.FAIL,
            f"the direct DSN does not reach PostgreSQL directly (it listens on port {reached['port']})",
            f"point {DIRECT_DSN_ENV} at PostgreSQL itself, not the pooler",
        )
    return Check(
        "pooler", Status.OK, "the direct DSN reaches the same database directly, for LISTEN and the leader lock"
    )


def _proxied(conn: psycopg.Connection[Any], server: dict[str, Any]) -> bool:
    """Whether the server listens elsewhere than where the connection went: a TCP port that
    differs, or TCP behind a Unix socket. A heuristic: a container's port mapping looks the same."""
    if server["port"] is None:  # the server sees a Unix-socket client: nothing between
        return False
    return conn.info.host.startswith("/") or conn.info.port != server["port"]


def _where(conn: psycopg.Connection[Any]) -> str:
    return conn.info.host if conn.info.host.startswith("/") else f"port {conn.info.port}"


def beat_leader_check(conn: psycopg.Connection[Any]) -> Check:
    leader = leader_status(conn)
    if leader is None:
        return Check(
            "beat leader",
            Status.WARN,
            "no beat holds the leader lock: scheduled jobs do not fire",
            "start `pgsched beat` (or a worker with --beat)",
        )
    return Check("beat leader", Status.OK, f"{leader['host']} pid {leader['pid']}, leading since {leader['since']}")


def worker_checks(conn: psycopg.Connection[Any]) -> list[Check]:
    """One line per queue that has due runs or a worker, and one per worker that stopped
    heartbeating. Both ends of a heartbeat's age are the database's clock (see clock_check)."""
    live = health.live_workers_by_queue(conn)
    due = {row["queue"]: row["due"] for row in list_queues(conn) if row["due"]}
    checks = []
    for queue in sorted({*live, *due}):
        name = f"workers: {queue}"
        if queue in live:
            checks.append(Check(name, Status.OK, f"{live[queue]['workers']} live, {due.get(queue, 0)} run(s) due"))
        else:
            checks.append(
                Check(
                    name,
                    Status.WARN,
                    f"{due[queue]} run(s) due, no live worker serves it",
                    f"start `pgsched worker --queues {queue}`",
                )
            )
    for row in _worker_rows(conn):
        if row["silent_s"] > health.LIVE_WORKER_S:
            checks.append(
                Check(
                    f"worker {row['id']}",
                    Status.WARN,
                    f"{row['host']} pid {row['pid']} silent for {row['silent_s']:.0f} s",
                    "gone without deregistering? its runs return when their leases expire",
                )
            )
    if not checks:
        checks.append(Check("workers", Status.OK, "no worker and no run due"))
    return checks


def clock_check(conn: psycopg.Connection[Any], thresholds: Thresholds, clock: Callable[[], float] = time.time) -> Check:
    """This host's clock against the database's. A worker's heartbeat is stamped with the
    database's now(), so no row holds a worker host's clock: run doctor on each host to measure
    its skew. It matters where a host's clock decides: a job's next_run_at is computed by the
    process that saves it, and error timestamps are written by the worker."""
    before = clock()
    database_now: datetime = _one(conn, "doctor_clock")["now"]
    after = clock()
    skew = database_now.timestamp() - (before + after) / 2
    # The round trip bounds the error: the database read its clock somewhere in between.
    margin = (after - before) / 2
    found = f"this host is {abs(skew):.3f} s {'behind' if skew > 0 else 'ahead of'} the database (± {margin:.3f} s)"
    todo = "run NTP (chrony, systemd-timesyncd) on this host and the database's"
    if abs(skew) - margin > thresholds.clock_skew_fail_s:
        return Check("clock", Status.FAIL, found, todo)
    if abs(skew) - margin > thresholds.clock_skew_warn_s:
        return Check("clock", Status.WARN, found, todo)
    return Check("clock", Status.OK, found)


def settings_checks(conn: psycopg.Connection[Any], thresholds: Thresholds) -> list[Check]:
    row = _one(conn, "doctor_settings")
    return [_synchronous_commit_check(row), _connections_check(conn, row, thresholds)]


def _synchronous_commit_check(row: dict[str, Any]) -> Check:
    if row["synchronous_commit"] == "off":
        return Check(
            "synchronous_commit",
            Status.WARN,
            f"off for new sessions ({row['synchronous_commit_source']}): a crash loses the last commits, "
            "enqueues and completions included (a completed run then runs again)",
            "turn it on; set it off only per transaction where losing that write is fine",
        )
    return Check("synchronous_commit", Status.OK, row["synchronous_commit"])


def _connections_check(conn: psycopg.Connection[Any], row: dict[str, Any], thresholds: Thresholds) -> Check:
    usable = row["max_connections"] - row["reserved_connections"]
    in_use = row["connections_in_use"]
    workers = sum(1 for worker in _worker_rows(conn) if worker["silent_s"] <= health.LIVE_WORKER_S)
    held = workers * WORKER_CONNECTIONS
    found = f"{in_use} of {usable} in use; {workers} live worker(s) hold about {held}"
    if in_use >= thresholds.connections_fail * usable:
        return Check("max_connections", Status.FAIL, found, "raise max_connections or put PgBouncer in front")
    # A rolling deploy starts the new workers before it stops the old ones: room for as many again.
    if in_use >= thresholds.connections_warn * usable or in_use + held > usable:
        return Check(
            "max_connections",
            Status.WARN,
            found,
            f"raise max_connections above {in_use + held + row['reserved_connections']}, or put PgBouncer in front",
        )
    return Check("max_connections", Status.OK, found)


def _worker_rows(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["worker_heartbeat_ages"]).fetchall()


def _one(conn: psycopg.Connection[Any], name: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries[name]).fetchone()
    assert row is not None, name  # each of these queries answers one row
    return row

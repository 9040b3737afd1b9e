"""The harness of the multi-process worker tests: real ``pgsched worker`` processes running
``tests.process_app:app``, whose tasks record each execution (key, event, pid, at) into the
side table ``executions``; and the queries the tests read the outcome with."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import psycopg
from psycopg.types.json import Jsonb

from tests.support.db import scalar
from tests.support.processes import Process, Processes

APP = "tests.process_app:app"
CREATE_EXECUTIONS = (
    "CREATE TABLE executions (key text NOT NULL, event text NOT NULL, pid int NOT NULL,"
    " at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


class Workers(Processes):
    """Worker processes of one test on ``dsn`` (the tasks find their database in PGSCHED_DSN)."""

    def __init__(self, dsn: str, conn: psycopg.Connection[Any], tmp_path: Path) -> None:
        super().__init__(tmp_path, conn)
        self.dsn = dsn

    def start(  # type: ignore[override]
        self,
        *options: str,
        log_format: str = "text",
        register: bool = True,
        app: str = APP,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """A worker of ``app``; unless ``register=False``, once its row is in pgsched.workers."""
        worker = super().start(
            "worker",
            "--app",
            app,
            "--dsn",
            self.dsn,
            "--log-format",
            log_format,
            *options,
            kind="worker",
            env={"PGSCHED_DSN": self.dsn, **(env or {})},
        )
        if register:
            worker.worker_id = self.wait_until(
                lambda: self.worker_id_of(worker), 15, f"worker pid {worker.pid} to register"
            )
        return worker

    def run_until(self, task: str, args: dict[str, Any], status: str, timeout: float, what: str, **columns: Any) -> int:
        """A run inserted by plain SQL (``insert_run``), once its status is ``status``: its id."""
        conn = self.conn
        assert conn is not None
        run_id = insert_run(conn, task, args, **columns)
        self.wait_until(lambda: status_of(conn, run_id) == status, timeout, what)
        return run_id

    def worker_id_of(self, worker: Process) -> int | None:
        assert self.conn is not None
        return scalar(self.conn, "SELECT id FROM pgsched.workers WHERE pid = %s", (worker.pid,))


def insert_run(conn: psycopg.Connection[Any], task: str, args: dict[str, Any], **columns: Any) -> int:
    """A run inserted by plain SQL, as a service in another language would."""
    names = ", ".join(["task", "args", *columns])
    marks = ", ".join(["%s"] * (2 + len(columns)))
    return scalar(
        conn,
        f"INSERT INTO pgsched.runs ({names}) VALUES ({marks}) RETURNING id",
        (task, Jsonb(args), *columns.values()),
    )


def run_row(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any]:
    cursor = conn.execute(
        "SELECT status::text, attempt, worker_id, errors, started_at, finished_at, run_at"
        " FROM pgsched.runs_all WHERE id = %s",
        (run_id,),
    )
    names = [c.name for c in cursor.description or ()]
    row = cursor.fetchone()
    assert row is not None, f"run {run_id} does not exist"
    return dict(zip(names, row))


def status_of(conn: psycopg.Connection[Any], run_id: int) -> str:
    return scalar(conn, "SELECT status::text FROM pgsched.runs_all WHERE id = %s", (run_id,))


def events(conn: psycopg.Connection[Any], key: str) -> list[tuple[str, int]]:
    """(event, pid) of every execution recorded under ``key``, oldest first."""
    return conn.execute("SELECT event, pid FROM executions WHERE key = %s ORDER BY at", (key,)).fetchall()


def registered(conn: psycopg.Connection[Any], worker: Process) -> bool:
    return bool(scalar(conn, "SELECT count(*) FROM pgsched.workers WHERE id = %s", (worker.worker_id,)))

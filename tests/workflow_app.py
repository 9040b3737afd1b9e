"""The App the multi-process workflow test (tests/test_workflow_processes.py) runs in real
worker processes: one task that records each execution into the side table ``executions``
(see tests/process_app.py) and fails, every attempt, when told to."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading

import psycopg

from pgsched import App

app = App()
faulthandler.register(signal.SIGUSR1, all_threads=True)

_conn: psycopg.Connection | None = None
_lock = threading.Lock()


@app.task(max_attempts=2, retry_backoff=0.0)
def step(key: str, fail: bool = False) -> str:
    """Record the execution, then fail if told to (so a failing step uses up its attempts)."""
    global _conn
    with _lock:
        if _conn is None:
            _conn = psycopg.connect(os.environ["PGSCHED_DSN"], autocommit=True)
        _conn.execute("INSERT INTO executions (key, event, pid) VALUES (%s, 'run', %s)", (key, os.getpid()))
    if fail:
        raise RuntimeError(f"{key} fails, as the test asked")
    return key

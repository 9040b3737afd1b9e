"""Real ``pgsched`` processes for a test: each started through the CLI (worker, beat, api, ...)
with its output in a log file; waits that fail as soon as a process the test needs exits,
showing its log; on a timeout, a stack dump of every live process (SIGUSR1, which the test
apps register with faulthandler) and what their database sessions are doing; and at
teardown every process still running killed and reaped, so none outlives its test."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import psycopg

from tests.support.waiting import wait_until

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]  # the checkout: ``tests.process_app:app`` imports from here
LOG_TAIL = 6000  # characters of a log shown in a failure: the last few dozen lines
STOPPING = (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)


def free_port() -> int:
    """A local TCP port nobody listens on (for a server the test starts, or for nothing there)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log_tail(path: Path, size: int = LOG_TAIL) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def dump_stacks(processes: list[Process], timeout: float = 2.0) -> None:
    """SIGUSR1 to each live process, then wait (at most ``timeout``) until each has written its
    faulthandler dump to its log or exited: diagnostics for a failure, never a failure itself."""
    live = [p for p in processes if p.popen.poll() is None]
    sizes = {p.pid: p.log_path.stat().st_size if p.log_path.exists() else 0 for p in live}
    for process in live:
        process.popen.send_signal(signal.SIGCONT)  # a SIGSTOPped process dumps only once resumed
        process.popen.send_signal(signal.SIGUSR1)

    def dumped(process: Process) -> bool:
        if process.popen.poll() is not None:
            return True
        with process.log_path.open("rb") as log:
            log.seek(sizes[process.pid])
            return re.search(rb"[Tt]hread 0x", log.read()) is not None  # "Current thread 0x…" / "Thread 0x…"

    try:
        wait_until(lambda: all(dumped(p) for p in live), timeout, "stack dumps in the logs")
    except AssertionError:
        pass  # a process without the faulthandler hook dumps nothing: show its log as it is


@dataclass
class Process:
    """One started process and its log."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    kind: str
    worker_id: int | None = None  # a worker's row in pgsched.workers, once registered
    expect_exit: bool = False  # set when the test stops it: its exit then fails no wait
    started_at: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if sig in STOPPING:
            self.expect_exit = True
        self.popen.send_signal(sig)

    send = signal  # the beat tests' word for it

    def wait_exit(self, timeout: float) -> int:
        """The exit code; at the deadline, fail with a stack dump of the process in its log."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            dump_stacks([self])
            raise AssertionError(
                f"{self.kind} pid {self.pid} still running {timeout}s later; its log:\n{log_tail(self.log_path)}"
            ) from None

    def signal_pending(self, sig: int) -> bool:
        """Sent but not yet delivered (Linux: /proc). Python's C-level handler runs on delivery
        and wakes an idle event loop, so once this is false an asyncio handler runs next."""
        status = Path(f"/proc/{self.pid}/status").read_text()
        masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
        return any(mask & (1 << (sig - 1)) for mask in masks)


@dataclass
class Processes:
    """The processes of one test. ``conn`` (optional) is the test's own connection to the
    database they use, for the sessions shown on a timeout."""

    tmp_path: Path
    conn: psycopg.Connection[Any] | None = None
    started: list[Process] = field(default_factory=list)

    def start(self, *args: str, kind: str | None = None, env: Mapping[str, str] | None = None) -> Process:
        """``pgsched ARGS`` with exactly the pgsched settings in ``env`` (none inherited from the
        test's environment but PGSCHED_HOME, which conftest points into the test's tmp_path).
        ``kind`` (by default the command) names the process in its log file and in failures."""
        kind = kind or args[0]
        log_path = self.tmp_path / f"{kind}-{len(self.started)}.log"
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PGSCHED_") or k == "PGSCHED_HOME"}
        # COLUMNS: rich wraps its lines to the terminal width, which a log file does not have.
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **(env or {})}
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pgsched.cli.main", *args],
                cwd=ROOT,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = Process(popen, log_path, kind)
        self.started.append(process)
        return process

    def wait_until(
        self, condition: Callable[[], T], timeout: float, what: str, alive: list[Process] | None = None, **options: Any
    ) -> T:
        """``wait_until`` that also fails as soon as a process that should be alive exits: those
        in ``alive``, by default every started one the test has neither stopped nor reaped."""
        watched = alive if alive is not None else self.expected_alive()
        return wait_until(
            condition,
            timeout,
            what,
            check=lambda: self.check_alive(what, watched),
            diagnose=self.diagnostics,
            **options,
        )

    def expected_alive(self) -> list[Process]:
        return [p for p in self.started if p.popen.returncode is None and not p.expect_exit]

    def check_alive(self, what: str, watched: list[Process] | None = None) -> None:
        """Fail, showing its log, if a process of ``watched`` (by default: expected alive) has
        exited; waiting on for ``what`` would only hide why."""
        for process in watched if watched is not None else self.expected_alive():
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.kind} pid {process.pid} exited with {process.popen.returncode}"
                    f" while waiting for {what}; its log:\n{log_tail(process.log_path)}"
                )

    def diagnostics(self) -> str:
        """Every process's log, with a stack dump of each live one, and the database's sessions."""
        dump_stacks(self.started)
        logs = "\n".join(
            f"--- {p.kind} pid {p.pid} (exit code {p.popen.returncode}):\n{log_tail(p.log_path)}"
            for p in self.started[-8:]
        )  # the soak starts dozens: the latest tell the most
        return f"{logs}\n{self.database_diagnostics()}"

    def database_diagnostics(self) -> str:
        if self.conn is None:
            return ""
        try:
            sessions = self.conn.execute(
                "SELECT pid, state, wait_event_type, wait_event, now() - state_change, left(query, 120)"
                " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
        except psycopg.Error as error:  # diagnostics must not hide the failure they explain
            return f"--- sessions: unreadable ({error})"
        return "--- sessions:\n" + "\n".join(map(str, sessions))

    def cleanup(self) -> None:
        """Kill and reap whatever is still running (SIGKILL also ends a SIGSTOPped process)."""
        for process in self.started:
            if process.popen.poll() is None:
                process.popen.kill()
            process.popen.wait()

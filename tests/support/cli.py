"""The CLI as a user runs it: ``pgsched ARGS`` in a subprocess, its output captured, and the one
shape a refusal must have (exit 1, one ``error:`` line, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

import pytest
from hypothesis import event

from pgsched.cli.main import main as cli_main


def run_cli(
    dsn: str | None, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``pgsched ARGS`` with PGSCHED_DSN set to ``dsn`` (None: unset, the developer's own never
    leaks in), and ``env`` on top of this process's environment."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PGSCHED_DSN")}
    environment["COLUMNS"] = "200"  # rich wraps at the terminal width; keep each message on one line
    if dsn is not None:
        environment["PGSCHED_DSN"] = dsn
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pgsched.cli.main", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """A refusal: exit 1, no traceback, one ``error:`` line naming each fragment; returns the line."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def cli_in_process(argv: list[str], dsn: str, capsys: pytest.CaptureFixture[str]) -> int:
    """Run `pgsched ARGV --dsn DSN` in this process; its exit code. A refusal must be clean: one
    line naming the problem (exit 1, pgsched's own) or click's usage error (exit 2, a value of
    the wrong type), never a traceback."""
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["pgsched", *argv, "--dsn", dsn])
        # Anything but SystemExit (an exception escaping the CLI) is a traceback for the user.
        with pytest.raises(SystemExit) as exited:
            cli_main()
    code = int(exited.value.code or 0)
    stderr = capsys.readouterr().err
    event("accepted" if code == 0 else "refused")
    if code != 0:
        assert "Traceback" not in stderr
        if code == 1:
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), stderr
        else:
            assert code == 2 and "Error" in stderr, stderr
    return code

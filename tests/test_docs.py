"""The documentation site builds (about 1.5 s: not marked slow) with `mkdocs build --strict` (no broken link, no missing
page), and its generated CLI reference names every command of the Typer app: docs that drift
from the code fail here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cli_command_names() -> list[str]:
    """Every command's full name ("pgsched runs list"), walking the command tree Typer builds.
    Duck-typed: Typer builds on its own copy of click, so isinstance(…, click.Group) fails."""
    import typer

    from pgsched.cli.main import cli

    def walk(name: str, command: Any) -> Iterator[str]:
        yield name
        for sub_name, sub in getattr(command, "commands", {}).items():
            yield from walk(f"{name} {sub_name}", sub)

    return list(walk("pgsched", typer.main.get_command(cli)))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    started = time.monotonic()
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    print(f"docs built in {time.monotonic() - started:.1f} s")
    return out


def test_site_builds_strict_and_offline(site: Path) -> None:
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "fonts.googleapis.com" not in index  # theme.font: false: the site fetches no fonts
    for page in (
        "getting-started",
        "guides/tasks",
        "operations/pgbouncer",
        "guarantees",
        "architecture",
        "performance",
        "reference/cli",
        "reference/rest-api",
    ):
        assert (site / page / "index.html").exists(), page


def test_cli_reference_names_every_command(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    names = cli_command_names()
    assert len(names) > 20  # the walk found the subcommands, not just the root
    headings = set(re.findall(r"<h[23] id=\"([a-z-]+)\"", page))
    missing = [n for n in names if n.replace(" ", "-") not in headings]
    assert not missing, f"commands without a section in the CLI reference: {missing}"


def test_rest_reference_lists_every_route(site: Path) -> None:
    from pgsched.api.app import create_app
    from pgsched.api.settings import ApiSettings

    document = create_app(ApiSettings(dsn="postgresql://docs-test.invalid/x")).openapi_schema.to_schema()
    page = (site / "reference" / "rest-api" / "index.html").read_text(encoding="utf-8")
    for path, item in document["paths"].items():
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                assert f"{method.upper()} {path}" in page, f"{method.upper()} {path}"

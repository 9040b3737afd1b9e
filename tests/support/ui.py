"""The dashboard under test: signed-in clients of the app (Litestar's TestClient), what its
pages say, and a real Chromium (Debian's, driven by Playwright) that saves a screenshot of
each browser test under build/screenshots/."""

from __future__ import annotations

import html
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
from litestar.testing import TestClient
from psycopg.types.json import Jsonb

from pgsched.api import ApiSettings, create_app
from tests.support.api import TEST_SETTINGS
from tests.support.db import insert_restored

CHROMIUM = os.environ.get("PGSCHED_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"


TRACEBACK = 'Traceback (most recent call last):\n  File "tasks.py", line 3, in send\nValueError: no such address'


def finished_run(
    conn: psycopg.Connection[Any], task: str, args: dict[str, Any], *, status: str = "failed", tenant: str | None = None
) -> int:
    """A run as a worker leaves it after one attempt (a failed one carries a ValueError with its
    traceback). Inserted as a restore does: schema 0009 lets SQL insert only queued runs."""
    error = {
        "attempt": 1,
        "at": "2030-01-01T00:00:00+00:00",
        "type": "ValueError",
        "message": "no such address",
        "traceback": TRACEBACK,
    }
    row = insert_restored(
        conn,
        "INSERT INTO pgsched.runs (task, args, status, attempt, max_attempts, errors, started_at, finished_at, tenant)"
        " VALUES (%s, %s, %s, 1, 1, %s, now() - interval '1 second', now(), %s) RETURNING id",
        (task, Jsonb(args), status, Jsonb([error] if status == "failed" else []), tenant),
    ).fetchone()
    assert row is not None
    return int(row[0])


@contextmanager
def ui_client(dsn: str, key: str | None = None) -> Iterator[TestClient[Any]]:
    """A client of a fresh app on ``dsn``, signed in with ``key`` (None: not signed in)."""
    with TestClient(create_app(ApiSettings(dsn=dsn, **TEST_SETTINGS))) as client:
        if key is not None:
            sign_in(client, key)
        yield client


def sign_in(client: httpx.Client | TestClient[Any], key: str) -> None:
    response = client.post("/ui/login", data={"key": key}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui", response.text


def csrf_of(page: str) -> str:
    """The CSRF token a page's forms carry."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "the page has no form with a CSRF token"
    return match[1]


def alert_of(page: str) -> str:
    """What an error page (or the login form) says went wrong."""
    match = re.search(r'role="alert">([^<]*)<', page)
    assert match, f"the page says nothing went wrong:\n{page[:2000]}"
    return html.unescape(match[1])


def buttons_of(page: str) -> list[str]:
    return [html.unescape(text).strip() for text in re.findall(r"<button[^>]*>([^<]*)</button>", page)]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (the system's: Playwright's own download is never used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)

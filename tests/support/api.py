"""The REST API under test: a client with keys of every kind (``Api``), the settings the tests
use, the small response and table helpers, and ``pgsched api`` served over real HTTP."""

from __future__ import annotations

import re
import signal
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
from litestar.testing import TestClient

from pgsched.api import keys as api_keys
from tests.support.processes import Processes, log_tail

TEST_SETTINGS = {"key_cache_s": 0.0}  # a revoked key is refused at once


@dataclass
class Api:
    """A client of one app, with keys of every kind: `api.get(path, as_="read")`."""

    client: TestClient[Any]
    keys: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, as_: str | None = "admin", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if as_ is not None:
            headers["Authorization"] = f"Bearer {self.keys[as_]}"
        return self.client.request(method, path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("POST", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.call("DELETE", path, **kwargs)


ReadonlyApi = tuple[Api, psycopg.Connection]

KEY_KINDS = {  # name: (scope, tenant)
    "admin": ("admin", None),
    "write": ("write", None),
    "read": ("read", None),
    "acme": ("write", "acme"),
    "acme-read": ("read", "acme"),
    "beta": ("write", "beta"),
}


def make_keys(conn: psycopg.Connection) -> dict[str, str]:
    return {
        name: api_keys.create_key(conn, scope, tenant=tenant, name=name)[0]
        for name, (scope, tenant) in KEY_KINDS.items()
    }


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def count(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM pgsched.{table}".encode()).fetchone()[0]  # type: ignore[index]


@contextmanager
def serving_api(*args: str) -> Iterator[tuple[str, bytes]]:
    """`pgsched api --port 0 ARGS` in a subprocess: (its URL, what it printed while starting).
    Only ARGS configure it: no PGSCHED_* setting of the test's environment reaches it."""
    with tempfile.TemporaryDirectory(prefix="pgsched-api-") as logs:
        processes = Processes(Path(logs))
        api = processes.start("api", "--host", "127.0.0.1", "--port", "0", *args)
        try:
            # uvicorn's "running on" line names the port it got.
            match = processes.wait_until(
                lambda: re.search(r"running on (https?://127\.0\.0\.1:\d+)", api.log()),
                30,
                "pgsched api to say where it listens",
            )
            yield match[1], api.log().encode()
            api.signal(signal.SIGINT)  # as Ctrl-C: a clean stop
            code = api.popen.wait(timeout=15)
            assert code == 0, f"an interrupted `pgsched api` exits cleanly, not with {code}:\n{log_tail(api.log_path)}"
        finally:
            processes.cleanup()

"""The API's access log (pgsched.api.access) and the X-Request-ID of every answer: uvicorn's
access line, the same text, buffered and written in whole lines; refusals (401, 403, 429, 404)
carry the request's id as a 201 does."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import select
import signal
from pathlib import Path
from typing import Any, Iterator

import httpx
import psycopg
import pytest
from litestar.testing import TestClient
from uvicorn.logging import AccessFormatter

from pgsched.api import ApiSettings, create_app
from pgsched.api.access import FLUSH_S, AccessLines, access_line
from pgsched.api.settings import RateLimit
from pgsched.context import Origin, enter_origin, leave_origin
from pgsched.logs import CorrelationFilter
from tests.support.api import TEST_SETTINGS, Api, make_keys
from tests.support.processes import Processes
from tests.support.waiting import wait_until

# uvicorn's access format as `pgsched api` configured it before, with the correlation suffix.
UVICORN_ACCESS = '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s%(correlation)s'


def uvicorn_line(client: str, method: str, path: str, version: str, status: int) -> str:
    """The line uvicorn's own access logger wrote for these values, in this context."""
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', None, None)
    record.args = (client, method, path, version, status)
    CorrelationFilter().filter(record)
    return AccessFormatter(UVICORN_ACCESS, use_colors=False).format(record) + "\n"


def scope_of(path: bytes, query: bytes = b"", method: str = "POST") -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "raw_path": path,
        "path": path.decode("latin-1"),
        "query_string": query,
        "http_version": "1.1",
        "client": ("127.0.0.1", 51234),
    }


@pytest.mark.parametrize(
    "path, query, status",
    [
        (b"/runs", b"", 201),
        (b"/runs", b"limit=5&status=queued", 200),
        (b'/we"ird/caf\xe9', b"", 404),  # uvicorn's escaping of a quote; a Latin-1 byte
        (b"/x", b"", 599),  # no phrase
    ],
)
def test_an_access_line_is_uvicorns_text_with_the_requests_id(path: bytes, query: bytes, status: int) -> None:
    token = enter_origin(Origin(request_id="req-7"))
    try:
        scope = scope_of(path, query)
        full_path = path.decode("latin-1").replace('"', "%22") + (f"?{query.decode()}" if query else "")
        expected = uvicorn_line("127.0.0.1:51234", "POST", full_path, "1.1", status)
        assert access_line(scope, status) == expected  # type: ignore[arg-type]
    finally:
        leave_origin(token)
    assert expected.endswith(" [request=req-7]\n")


class Writes(io.StringIO):
    """A stream that keeps each flushed write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def flush(self) -> None:
        value = self.getvalue()
        if value:
            self.writes.append(value)
            self.seek(0)
            self.truncate()


def test_lines_are_written_together_in_whole_lines_of_at_most_pipe_buf_bytes_within_the_flush_interval() -> None:
    stream = Writes()
    lines = [f'INFO:     127.0.0.1:1 - "POST /runs HTTP/1.1" 201 Created [request={n:032x}]\n' for n in range(200)]

    async def add_all() -> None:
        buffered = AccessLines(stream)
        for line in lines:
            buffered.add(line)
        assert stream.writes == []  # nothing written per line
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_until(lambda: stream.writes, FLUSH_S * 40, "the buffered lines written")
        )

    asyncio.run(add_all())
    assert "".join(stream.writes) == "".join(lines)
    assert 1 < len(stream.writes) < len(lines)
    for write in stream.writes:
        assert len(write.encode()) <= select.PIPE_BUF and write.endswith("\n")


def test_a_line_added_without_an_event_loop_is_written_at_once() -> None:
    stream = Writes()
    AccessLines(stream).add("a line\n")
    assert stream.writes == ["a line\n"]


@pytest.fixture
def limited_api(dsn: str, conn: psycopg.Connection) -> Iterator[Api]:
    settings = ApiSettings(dsn=dsn, rate_limit=RateLimit(3, 60), **TEST_SETTINGS)  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        yield Api(client, make_keys(conn))


def test_refusals_carry_the_request_id_as_a_created_run_does(limited_api: Api) -> None:
    answers = {
        "no key": limited_api.post("/runs", json={"task": "t"}, as_=None, headers={"X-Request-ID": "r-1"}),
        "unknown key": limited_api.post(
            "/runs", json={"task": "t"}, as_=None, headers={"X-Request-ID": "r-2", "Authorization": "Bearer pgs_x"}
        ),
        "read key": limited_api.post("/runs", json={"task": "t"}, as_="read", headers={"X-Request-ID": "r-3"}),
        "no route": limited_api.get("/nowhere", headers={"X-Request-ID": "r-4"}),
    }
    for _ in range(3):
        limited_api.get("/runs", as_="write")
    answers["rate limit"] = limited_api.get("/runs", as_="write", headers={"X-Request-ID": "r-5"})
    statuses = {what: answer.status_code for what, answer in answers.items()}
    assert statuses == {"no key": 401, "unknown key": 401, "read key": 403, "no route": 404, "rate limit": 429}
    ids = {what: answer.headers.get("x-request-id") for what, answer in answers.items()}
    assert ids == {"no key": "r-1", "unknown key": "r-2", "read key": "r-3", "no route": "r-4", "rate limit": "r-5"}
    made = limited_api.post("/runs", json={"task": "t"}, as_=None)
    assert made.status_code == 401 and len(made.headers["x-request-id"]) == 32  # made up when not given


def test_pgsched_api_writes_an_access_line_per_request_and_every_line_before_it_stops(
    dsn: str, conn: psycopg.Connection, tmp_path: Path
) -> None:
    key = make_keys(conn)["write"]
    processes = Processes(tmp_path, conn)
    api = processes.start("api", "--host", "127.0.0.1", "--port", "0", "--dsn", dsn)
    try:
        match = processes.wait_until(
            lambda: re.search(r"running on (http://127\.0\.0\.1:\d+)", api.log()), 30, "pgsched api to listen"
        )
        with httpx.Client(base_url=match[1]) as client:
            made = client.post("/runs", json={"task": "t"}, headers={"Authorization": f"Bearer {key}"})
            refused = client.post("/runs", json={"task": "t"}, headers={"X-Request-ID": "who-1"})
            for _ in range(50):
                client.get("/health")
        assert (made.status_code, refused.status_code) == (201, 401)
        api.signal(signal.SIGINT)  # at once: the last lines are still in the buffer
        assert api.wait_exit(15) == 0
        log = api.log()
    finally:
        processes.cleanup()
    made_id = made.headers["x-request-id"]
    assert re.search(rf'INFO: {{5}}127\.0\.0\.1:\d+ - "POST /runs HTTP/1\.1" 201 Created \[request={made_id}\]\n', log)
    assert re.search(r'"POST /runs HTTP/1\.1" 401 Unauthorized \[request=who-1\]\n', log)
    assert len(re.findall(r'"GET /health HTTP/1\.1" 200 OK \[request=\w+\]\n', log)) == 50

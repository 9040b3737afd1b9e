"""`pgsched dev`: the quick start. Embedded PostgreSQL (unless a DSN is configured), schema
applied, a worker hosting a beat, and the REST API and dashboard with an admin key made for the
session (and a one-time dashboard sign-in link for it);
with the example app, a producer that keeps runs flowing and a periodic job.

The API runs in the worker's event loop (uvicorn as a task): one process to start and to stop.
The worker owns SIGINT/SIGTERM; when it has stopped, the API server is told to stop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from dataclasses import dataclass
from typing import Iterator

import psycopg

from pgsched import example
from pgsched.app import App
from pgsched.beat import BeatOptions
from pgsched.errors import InvalidInput
from pgsched.migrate import migrate
from pgsched.worker import Worker, WorkerOptions

logger = logging.getLogger("pgsched.dev")

DEFAULT_API_PORT = 8000


@dataclass(frozen=True)
class DevApi:
    """Where `pgsched dev` serves the API. ``port`` None: 8000, or any free port if 8000 is
    taken; 0: any free port; another number: that port or an error."""

    host: str = "127.0.0.1"
    port: int | None = None


def run_dev(app: App, options: WorkerOptions, *, run_for_s: float | None = None, api: DevApi | None = DevApi()) -> None:
    # Bound before anything starts: a port in use is a one-line error, not a crash later.
    listener = _listen(api) if api is not None else None
    key_id: int | None = None
    try:
        with psycopg.connect(app.dsn, autocommit=True) as conn:
            applied = migrate(conn)
            app.sync_periodic_jobs(conn)
            key, key_id, sign_in = _session_key(conn) if listener is not None else (None, None, None)
        logger.info("schema ready (%d migrations applied now); database: %s", len(applied), app.dsn)
        if listener is not None and key is not None and sign_in is not None:  # (they exist when the API is served)
            _announce_api(listener, key, sign_in)
        asyncio.run(_work(app, options, run_for_s, listener))
    finally:
        if listener is not None:
            listener.close()
        if key_id is not None:
            _revoke_session_key(app.dsn, key_id)


def _listen(api: DevApi) -> socket.socket:
    """The API's listening socket (uvicorn serves it)."""
    port = DEFAULT_API_PORT if api.port is None else api.port
    try:
        return _bound_socket(api.host, port)
    except OSError as exc:
        if api.port is None and exc.errno == errno.EADDRINUSE:
            sock = _bound_socket(api.host, 0)
            logger.warning("port %d is in use: serving the API on port %d instead", port, sock.getsockname()[1])
            return sock
        raise InvalidInput(
            f"cannot serve the API on {api.host}:{port}: {exc.strerror or exc}; choose another "
            "--api-port (0: any free port) or pass --no-api"
        ) from None


def _bound_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _session_key(conn: psycopg.Connection) -> tuple[str, int, str]:
    """A new admin key for this session, its id, and a one-time dashboard sign-in token for it
    (keys are stored as digests: an old one cannot be shown again, so each session makes its
    own and revokes it at the end, which ends its dashboard sessions too)."""
    from pgsched.api.keys import create_key
    from pgsched.ui.sessions import create_sign_in_token

    key, row = create_key(conn, "admin", name="pgsched dev")
    return key, row["id"], create_sign_in_token(conn, row["id"])


def _revoke_session_key(dsn: str, key_id: int) -> None:
    """Admin keys never expire: one per `pgsched dev` session left working would pile up."""
    from pgsched.api.keys import revoke_key

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            revoke_key(conn, key_id)
    except psycopg.OperationalError as exc:
        logger.warning(
            "could not revoke this session's API key (id %d): %s; `pgsched keys revoke %d` does", key_id, exc, key_id
        )


def _announce_api(listener: socket.socket, key: str, sign_in: str) -> None:
    host, port = listener.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    # Printed, not logged: the quick start's output must show it whatever the log level.
    print(
        f"Dashboard: {url}/ui/sign-in/{sign_in}  (a one-time link: it signs you in with this session's key)\n"
        f"REST API: {url}  (OpenAPI: {url}/schema/openapi.json)\n"
        f"admin API key for this session: {key}\n"
        f"  curl -s {url}/queues -H 'Authorization: Bearer {key}'",
        flush=True,
    )


class _EmbeddedServer:
    """uvicorn serving the API on ``listener`` inside the current event loop."""

    def __init__(self, app: App, listener: socket.socket) -> None:
        import uvicorn

        from pgsched.api import ApiSettings, create_app

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield  # the worker's handlers stay: it stops the server when it stops

        config = uvicorn.Config(create_app(ApiSettings(dsn=app.dsn)), log_config=None, lifespan="on")
        self._server = Server(config)
        self._listener = listener
        self._task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._listener]))
        return self._task

    async def stop(self) -> None:
        self._server.should_exit = True  # uvicorn checks it every 0.1 s, then finishes open requests
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


async def _work(app: App, options: WorkerOptions, run_for_s: float | None, listener: socket.socket | None) -> None:
    worker = Worker(app, options, beat=BeatOptions())
    worker.install_signal_handlers()
    api_server = _EmbeddedServer(app, listener) if listener is not None else None
    extras: list[asyncio.Task[None]] = []
    stop_demo = asyncio.Event()
    if app is example.app:
        logger.info("running the example app: enqueuing demo runs; see them with `pgsched stats --watch`")
        extras.append(asyncio.create_task(example.produce_demo_runs(stop_demo)))
    if run_for_s is not None:
        extras.append(asyncio.create_task(_stop_after(worker, run_for_s)))
    worker_done = asyncio.Event()

    def api_stopped(task: asyncio.Task[None]) -> None:
        if not worker_done.is_set():  # the server gave up on its own: one process, so all of it stops
            reason = "cancelled" if task.cancelled() else task.exception() or "no error"
            logger.error("the API server stopped unexpectedly (%s): stopping", reason)
            worker.request_stop()

    if api_server is not None:
        api_server.start().add_done_callback(api_stopped)
    try:
        await worker.run()
    finally:
        worker_done.set()
        stop_demo.set()
        for task in extras:
            task.cancel()
        if api_server is not None:
            await api_server.stop()
        await asyncio.gather(*extras, return_exceptions=True)
        await app.aclose()


async def _stop_after(worker: Worker, seconds: float) -> None:
    await asyncio.sleep(seconds)
    worker.request_stop()

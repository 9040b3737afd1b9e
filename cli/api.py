"""`pgsched api`: serve the REST API with uvicorn."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from pgsched.cli import render
from pgsched.cli.options import DsnOption
from pgsched.config import resolve_dsn
from pgsched.errors import InvalidInput


def api(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port, printed at start)")] = 8000,
    workers: Annotated[int, typer.Option(help="Processes serving the API (each with its own pool)")] = 1,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Serve without API keys: local development ONLY")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error")] = "info",
    redis_url: Annotated[
        Optional[str],
        typer.Option(
            "--redis-url",
            envvar="PGSCHED_REDIS_URL",
            show_default=False,
            help="Optional Redis (redis://host:6379/0): caches reads and shares rate-limit counters between API "
            "processes; the API keeps working from PostgreSQL while it is down",
        ),
    ] = None,
    rate_limit: Annotated[
        Optional[str],
        typer.Option(
            "--rate-limit",
            envvar="PGSCHED_API_RATE_LIMIT",
            show_default=False,
            help="REQUESTS/SECONDS per API key (per client address with --no-auth), e.g. 600/60; over it: 429. "
            "Default: no limit",
        ),
    ] = None,
    auth_failure_limit: Annotated[
        str,
        typer.Option(
            "--auth-failure-limit",
            envvar="PGSCHED_API_AUTH_FAILURE_LIMIT",
            help="REQUESTS/SECONDS with an unknown or revoked key per client address; past it the address "
            "gets 429 without a database lookup",
        ),
    ] = "30/60",
    read_dsn: Annotated[
        Optional[str],
        typer.Option(
            "--read-dsn",
            envvar="PGSCHED_READ_DSN",
            show_default=False,
            help="A streaming replica for the lists and statistics (runs, queues, jobs, workers, the dashboard's "
            "lists); writes and single reads stay on the primary, and reads go there too while the replica is "
            "down or lags",
        ),
    ] = None,
    read_max_lag_s: Annotated[
        float,
        typer.Option(
            "--read-max-lag-s",
            envvar="PGSCHED_READ_MAX_LAG_S",
            help="Past this many seconds of replay lag, reads go to the primary",
        ),
    ] = 5.0,
    ssl_certfile: Annotated[
        Optional[Path],
        typer.Option(
            "--ssl-certfile",
            show_default=False,
            help="Serve https with this PEM certificate (chain) file, for deployments without a TLS proxy; "
            "needs --ssl-keyfile",
        ),
    ] = None,
    ssl_keyfile: Annotated[
        Optional[Path],
        typer.Option("--ssl-keyfile", show_default=False, help="The certificate's PEM private key file"),
    ] = None,
    dsn: DsnOption = None,
) -> None:
    """Serve the REST API (OpenAPI document at /schema/openapi.json) and the dashboard (/ui)."""
    from pgsched.api.serve import serve
    from pgsched.api.settings import ApiSettings, RateLimit

    if workers < 1:
        raise InvalidInput(f"--workers must be at least 1, got {workers}")
    if not 0 <= port <= 65535:
        raise InvalidInput(f"--port must be between 0 and 65535, got {port}")
    tls = _tls_options(ssl_certfile, ssl_keyfile)
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise InvalidInput(f"--log-level must be debug, info, warning or error, got {log_level!r}")
    # Each uvicorn worker builds its app from the environment (ApiSettings.from_env).
    os.environ["PGSCHED_DSN"] = resolve_dsn(dsn)
    os.environ["PGSCHED_API_AUTH"] = "0" if no_auth else "1"
    if redis_url:
        os.environ["PGSCHED_REDIS_URL"] = redis_url
    if rate_limit:
        os.environ["PGSCHED_API_RATE_LIMIT"] = str(RateLimit.parse(rate_limit, source="--rate-limit"))
    if read_dsn:
        os.environ["PGSCHED_READ_DSN"] = read_dsn
    os.environ["PGSCHED_READ_MAX_LAG_S"] = repr(read_max_lag_s)
    # The access log is the app's (pgsched.api.access: uvicorn's line, buffered), not uvicorn's.
    os.environ["PGSCHED_API_ACCESS_LOG"] = "1" if log_level.lower() in ("debug", "info") else "0"
    os.environ["PGSCHED_API_AUTH_FAILURE_LIMIT"] = str(
        RateLimit.parse(auth_failure_limit, source="--auth-failure-limit")
    )
    ApiSettings.from_env()  # a bad setting fails here, once, not in every worker
    if no_auth:
        render.err.print(
            "[bold red]WARNING: authentication is disabled (--no-auth).[/] Anyone who can reach "
            "this API can read and change every job and run. Local development only.",
            highlight=False,
        )
    serve(
        "pgsched.api.app:create_app_from_env",
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
        log_config=_log_config(log_level),
        access_log=False,
        **tls,
    )


def _tls_options(certfile: Path | None, keyfile: Path | None) -> dict[str, str]:
    """uvicorn's TLS options: both files or neither (plain http), each one that exists."""
    if (certfile is None) != (keyfile is None):
        raise InvalidInput("--ssl-certfile and --ssl-keyfile go together: give both to serve https, or neither")
    if certfile is None or keyfile is None:
        return {}
    for option, path in (("--ssl-certfile", certfile), ("--ssl-keyfile", keyfile)):
        if not path.is_file():
            raise InvalidInput(f"{option}: no such file {str(path)!r}")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, extended to the root logger (pgsched's own loggers, psycopg's pool), so
    every worker process logs the same way: uvicorn applies it in each one."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["root"] = {"handlers": ["default"], "level": level.upper()}
    # The pool logs every reconnect attempt at INFO; its warnings say what matters.
    config["loggers"]["psycopg.pool"] = {"level": "WARNING"}
    # Every line a request logs ends with its X-Request-ID (and the run's ids for a line about a
    # run): pgsched.logs.CorrelationFilter. The access line too, written by pgsched.api.access.
    config["filters"] = {"correlation": {"()": "pgsched.logs.CorrelationFilter"}}
    config["handlers"]["default"]["filters"] = ["correlation"]
    config["formatters"]["default"]["fmt"] += "%(correlation)s"
    return config

"""Where pgsched finds its database: ``--dsn``, then ``PGSCHED_DSN``, then the embedded server.

Behind a transaction-mode pooler (PgBouncer), two more settings: ``PGSCHED_DIRECT_DSN``
(``--direct-dsn``), a DSN that reaches PostgreSQL itself, for what needs a session of its own
(LISTEN, the beat leader's advisory lock); and ``PGSCHED_PGBOUNCER=1`` (``--pgbouncer``),
which says the DSN goes through such a pooler. Setting a direct DSN implies it: there is no
other reason to have one. Through the pooler pgsched prepares no statements and sends no
startup options; what it used to set per session it sets per transaction instead.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg.conninfo

from pgsched.errors import ConfigError
from pgsched.instants import READER_ADAPTERS

DIRECT_DSN_ENV = "PGSCHED_DIRECT_DSN"
PGBOUNCER_ENV = "PGSCHED_PGBOUNCER"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the explicit one, else ``$PGSCHED_DSN``, else the embedded PostgreSQL."""
    if dsn:
        return checked_dsn(dsn, "the DSN")
    from_env = os.environ.get("PGSCHED_DSN")
    if from_env:
        return checked_dsn(from_env, "PGSCHED_DSN")
    from pgsched.embedded import embedded_dsn

    return embedded_dsn()


def resolve_direct_dsn(direct_dsn: str | None = None) -> str | None:
    """The direct DSN (LISTEN and the leader lock when the DSN is pooled): the explicit one,
    else ``$PGSCHED_DIRECT_DSN``, else None."""
    chosen = direct_dsn or os.environ.get(DIRECT_DSN_ENV) or None
    return None if chosen is None else checked_dsn(chosen, DIRECT_DSN_ENV if not direct_dsn else "the direct DSN")


def checked_dsn(dsn: str, name: str) -> str:
    """``dsn`` if libpq can parse it (a URI or key=value pairs), else a ConfigError naming ``name``."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"{name} is not a valid connection string: {str(exc).strip()}") from None
    return dsn


def resolve_pgbouncer(pgbouncer: bool | None = None, *, direct_dsn: str | None = None) -> bool:
    """Whether the DSN goes through a transaction-mode pooler: the explicit answer, else
    ``$PGSCHED_PGBOUNCER``, else whether a direct DSN is configured."""
    if pgbouncer is not None:
        return pgbouncer
    value = os.environ.get(PGBOUNCER_ENV)
    if value is None:
        return resolve_direct_dsn(direct_dsn) is not None
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{PGBOUNCER_ENV} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def connection_kwargs(pgbouncer: bool, **kwargs: Any) -> dict[str, Any]:
    """psycopg connection arguments for the DSN. Through a pooler: no prepared statements (one
    prepared on a server connection is missing, or already taken, when the next transaction
    lands on another) and no startup ``options`` (PgBouncer refuses the connection). Either way
    timestamps load through READER_ADAPTERS: a row no datetime can hold never fails a read."""
    kwargs = {"context": READER_ADAPTERS, **kwargs}
    if not pgbouncer:
        return kwargs
    return {name: value for name, value in kwargs.items() if name != "options"} | {"prepare_threshold": None}


def session_dsn(dsn: str, direct_dsn: str | None, pgbouncer: bool) -> str | None:
    """Where session state (LISTEN, a session advisory lock) can live: the direct DSN, else the
    DSN unless it is pooled (a pooler hands each transaction to any server connection, so a
    LISTEN hears nothing and a lock is released on the wrong one), else nowhere."""
    if direct_dsn:
        return direct_dsn
    return None if pgbouncer else dsn

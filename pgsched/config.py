"""Where pgsched finds its database: ``--dsn``, then ``PGSCHED_DSN``, then the embedded server."""

from __future__ import annotations

import os


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the explicit one, else ``$PGSCHED_DSN``, else the embedded PostgreSQL."""
    if dsn:
        return dsn
    from_env = os.environ.get("PGSCHED_DSN")
    if from_env:
        return from_env
    from pgsched.embedded import embedded_dsn

    return embedded_dsn()

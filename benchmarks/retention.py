"""What retention costs: pruning a day of finished runs by DELETE, as pgsched did before the
partitioned history, against dropping that day's partition.

    python -m benchmarks.retention [--runs 1000000] [--dsn SERVER_DSN]

A day of --runs succeeded runs, finished over the UTC day eight days ago (past the default
retention of 7 days), is loaded as a restore loads it (triggers off) and then pruned; the time
and the WAL bytes of the prune are printed, with the bytes the day held. Both ways run in one
run, on one server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import UTC, datetime, timedelta

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.scale import add_finished_runs
from pgsched.sql import queries

RETENTION_S = 7 * 86_400
EIGHT_DAYS_AGO = datetime.now(UTC).date() - timedelta(days=8)  # a whole UTC day, past the retention
PRUNE_BATCH = 5000  # what the beat's prune of the hot table deletes per statement


def wal_lsn(conn: psycopg.Connection) -> str:
    return str(conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]


def wal_since(conn: psycopg.Connection, lsn: str) -> int:
    return int(conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()[0])  # type: ignore[index]


def table_bytes(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(
        "SELECT CASE WHEN c.relkind = 'p'"
        " THEN (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(c.oid))"
        " ELSE pg_total_relation_size(c.oid) END FROM pg_class AS c WHERE c.oid = %s::regclass",
        (table,),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def prune_by_delete(dsn: str, runs: int) -> dict[str, float]:
    """Today's retention of the single runs table: batched DELETEs, then the vacuum they need."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        add_finished_runs(conn, runs, on_day=EIGHT_DAYS_AGO, into_history=False)
        conn.execute("CHECKPOINT")
        held = table_bytes(conn, "pgsched.runs")
        lsn, start = wal_lsn(conn), time.perf_counter()
        while conn.execute(  # the statement returns how many runs it deleted (schema 0037: keys too)
            queries["run_prune_finished"], {"now": None, "retention_s": RETENTION_S, "limit": PRUNE_BATCH}
        ).fetchone()[0]:  # type: ignore[index]
            pass
        deleted_s = time.perf_counter() - start
        conn.execute("VACUUM pgsched.runs")
        return {
            "seconds": deleted_s,
            "seconds_with_vacuum": time.perf_counter() - start,
            "wal_bytes": wal_since(conn, lsn),
            "day_bytes": held,
        }


def prune_by_drop(dsn: str, runs: int) -> dict[str, float] | None:
    """The partitioned history's retention: the beat leader's maintenance drops the day's partition."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('pgsched.runs_history')").fetchone()[0] is None:  # type: ignore[index]
            return None
        conn.execute("SELECT pgsched.history_partition_create(%s)", (EIGHT_DAYS_AGO,))
        add_finished_runs(conn, runs, on_day=EIGHT_DAYS_AGO, into_history=True)
        conn.execute("CHECKPOINT")
        held = table_bytes(conn, "pgsched.runs_history")
        lsn, start = wal_lsn(conn), time.perf_counter()
        asyncio.run(maintain(dsn))
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "seconds_with_vacuum": seconds,
            "wal_bytes": wal_since(conn, lsn),
            "day_bytes": held,
        }


async def maintain(dsn: str) -> None:
    from pgsched.maintenance import maintain_history

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        dropped = (await maintain_history(conn, retention_s=RETENTION_S)).dropped
    assert dropped, "the day past the retention was not dropped"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs in the day pruned")
    parser.add_argument("--dsn", help="a server to create the benchmark databases on (default: embedded)")
    args = parser.parse_args()
    with server_dsn(args.dsn) as server:
        with fresh_database(server) as dsn:
            delete = prune_by_delete(dsn, args.runs)
        with fresh_database(server) as dsn:
            drop = prune_by_drop(dsn, args.runs)
    for name, figures in (("DELETE", delete), ("DROP", drop)):
        if figures is None:
            print(f"{name:6} (no partitioned history in this schema)")
            continue
        print(
            f"{name:6} {args.runs:,} runs ({figures['day_bytes'] / 2**20:,.0f} MiB): {figures['seconds']:.2f} s"
            f" ({figures['seconds_with_vacuum']:.2f} s with the vacuum it needs),"
            f" WAL {figures['wal_bytes'] / 2**20:,.1f} MiB"
        )
    print(json.dumps({"runs": args.runs, "delete": delete, "drop": drop}))


if __name__ == "__main__":
    main()

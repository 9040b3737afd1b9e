"""What one claim and one completion cost, fixed and per run, on both sides of the wire
(issue 18, item 4: where 8 workers x concurrency 10 lose against 1 x 80).

    python -m benchmarks.statement_costs [--batches 10,80] [--calls 200] [--rounds 3] [--dsn SERVER_DSN]

The worker's own code makes the statements: its fetcher claims ``batch`` runs (``run_claim``, on
the fetcher's connection) and its completer writes them back as succeeded (one batch of
outcomes, on the worker's pool), ``--calls`` times per batch size and round. Per statement it
reads the client's CPU (this process, user + system: psycopg, asyncio and pgsched's Python, and
the kernel's socket work) and the server's (every backend of the database, from /proc). Batch
sizes alternate within each round; medians over rounds. With two batch sizes, ``fixed`` is what
a statement costs whatever its size and ``per run`` the rest (a line through the two points):
a shape that claims and completes ``n`` runs a statement pays ``2 x fixed / n`` a run on top.

Then the claim's rows alone: ``fetchall()`` of 100 rows shaped as a claim returns them, on a
connection like the fetcher's, its session in the server's zone against one in UTC (what
``CLAIM_CONNECTION`` sets: psycopg converts each timestamptz through a ZoneInfo otherwise),
alternating, 10 rounds of 200 fetches; client CPU per row. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from benchmarks._server import fresh_database, server_dsn
from benchmarks.worker_cpu import thread_cpu_s
from pgsched.completer import Completer
from pgsched.config import connection_kwargs
from pgsched.fetcher import CLAIM_ADAPTERS, Capacity, Fetcher, FetchSettings, claim_pool
from pgsched.run_types import ClaimedRun, Outcome

BACKENDS_SQL = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    " AND backend_type = 'client backend'"  # not autovacuum's, which the writes here set off
)
REGISTER_SQL = (
    "INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('bench', 0, '{default}', 1) RETURNING id"
)


def client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_cpu_s(admin: psycopg.Connection) -> float:
    return sum(thread_cpu_s(pid) for (pid,) in admin.execute(BACKENDS_SQL).fetchall())


async def measure(dsn: str, batch: int, calls: int) -> dict[str, float]:
    """Client and server CPU (µs) per claim and per completion of ``batch`` runs."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        admin.execute(
            "INSERT INTO pgsched.runs (task, args) SELECT 'noop', '{}' FROM generate_series(1, %s)", (batch * calls,)
        )
        admin.execute("VACUUM ANALYZE pgsched.runs")
        worker_id = admin.execute(REGISTER_SQL).fetchone()[0]  # type: ignore[index]
        settings = FetchSettings(queues=["default"], lease_s=30.0, poll_interval_s=2.0, concurrency=batch)
        fetcher = Fetcher(
            settings, Capacity(lambda: batch, lambda: 0, lambda: False, lambda run: None), asyncio.Event()
        )
        fetcher._worker_id = worker_id  # what Fetcher.run sets: the claims alone are measured here
        kwargs = connection_kwargs(False, autocommit=True)
        async with (
            claim_pool(dsn, False) as claims,
            AsyncConnectionPool(dsn, kwargs=kwargs, min_size=1, open=False) as pool,
        ):
            await claims.open(wait=True)
            await pool.open(wait=True)
            completer = Completer(pool, worker_id, lambda batch, written: None)
            await fetcher._load_queue_settings_if_due(claims)
            claimed: list[list[ClaimedRun]] = []
            client, server = client_cpu_s(), server_cpu_s(admin)
            for _ in range(calls):
                claimed.append(await fetcher._claim(claims, batch))
            claim_client, claim_server = client_cpu_s() - client, server_cpu_s(admin) - server
            outcomes = [[Outcome(run.id, run.attempt, "succeeded", result="null") for run in runs] for runs in claimed]
            client, server = client_cpu_s(), server_cpu_s(admin)
            for batch_outcomes in outcomes:
                await completer._write(batch_outcomes)
            complete_client, complete_server = client_cpu_s() - client, server_cpu_s(admin) - server
        done = admin.execute("SELECT count(*) FROM pgsched.runs_all WHERE status = 'succeeded'").fetchone()[0]  # type: ignore[index]
    assert done == batch * calls and all(len(runs) == batch for runs in claimed), f"{done} of {batch * calls} written"
    return {
        "claim_client_us": claim_client / calls * 1e6,
        "claim_server_us": claim_server / calls * 1e6,
        "complete_client_us": complete_client / calls * 1e6,
        "complete_server_us": complete_server / calls * 1e6,
    }


CLAIM_SHAPED_SQL = (
    "SELECT id, task, args, attempt, max_attempts, queue, trace_context, request_id, priority, run_at, false"
    " FROM pgsched.runs ORDER BY id LIMIT 100"
)
ZONES = {"server's zone": "", "UTC": "-c TimeZone=UTC"}


async def row_loading_us(dsn: str, options: str, fetches: int = 200) -> float:
    """Client CPU (µs) per row of ``fetchall()`` on a claim-shaped result, with these startup options."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, context=CLAIM_ADAPTERS, options=options)
    try:
        cursor, rows, spent = conn.cursor(), 0, 0.0
        for _ in range(fetches):
            await cursor.execute(CLAIM_SHAPED_SQL)
            started = client_cpu_s()
            rows += len(await cursor.fetchall())
            spent += client_cpu_s() - started
        return spent / rows * 1e6
    finally:
        await conn.close()


def row_loading(dsn: str, rounds: int = 10) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("TRUNCATE pgsched.runs, pgsched.runs_history")
        admin.execute("INSERT INTO pgsched.runs (task, args) SELECT 'noop', '{}' FROM generate_series(1, 100)")
    samples: dict[str, list[float]] = {zone: [] for zone in ZONES}
    for round_number in range(rounds):
        for zone in ZONES if round_number % 2 == 0 else list(ZONES)[::-1]:
            samples[zone].append(asyncio.run(row_loading_us(dsn, ZONES[zone])))
    ratios = [utc / server for utc, server in zip(samples["UTC"], samples["server's zone"])]
    for zone, figures in samples.items():
        print(f"claimed rows loaded, session in {zone}: {statistics.median(figures):.2f} µs a row")
    print(f"UTC / server's zone: {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    return {
        "us_per_row": {zone: statistics.median(f) for zone, f in samples.items()},
        "utc_vs_server_zone": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }


def fit(small: int, large: int, at_small: float, at_large: float) -> dict[str, float]:
    """A statement's cost as fixed + n x per_run, through two batch sizes."""
    per_run = (at_large - at_small) / (large - small)
    return {"fixed_us": round(at_small - small * per_run, 1), "per_run_us": round(per_run, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="10,80", help="runs per claim and per completion, comma-separated")
    parser.add_argument("--calls", type=int, default=200, help="claims (and completions) per batch size and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    samples: dict[int, list[dict[str, float]]] = {b: [] for b in batches}
    with server_dsn(args.dsn) as server, contextlib.ExitStack() as stack:
        dsn = stack.enter_context(fresh_database(server))
        for round_number in range(args.rounds):
            for batch in batches if round_number % 2 == 0 else batches[::-1]:
                figures = asyncio.run(measure(dsn, batch, args.calls))
                samples[batch].append(figures)
                print(
                    f"round {round_number + 1}: batch {batch} " + " ".join(f"{k} {v:.0f}" for k, v in figures.items())
                )
        loading = row_loading(dsn)
    medians = {b: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for b, rows in samples.items()}
    report: dict[str, Any] = {
        "benchmark": "statement_costs",
        "calls": args.calls,
        "rounds": args.rounds,
        "medians": medians,
        "row_loading": loading,
    }
    print(
        f"\n{'batch':>5s} {'claim client':>12s} {'claim server':>12s} {'compl client':>12s} {'compl server':>12s}"
        "  (µs a statement)"
    )
    for batch, m in medians.items():
        print(
            f"{batch:5d} {m['claim_client_us']:12.0f} {m['claim_server_us']:12.0f}"
            f" {m['complete_client_us']:12.0f} {m['complete_server_us']:12.0f}"
        )
    if len(batches) == 2:
        small, large = sorted(batches)
        report["fit"] = {key: fit(small, large, medians[small][key], medians[large][key]) for key in medians[small]}
        for key, line in report["fit"].items():
            print(f"{key}: fixed {line['fixed_us']:.0f} µs a statement, {line['per_run_us']:.1f} µs a run")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

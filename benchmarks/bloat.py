"""Does the claim spiral while a long transaction holds vacuum's horizon back (issue 13)?

    python -m benchmarks.bloat [--rate 400] [--duration 150] [--full] [--every 15]
                               [--before main] [--claims before,after] [--dsn SERVER_DSN]

A producer inserts no-op runs at a steady ``--rate`` (plain SQL INSERTs, a batch every 10 ms);
one drainer claims them (up to 50 at a time, pgsched's ``run_claim`` on a connection set up
as the fetcher's) and completes each batch (``run_complete_many``), looking again after 5 ms
when a claim finds nothing. Each claim is timed on the client. For each claim statement
(``before``: the text of git ref ``--before``, a walk from the start of the claim index on
every claim; ``after``: this checkout's, from where the last claim ended, with
pgsched.claim_cursor's full pass every second) it runs twice on a fresh database: with no
other transaction, then with one REPEATABLE READ transaction that took its snapshot at the
start and stays open to the end (an analytics query, a forgotten psql session).

Every ``--every`` seconds it prints the claims' p50/p99 over that window (client time: on a
shared machine its p99 is mostly the scheduler), the server's time and buffers for one claim
(EXPLAIN ANALYZE of the drainer's next claim, rolled back), the claim index's size, the runs
table's dead tuples (pg_stat_user_tables) and the backlog (queued runs); at the end, per
phase, the claim p50/p99 of the last window and of the whole phase, and the ratio of the
pinned run's p99 to the free one's. ``--full`` runs each phase 15 minutes. The last
line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import ROOT
from pgsched.claim_cursor import ClaimCursors
from pgsched.fetcher import CLAIM_CONNECTION
from pgsched.run_types import ClaimedRun
from pgsched.sql import parse_queries, queries

CLAIM_LIMIT = 50
TICK_S = 0.01  # the producer inserts a batch this often
IDLE_S = 0.005  # the drainer looks again this long after a claim that found nothing
SAMPLE_SQL = """
SELECT pg_relation_size('pgsched.runs_claim_idx') AS claim_index_bytes,
       (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgsched.runs'::regclass) AS dead_tuples,
       (SELECT count(*) FROM pgsched.runs WHERE status = 'queued') AS backlog
"""


@dataclass
class Phase:
    """One claim statement for one condition, on its own database."""

    claim: str
    pinned: bool
    windows: list[dict[str, Any]] = field(default_factory=list)
    claims_ms: list[float] = field(default_factory=list)
    full_pass_ms: list[float] = field(default_factory=list)
    # The server's side of one claim per sample (EXPLAIN ANALYZE, rolled back): its execution
    # time and the buffers it touched, figures the machine's load does not blur.
    probe: threading.Event = field(default_factory=threading.Event)
    probes: list[tuple[float, int]] = field(default_factory=list)
    produced: int = 0
    completed: int = 0


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def produce(dsn: str, rate: float, stop: threading.Event, phase: Phase) -> None:
    """Insert runs so that ``rate`` per second have been inserted at any moment."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        start = time.perf_counter()
        while not stop.is_set():
            due = int(rate * (time.perf_counter() - start)) - phase.produced
            if due > 0:
                conn.execute("INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, %s)", (due,))
                phase.produced += due
            stop.wait(TICK_S)


def drain(dsn: str, statement: str, with_cursor: bool, stop: threading.Event, phase: Phase) -> None:
    """Claim and complete as the worker does, timing each claim."""
    cursors = ClaimCursors()
    base = {"limit": CLAIM_LIMIT, "worker_id": 1, "lease_s": 30.0, "now": None, "only_tasks": None}
    base |= {"skip_tasks": None, "queues": ["default"]}
    complete = queries["run_complete_many"]
    with psycopg.connect(dsn, **CLAIM_CONNECTION) as conn:
        while not stop.is_set():
            params = {**base, **(cursors.params(["default"]) if with_cursor else {})}
            full = not with_cursor or params["after_id"] == [None]
            if phase.probe.is_set():
                phase.probes.append(explain(conn, statement, params))
                phase.probe.clear()
            started = time.perf_counter()
            rows = conn.execute(statement.encode(), params).fetchall()
            elapsed_ms = (time.perf_counter() - started) * 1000
            phase.claims_ms.append(elapsed_ms)
            if full and with_cursor:
                phase.full_pass_ms.append(elapsed_ms)
            if with_cursor:
                cursors.advance(["default"], [ClaimedRun(*row) for row in rows])
            if not rows:
                stop.wait(IDLE_S)
                continue
            conn.execute(
                complete,
                {
                    "ids": [row[0] for row in rows],
                    "attempts": [row[3] for row in rows],
                    "statuses": ["succeeded"] * len(rows),
                    "results": [None] * len(rows),
                    "errors": [None] * len(rows),
                    "retry_delays_s": [0.0] * len(rows),
                    "worker_id": 1,
                },
            )
            phase.completed += len(rows)


def explain(conn: psycopg.Connection, statement: str, params: dict[str, Any]) -> tuple[float, int]:
    """Server milliseconds and buffers (hit + read) of one claim with ``params``, rolled back."""
    conn.execute("BEGIN")
    try:
        plan = "\n".join(row[0] for row in conn.execute(b"EXPLAIN (ANALYZE, BUFFERS) " + statement.encode(), params))
    finally:
        conn.execute("ROLLBACK")
    buffers = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?", plan)
    execution = re.search(r"Execution Time: ([\d.]+) ms", plan)
    assert buffers and execution, plan
    return float(execution[1]), int(buffers[1]) + int(buffers[2] or 0)


def sample(conn: psycopg.Connection, phase: Phase, started: float, seen: int) -> int:
    probed = len(phase.probes)
    phase.probe.set()
    deadline = time.perf_counter() + 2.0
    while len(phase.probes) == probed and time.perf_counter() < deadline:
        time.sleep(0.01)
    server_ms, buffers = phase.probes[-1] if len(phase.probes) > probed else (float("nan"), 0)
    row = conn.execute(SAMPLE_SQL).fetchone()
    assert row is not None
    window = phase.claims_ms[seen:]
    phase.windows.append(
        {
            "t_s": round(time.perf_counter() - started),
            "claims": len(window),
            "p50_ms": round(_quantile(window, 0.5), 3),
            "p99_ms": round(_quantile(window, 0.99), 3),
            "server_ms": round(server_ms, 3),
            "buffers": buffers,
            "claim_index_kb": row[0] // 1024,
            "dead_tuples": row[1],
            "backlog": row[2],
        }
    )
    w = phase.windows[-1]
    print(
        f"  {w['t_s']:>5} s  claims {w['claims']:>6}  p50 {w['p50_ms']:>7.3f} ms  p99 {w['p99_ms']:>7.3f} ms"
        f"  server {w['server_ms']:>7.3f} ms {w['buffers']:>5} buffers"
        f"  claim index {w['claim_index_kb']:>6} KB  dead tuples {w['dead_tuples']:>8}  backlog {w['backlog']:>6}",
        flush=True,
    )
    return len(phase.claims_ms)


def run_phase(server: str, phase: Phase, statement: str, rate: float, duration_s: float, every_s: float) -> None:
    print(f"claim {phase.claim}, {'one REPEATABLE READ transaction open' if phase.pinned else 'no long transaction'}:")
    with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as probe:
        pin = psycopg.connect(dsn, autocommit=True)
        try:
            if phase.pinned:
                pin.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                pin.execute("SELECT count(*) FROM pgsched.workers")  # the snapshot is taken here
            stop = threading.Event()
            threads = [
                threading.Thread(target=produce, args=(dsn, rate, stop, phase)),
                threading.Thread(target=drain, args=(dsn, statement, phase.claim == "after", stop, phase)),
            ]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            seen = 0
            try:
                while time.perf_counter() - started < duration_s:
                    time.sleep(min(every_s, max(0.0, duration_s - (time.perf_counter() - started))))
                    seen = sample(probe, phase, started, seen)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
        finally:
            pin.close()


def summary(phase: Phase) -> dict[str, Any]:
    last = phase.windows[-1] if phase.windows else {}
    return {
        "claim": phase.claim,
        "pinned": phase.pinned,
        "claims": len(phase.claims_ms),
        "p50_ms": round(_quantile(phase.claims_ms, 0.5), 3),
        "p99_ms": round(_quantile(phase.claims_ms, 0.99), 3),
        "last_window_p50_ms": last.get("p50_ms"),
        "last_window_p99_ms": last.get("p99_ms"),
        "full_passes": len(phase.full_pass_ms),
        "full_pass_p50_ms": round(statistics.median(phase.full_pass_ms), 3) if phase.full_pass_ms else None,
        "last_server_ms": last.get("server_ms"),
        "last_buffers": last.get("buffers"),
        "claim_index_kb": last.get("claim_index_kb"),
        "max_backlog": max((w["backlog"] for w in phase.windows), default=None),
        "produced": phase.produced,
        "completed": phase.completed,
        "windows": phase.windows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=400.0, help="Runs enqueued per second (default 400)")
    parser.add_argument("--duration", type=float, default=150.0, help="Seconds per phase (default 150)")
    parser.add_argument("--full", action="store_true", help="15 minutes per phase (the issue's horizon)")
    parser.add_argument("--every", type=float, default=15.0, help="Seconds between two printed samples")
    parser.add_argument("--before", default="main", help="The git ref whose run_claim is 'before' (default main)")
    parser.add_argument("--claims", default="before,after", help="Which claims to run: before, after or both")
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    # A kill stops the embedded server and drops the databases (the finally blocks run), rather
    # than leaving a postmaster behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    duration = 900.0 if options.full else options.duration
    old = subprocess.run(
        ["git", "show", f"{options.before}:schema/queries.sql"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    statements = {"before": parse_queries(old)["run_claim"], "after": queries["run_claim"]}
    phases: list[Phase] = []
    with server_dsn(options.dsn) as server:
        for claim in options.claims.split(","):
            for pinned in (False, True):
                phase = Phase(claim, pinned)
                run_phase(server, phase, statements[claim], options.rate, duration, options.every)
                phases.append(phase)
    results = [summary(phase) for phase in phases]
    print(f"\nrate {options.rate:g} runs/s, {duration:g} s per phase:")
    for result in results:
        free = next(r for r in results if r["claim"] == result["claim"] and not r["pinned"])
        print(
            f"  claim {result['claim']:<6} {'pinned' if result['pinned'] else 'free  '}"
            f"  p50 {result['p50_ms']:.3f} ms  p99 {result['p99_ms']:.3f} ms"
            f"  (last window p50 {result['last_window_p50_ms']} p99 {result['last_window_p99_ms']})"
            f"  p99 vs free {result['p99_ms'] / free['p99_ms']:.2f}x"
            f"  last probe {result['last_server_ms']} ms {result['last_buffers']} buffers"
            f"  claim index {result['claim_index_kb']} KB  max backlog {result['max_backlog']}"
            + (
                f"  full passes {result['full_passes']} p50 {result['full_pass_p50_ms']} ms"
                if result["full_passes"]
                else ""
            )
        )
    print(json.dumps({"rate": options.rate, "duration_s": duration, "before": options.before, "phases": results}))


if __name__ == "__main__":
    main()

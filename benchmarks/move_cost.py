"""What the move costs the hot path (issue 13 part 1, schema 0030): the statements a worker runs
on 50 runs at a time, timed with the runs_to_history trigger and without it (disabled), in
alternating rounds on one database, so both sides see the same server and table state.

- claim: 50 queued runs to running (as run_claim's UPDATE does; the trigger scans its 50 rows
  for a final status and finds none);
- heartbeat: the real worker_heartbeat over the worker's 50 running runs;
- complete: the real run_complete_many of those 50 (with the trigger, they move to the history).

And, with ``--move N``, how long the beat leader takes to move N runs that ended before 0030
(an existing installation's history) into the history, 5,000 a statement.

    python -m benchmarks.move_cost [--rounds 200] [--move 1000000] [--dsn ...]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import psycopg

from benchmarks.scale import add_finished_runs
from pgsched.maintenance import HistoryMover
from pgsched.migrate import migrate
from pgsched.sql import number_array, queries

BATCH = 50
CLAIM = """
UPDATE pgsched.runs AS r
SET status = 'running', attempt = r.attempt + 1, worker_id = %(worker_id)s, started_at = now(),
    lease_expires_at = now() + interval '30 seconds'
WHERE r.id IN (SELECT id FROM pgsched.runs WHERE status = 'queued' AND queue = 'default'
               ORDER BY priority, run_at, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING r.id, r.attempt
"""


def timed_us(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> tuple[float, list[Any]]:
    began = time.perf_counter()
    rows = conn.execute(sql.encode(), params).fetchall()
    return (time.perf_counter() - began) * 1e6, rows


def one_round(conn: psycopg.Connection, worker_id: int) -> dict[str, float]:
    conn.execute("SELECT pgsched.enqueue('noop') FROM generate_series(1, %s)", [BATCH])
    claim_us, claimed = timed_us(conn, CLAIM, {"worker_id": worker_id, "limit": BATCH})
    held = number_array([row[0] for row in claimed])
    heartbeat_us, _ = timed_us(
        conn, queries["worker_heartbeat"], {"worker_id": worker_id, "lease_s": 30.0, "ids": held}
    )
    outcome = {
        "ids": [row[0] for row in claimed],
        "attempts": [row[1] for row in claimed],
        "statuses": ["succeeded"] * len(claimed),
        "results": ["null"] * len(claimed),
        "errors": [None] * len(claimed),
        "retry_delays_s": [0.0] * len(claimed),
        "worker_id": worker_id,
    }
    complete_us, done = timed_us(conn, queries["run_complete_many"], outcome)
    assert len(done) == BATCH, f"completed {len(done)} of {BATCH}"
    return {"claim": claim_us, "heartbeat": heartbeat_us, "complete": complete_us}


def move_seconds(dsn: str, conn: psycopg.Connection, n: int) -> tuple[float, int]:
    """Seconds for the leader's mover to move n runs left in runs as a release before 0030 did."""
    add_finished_runs(conn, n, into_history=False)

    async def move() -> int:
        mover, moved = HistoryMover(), 0
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as leader:
            while not mover.done:
                moved += await mover.round(leader)
        return moved

    began = time.perf_counter()
    moved = asyncio.run(move())
    return time.perf_counter() - began, moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="rounds per side")
    parser.add_argument("--move", type=int, default=0, help="also time the move of this many ended runs")
    parser.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to make the database on")
    args = parser.parse_args()
    name = "history-move-move-cost"
    with psycopg.connect(f"{args.dsn} dbname=postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        with psycopg.connect(f"{args.dsn} dbname={name}", autocommit=True) as conn:
            migrate(conn)
            # Each statement commits on its own: without this a WAL flush (~10 ms on this disk,
            # the same on both sides) would hide what the statements themselves cost.
            conn.execute("SET synchronous_commit = off")
            add_finished_runs(conn, 100_000)  # a history, as a live installation has
            worker_id = conn.execute(
                "INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('b', 1, '{default}', 50)"
                " RETURNING id"
            ).fetchone()[0]  # type: ignore[index]
            samples: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for i in range(2 * args.rounds):
                moving = (i // 10) % 2 == 0  # blocks of 10 rounds: ALTER TABLE invalidates every plan
                if i % 10 == 0:
                    switch = "ENABLE" if moving else "DISABLE"
                    conn.execute(f"ALTER TABLE pgsched.runs {switch} TRIGGER runs_to_history".encode())
                    for _ in range(2):  # replanned and warmed outside the samples
                        one_round(conn, worker_id)
                        conn.execute("DELETE FROM pgsched.runs WHERE status = 'succeeded'")
                samples[moving].append(one_round(conn, worker_id))
                if not moving:  # what the trigger would have moved, out of the way
                    conn.execute("DELETE FROM pgsched.runs WHERE status = 'succeeded'")
            print(f"{args.rounds} rounds per side, {BATCH} runs a statement, 100,000 runs in the history")
            print("statement   median us, trigger off   median us, move on   ratio")
            for what in ("claim", "heartbeat", "complete"):
                off = statistics.median(s[what] for s in samples[False])
                on = statistics.median(s[what] for s in samples[True])
                print(f"{what:10}  {off:22.0f}  {on:19.0f}   {on / off:5.2f}x")
            if args.move:
                seconds, moved = move_seconds(f"{args.dsn} dbname={name}", conn, args.move)
                print(f"moved {moved:,} runs that had ended before 0030 in {seconds:.1f} s ({moved / seconds:,.0f}/s)")
    finally:
        with psycopg.connect(f"{args.dsn} dbname=postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()

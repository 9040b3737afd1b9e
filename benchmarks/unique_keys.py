"""What one run per unique_key over runs and the history (schemas 0037, 0049) costs, on one
database, in alternating blocks of rounds so both sides see the same server and table state.

Statements are timed inside the server (EXPLAIN ANALYZE's execution time, triggers included),
COPY by the wall clock. The hot path, runs without a key, as shipped (on: ``runs_unique_key``,
AFTER INSERT WHEN the run has a key, enabled; runs_to_history calling v3, 0049) against main
without keys (off: ``runs_unique_key`` disabled, runs_to_history calling v2, 0045). Per round:

- insert: one-run INSERTs (run_insert_bare, what App.enqueue sends most), each its own statement;
- copy: a COPY of 1,000 runs (enqueue_many): an AFTER ROW trigger leaves COPY's batched
  inserts on (a BEFORE ROW one would not: the design's reason);
- claim, heartbeat, complete: 50 runs a statement, as benchmarks.move_cost times them.

Runs with a key, the keyed move as shipped (v3: in runs_to_history's batch) against this file's
first version (row: v2 plus a row trigger ``runs_to_history_keyed`` moving one keyed run a
statement, recreated here), again in alternating blocks: an enqueue of a new key and a repeat of
a key whose run moved to the history, against the statement before 0037 (run_insert_unique as
main had it, which reads runs_all) on a key in runs; a completion of 50 keyed runs; and, for
scale, a completion of 50 runs without a key.

    python -m benchmarks.unique_keys [--rounds 60] [--dsn SERVER_DSN]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from typing import Any, Callable

import psycopg

from benchmarks.move_cost import CLAIM
from benchmarks.scale import add_finished_runs
from pgsched.sql import number_array, queries

BATCH = 50
COPY_RUNS = 1000
BLOCK = 4  # rounds per block; ALTER TABLE invalidates every plan, so each block warms up first
# The keyed move of this branch's first version (a row trigger, numbered 0038 then), the
# baseline of v3: created disabled, enabled in the row side's blocks.
ROW_TRIGGER = """
CREATE FUNCTION pgsched.bench_runs_to_history_keyed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        DELETE FROM pgsched.runs AS r
        WHERE r.id = NEW.id AND r.status IN ('succeeded', 'failed', 'cancelled') AND r.workflow_id IS NULL
        RETURNING r.*
    ), kept AS (
        INSERT INTO pgsched.runs_history SELECT * FROM moved RETURNING id, unique_key
    )
    INSERT INTO pgsched.run_unique_keys (unique_key, run_id)
    SELECT kept.unique_key, kept.id FROM kept WHERE kept.unique_key IS NOT NULL
    ON CONFLICT (unique_key) DO NOTHING;
    RETURN NULL;
END;
$$;
CREATE TRIGGER runs_to_history_keyed
    AFTER UPDATE OF status ON pgsched.runs
    FOR EACH ROW
    WHEN (NEW.unique_key IS NOT NULL AND NEW.workflow_id IS NULL AND NEW.status IN ('succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION pgsched.bench_runs_to_history_keyed();
ALTER TABLE pgsched.runs DISABLE TRIGGER runs_to_history_keyed;
"""
# run_insert_unique before 0037: the insert, and runs_all for the holder.
BEFORE_0037 = """
WITH inserted AS (
    INSERT INTO pgsched.runs (task, args, unique_key)
    VALUES ('noop', '{}', %(unique_key)s)
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
    RETURNING id
)
SELECT id, true AS created FROM inserted
UNION ALL
SELECT id, false FROM pgsched.runs_all
WHERE unique_key = %(unique_key)s AND NOT EXISTS (SELECT FROM inserted)
"""


def timed_us(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None) -> tuple[float, list[Any]]:
    """Wall time of a statement and its rows (client, network and server: noisy when loaded)."""
    began = time.perf_counter()
    rows = conn.execute(sql.encode(), params).fetchall()
    return (time.perf_counter() - began) * 1e6, rows


def server_us(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any] | None = None) -> float:
    """The server's execution time of a statement, its triggers included (EXPLAIN ANALYZE runs
    it): no client, network or scheduling of the client in the figure."""
    [plan] = conn.execute(b"EXPLAIN (ANALYZE, FORMAT JSON) " + sql.encode(), params).fetchone()[0]  # type: ignore[index]
    return float(plan["Execution Time"]) * 1000


def keyed_params(key: str) -> dict[str, Any]:
    return {
        "task": "noop",
        "args": "{}",
        "queue": "default",
        "priority": 0,
        "run_at": None,
        "delay": 0.0,
        "max_attempts": 3,
        "unique_key": key,
        "tenant": None,
        "expires_at": None,
        "expires_in": None,
        "trace_context": None,
        "request_id": None,
        "concurrency_key": None,
    }


def drain(conn: psycopg.Connection[Any], worker_id: int) -> dict[str, float]:
    """Claim, heartbeat and complete the BATCH queued runs there are (server time)."""
    claim_us = server_us(conn, CLAIM, {"worker_id": worker_id, "limit": BATCH})
    claimed = conn.execute(
        "SELECT id, attempt FROM pgsched.runs WHERE worker_id = %s AND status = 'running'", [worker_id]
    ).fetchall()
    held = number_array([row[0] for row in claimed])
    heartbeat_us = server_us(conn, queries["worker_heartbeat"], {"worker_id": worker_id, "lease_s": 30.0, "ids": held})
    outcome = {
        "ids": [row[0] for row in claimed],
        "attempts": [row[1] for row in claimed],
        "statuses": ["succeeded"] * len(claimed),
        "results": ["null"] * len(claimed),
        "errors": [None] * len(claimed),
        "retry_delays_s": [0.0] * len(claimed),
        "worker_id": worker_id,
    }
    assert len(claimed) == BATCH, f"claimed {len(claimed)} of {BATCH}"
    complete_us = server_us(conn, queries["run_complete_many"], outcome)
    assert scalar_count(conn, worker_id) == 0, "a claimed run was not completed"
    return {"claim": claim_us, "heartbeat": heartbeat_us, "complete": complete_us}


def scalar_count(conn: psycopg.Connection[Any], worker_id: int) -> int:
    row = conn.execute("SELECT count(*) FROM pgsched.runs WHERE worker_id = %s AND status = 'running'", [worker_id])
    return int(row.fetchone()[0])  # type: ignore[index]


def hot_round(conn: psycopg.Connection[Any], worker_id: int) -> dict[str, float]:
    inserts = [server_us(conn, queries["run_insert_bare"], {"task": "noop", "args": "{}"}) for _ in range(BATCH)]
    began = time.perf_counter()
    with conn.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
        copy.write("noop\t{}\n" * COPY_RUNS)
    copy_us = (time.perf_counter() - began) * 1e6
    conn.execute(
        "DELETE FROM pgsched.runs WHERE status = 'queued' AND id > (SELECT max(id) - %s FROM pgsched.runs)",
        [COPY_RUNS],
    )
    return {"insert": statistics.median(inserts), "copy": copy_us, **drain(conn, worker_id)}


def keyed_round(conn: psycopg.Connection[Any], worker_id: int, moved_key: str) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    new_key = [server_us(conn, queries["run_insert_unique"], keyed_params(f"{tag}-{i}")) for i in range(BATCH)]
    repeat_moved = [server_us(conn, queries["run_insert_unique"], keyed_params(moved_key)) for _ in range(10)]
    old_new = [server_us(conn, BEFORE_0037, {"unique_key": f"{tag}-old-{i}"}) for i in range(10)]
    old_repeat = [server_us(conn, BEFORE_0037, {"unique_key": f"{tag}-old-0"}) for _ in range(10)]
    conn.execute("DELETE FROM pgsched.runs WHERE unique_key LIKE %s", [f"{tag}-old-%"])
    keyed = drain(conn, worker_id)  # the 50 new keys: each moves as the side's trigger moves it
    left = conn.execute("SELECT count(*) FROM pgsched.runs WHERE unique_key LIKE %s", [f"{tag}-%"]).fetchone()
    assert left == (0,), f"{left} keyed runs did not move"
    conn.execute(b"INSERT INTO pgsched.runs (task, args) SELECT 'noop', '{}' FROM generate_series(1, 50)")
    plain = drain(conn, worker_id)
    return {
        "keyed insert, new key": statistics.median(new_key),
        "keyed repeat, run in history": statistics.median(repeat_moved),
        "before 0037: keyed insert, new key": statistics.median(old_new),
        "before 0037: keyed repeat, run in runs": statistics.median(old_repeat),
        "keyed complete 50": keyed["complete"],
        "unkeyed complete 50": plain["complete"],
    }


def point_move(conn: psycopg.Connection[Any], function: str) -> None:
    """runs_to_history (0030's trigger, same definition) calling ``function``."""
    conn.execute(
        "CREATE OR REPLACE TRIGGER runs_to_history AFTER UPDATE ON pgsched.runs REFERENCING NEW TABLE AS new_runs"
        f" FOR EACH STATEMENT EXECUTE FUNCTION pgsched.{function}()".encode()
    )


def switch(conn: psycopg.Connection[Any], on: bool) -> None:
    """on: as shipped; off: main without keys (the key claim off, the move leaving keyed runs)."""
    conn.execute(f"ALTER TABLE pgsched.runs {'ENABLE' if on else 'DISABLE'} TRIGGER runs_unique_key".encode())
    point_move(conn, "runs_to_history_v3" if on else "runs_to_history_v2")


def keyed_move(conn: psycopg.Connection[Any], v3: bool) -> None:
    """v3: as shipped; row: v2 for runs without a key and the row trigger for those with one."""
    point_move(conn, "runs_to_history_v3" if v3 else "runs_to_history_v2")
    conn.execute(f"ALTER TABLE pgsched.runs {'DISABLE' if v3 else 'ENABLE'} TRIGGER runs_to_history_keyed".encode())


def compare(samples: dict[bool, list[dict[str, float]]], what: str) -> tuple[float, float, list[float]]:
    """Medians of both sides and the quartiles of the per-block ratios (True over False)."""
    off = statistics.median(s[what] for s in samples[False])
    on = statistics.median(s[what] for s in samples[True])
    pairs = [
        statistics.median(s[what] for s in samples[True][b : b + BLOCK])
        / statistics.median(s[what] for s in samples[False][b : b + BLOCK])
        for b in range(0, len(samples[True]), BLOCK)
    ]
    q = statistics.quantiles(pairs, n=4) if len(pairs) > 1 else [pairs[0]] * 3
    return off, on, q


def blocks(
    rounds: int, run: Callable[[], dict[str, float]], warm: Callable[[bool], None]
) -> dict[bool, list[dict[str, float]]]:
    """``rounds`` per side, in blocks of BLOCK that alternate on and off."""
    samples: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    for i in range(2 * rounds):
        on = (i // BLOCK) % 2 == 0
        if i % BLOCK == 0:
            warm(on)
        samples[on].append(run())
    return samples


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=60, help="rounds per side")
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        # Each statement commits on its own: a WAL flush (the same on both sides) would hide
        # what the statements themselves cost.
        conn.execute("SET synchronous_commit = off")
        add_finished_runs(conn, 100_000)  # a history, as a live installation has
        worker_id = conn.execute(
            "INSERT INTO pgsched.workers (host, pid, queues, concurrency) VALUES ('b', 1, '{default}', 50) RETURNING id"
        ).fetchone()[0]  # type: ignore[index]

        def warm(on: bool) -> None:
            switch(conn, on)
            for _ in range(2):  # replanned and warmed outside the samples
                hot_round(conn, worker_id)

        hot = blocks(args.rounds, lambda: hot_round(conn, worker_id), warm)
        switch(conn, True)
        conn.execute(ROW_TRIGGER.encode())
        moved_key = f"moved-{uuid.uuid4().hex[:8]}"
        conn.execute(queries["run_insert_unique"], keyed_params(moved_key))
        conn.execute(
            "UPDATE pgsched.runs SET status = 'cancelled', finished_at = now() WHERE unique_key = %s", [moved_key]
        )

        def warm_keyed(v3: bool) -> None:
            keyed_move(conn, v3)
            keyed_round(conn, worker_id, moved_key)  # replanned and warmed outside the samples

        keyed = blocks(max(args.rounds // 2, 2 * BLOCK), lambda: keyed_round(conn, worker_id, moved_key), warm_keyed)
        keyed_move(conn, True)
        load = open("/proc/loadavg").read().split()[:3]
        print(f"{args.rounds} rounds per side in blocks of {BLOCK}, 100,000 runs in the history, load {' '.join(load)}")
        print("runs without a key      median us, main (off)   shipped   ratio   (quartiles of on/off by block)")
        for what in ("insert", "copy", "claim", "heartbeat", "complete"):
            off, on, q = compare(hot, what)
            print(f"{what:22}  {off:20.0f}  {on:8.0f}   {on / off:5.2f}x   ({q[0]:.2f}-{q[2]:.2f})")
        print(f"runs with a key, {len(keyed[True])} rounds a side   median us, row trigger   v3   ratio   (quartiles)")
        for what in keyed[True][0]:
            row, v3, q = compare(keyed, what)
            print(f"{what:38}  {row:8.0f}  {v3:8.0f}   {v3 / row:5.2f}x   ({q[0]:.2f}-{q[2]:.2f})")


if __name__ == "__main__":
    main()

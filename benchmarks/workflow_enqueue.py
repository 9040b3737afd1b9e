"""One side of ``python -m benchmarks.workflows --enqueue-against REF``: enqueue a chord, a
chain and ``enqueue_many`` of ``steps`` each, ``reps`` times in alternating order, with
whichever pgsched is first on the path (this checkout's, or REF's exported tree), and print one
JSON object: per shape the wall-clock seconds of each repetition and the CPU seconds of all of
them (this process's plus the database's client backends', from /proc: the server is local).

    python benchmarks/workflow_enqueue.py DSN STEPS REPS

Run as a file, not a module, so that REF's tree (which may not have this file) can run it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psycopg

from benchmarks.bench_app import App
from pgsched import chain, chord


def server_cpu_s(conn: psycopg.Connection[Any]) -> float:
    total = 0
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
    )
    for (pid,) in rows:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> None:
    dsn, steps, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    app = App(dsn)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="collect")
    async def collect(values: list[Any]) -> int:
        return len(values)

    shapes: dict[str, Callable[[], Any]] = {
        "enqueue_many": lambda: app.enqueue_many("noop", [{}] * steps),
        "chord": lambda: chord([noop.s() for _ in range(steps - 1)], collect.s()).enqueue(),
        "chain": lambda: chain(*(noop.si() for _ in range(steps))).enqueue(),
    }
    out: dict[str, dict[str, Any]] = {name: {"wall": [], "cpu": 0.0} for name in shapes}
    with psycopg.connect(dsn, autocommit=True) as conn:
        app.enqueue_many("noop", [{}])  # open the pool outside the timing
        for rep in range(reps * 2):
            for name in list(shapes) if rep % 2 == 0 else list(reversed(shapes)):
                conn.execute("TRUNCATE pgsched.runs, pgsched.run_edges, pgsched.workflows")
                server, client, start = server_cpu_s(conn), time.process_time(), time.perf_counter()
                shapes[name]()
                out[name]["wall"].append(time.perf_counter() - start)
                out[name]["cpu"] += time.process_time() - client + server_cpu_s(conn) - server
    app.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

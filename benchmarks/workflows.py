"""What workflows (issue #15) cost and how fast they move, against plain runs measured in the same run.

    python -m benchmarks.workflows [--steps 10000] [--chain 1000] [--reps 3] [--before main] [--dsn SERVER_DSN]
    python -m benchmarks.workflows --enqueue-against main [--rounds 4] [--steps 10000] [--reps 3]

(a) chord: ``--steps`` no-op header steps and one callback, drained by one `pgsched worker`
    (first start to the callback's end, database clock), against a drain of as many plain
    no-op runs; the callback must have run exactly once, with every header result.
(b) chain of ``--chain`` no-op steps, one idle worker: from a parent's finished_at to its
    child's started_at (both the database's clock), p50 and p99.
(c) enqueue: a workflow of ``--steps`` steps (a chord: steps - 1 in the header, and a chain),
    built and written by the Python API, against ``enqueue_many`` of as many runs: wall-clock
    medians, and CPU time (this process and the server's backends, from /proc) summed.
(d) the plain drain before (git ref --before, on a database it migrated itself) and after this
    checkout's migrations and code; and, since drains on a shared machine vary ±30 %, the
    completion statement alone (``run_complete_many`` of 100 running runs, rolled back) on
    both schemas, timed by the server (EXPLAIN ANALYZE's execution time, trigger time included).

Rounds alternate their order; figures are medians. The last line printed is one JSON object.

``--enqueue-against REF`` measures (c) alone, for this checkout and for REF (its exported tree,
its own migrations), each in its own process and database, rounds alternating: the enqueue
ratios before and after a change, from the same run (benchmarks/workflow_enqueue.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.queue_settings import export_tree, migrate_with
from benchmarks.throughput import ROOT, drain, start_worker, stop_worker, wait_until
from pgsched.sql import queries

BENCH_APP = "benchmarks.bench_app:app"


def _app(dsn: str) -> Any:
    from benchmarks.bench_app import App

    app = App(dsn)

    @app.task(name="noop")
    async def noop() -> None:
        return None

    @app.task(name="collect")
    async def collect(values: list[Any]) -> int:
        return len(values)

    return app


def chord_drain(dsn: str, steps: int) -> float:
    """Header steps/s: first header start to the callback's end; checks the callback ran once."""
    from pgsched import chord

    app = _app(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs, pgsched.run_edges, pgsched.workflows")
        handle = chord([app.tasks["noop"].s() for _ in range(steps)], app.tasks["collect"].s()).enqueue()
        app.close()
        callback = handle.run_ids[-1]
        worker = start_worker(dsn)
        try:
            wait_until(conn, f"SELECT status = 'succeeded' FROM pgsched.runs WHERE id = {int(callback)}", 600)
        finally:
            stop_worker(worker)
        first, last, attempt, result = conn.execute(
            "SELECT (SELECT min(started_at) FROM pgsched.runs), finished_at, attempt, result FROM pgsched.runs"
            " WHERE id = %s",
            (callback,),
        ).fetchone()  # type: ignore[misc]
    assert (attempt, result) == (1, steps), f"the callback ran {attempt} time(s) with {result!r}"
    return steps / (last - first).total_seconds()


def chain_latency(dsn: str, length: int) -> list[float]:
    """Milliseconds from each parent's end to its child's start, one idle worker."""
    from pgsched import chain

    app = _app(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs, pgsched.run_edges, pgsched.workflows")
        worker = start_worker(dsn)
        try:
            wait_until(conn, "SELECT count(*) > 0 FROM pgsched.workers", 30)
            noop = app.tasks["noop"]
            handle = chain(*(noop.si() for _ in range(length))).enqueue()
            app.close()
            last = handle.run_ids[-1]
            wait_until(conn, f"SELECT status = 'succeeded' FROM pgsched.runs WHERE id = {int(last)}", 600)
        finally:
            stop_worker(worker)
        rows = conn.execute(
            "SELECT extract(epoch FROM c.started_at - p.finished_at) * 1000 FROM pgsched.run_edges e"
            " JOIN pgsched.runs p ON p.id = e.parent JOIN pgsched.runs c ON c.id = e.child"
        ).fetchall()
    return sorted(float(row[0]) for row in rows)


def _server_cpu_s(conn: psycopg.Connection[Any]) -> float | None:
    """CPU seconds (user + system) of this database's backends so far, from /proc: the server
    is on this machine (the embedded one). None when it is not."""
    total = 0
    for (pid,) in conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend'"
    ):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def enqueue_times(dsn: str, steps: int, reps: int) -> dict[str, dict[str, Any]]:
    """Seconds to enqueue ``steps`` plain runs (enqueue_many) and a workflow of as many steps:
    wall-clock per repetition, and CPU summed over the repetitions (this process's plus the
    server backends'), which a machine shared with other work disturbs much less."""
    from pgsched import chain, chord

    app = _app(dsn)
    noop, collect = app.tasks["noop"], app.tasks["collect"]
    shapes = {
        "enqueue_many": lambda: app.enqueue_many("noop", [{}] * steps),
        "chord": lambda: chord([noop.s() for _ in range(steps - 1)], collect.s()).enqueue(),
        "chain": lambda: chain(*(noop.si() for _ in range(steps))).enqueue(),
    }
    times: dict[str, dict[str, Any]] = {name: {"wall": [], "cpu": 0.0} for name in shapes}
    with psycopg.connect(dsn, autocommit=True) as conn:
        app.enqueue_many("noop", [{}])  # open the pool outside the timing
        for rep in range(reps * 2):
            order = list(shapes) if rep % 2 == 0 else list(reversed(shapes))
            for name in order:
                conn.execute("TRUNCATE pgsched.runs, pgsched.run_edges, pgsched.workflows")
                server, client, start = _server_cpu_s(conn), time.process_time(), time.perf_counter()
                shapes[name]()
                times[name]["wall"].append(time.perf_counter() - start)
                server_after = _server_cpu_s(conn)
                if server is None or server_after is None or times[name]["cpu"] is None:
                    times[name]["cpu"] = None
                else:
                    times[name]["cpu"] += time.process_time() - client + server_after - server
    app.close()
    return times


def completion_ms(dsn: str, batch: int = 100, blocks: int = 30, *, chord_header: bool = False) -> list[float]:
    """Server milliseconds of run_complete_many for ``batch`` running runs (each rolled back):
    plain runs, or (``chord_header``) header steps of one chord of 20 x ``batch``."""
    explain = f"EXPLAIN (ANALYZE, FORMAT JSON) {queries['run_complete_many']}".encode()
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs")
        if chord_header:
            from pgsched import chord

            conn.execute("TRUNCATE pgsched.run_edges, pgsched.workflows")
            app = _app(dsn)
            handle = chord([app.tasks["noop"].s() for _ in range(20 * batch)], app.tasks["collect"].s()).enqueue()
            app.close()
            ids = handle.run_ids[:batch]
        else:
            ids = [
                row[0]
                for row in conn.execute(
                    "INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, %s) RETURNING id", (batch,)
                )
            ]
        conn.execute(
            "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1, started_at = now(),"
            " lease_expires_at = now() + interval '1 hour' WHERE id = ANY(%s)",
            (ids,),
        )
        conn.execute("VACUUM ANALYZE pgsched.runs")
        params = {
            "worker_id": 1,
            "ids": ids,
            "attempts": [1] * batch,
            "statuses": ["succeeded"] * batch,
            "results": ["null"] * batch,
            "errors": [None] * batch,
            "retry_delays_s": [0.0] * batch,
        }
        for _ in range(blocks):
            conn.execute("BEGIN")
            plan = conn.execute(explain, params).fetchone()[0][0]  # type: ignore[index]
            conn.execute("ROLLBACK")
            samples.append(plan["Execution Time"])  # includes the AFTER triggers (ExecutorFinish)
    return samples


def enqueue_against(ref: str, rounds: int, steps: int, reps: int, server_option: str | None) -> None:
    """(c) for this checkout and ``ref`` alternately; prints each side's ratios to enqueue_many."""
    script = ROOT / "benchmarks" / "workflow_enqueue.py"
    with server_dsn(server_option) as server, ExitStack() as stack:
        tree = export_tree(ref, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        databases = {ref: stack.enter_context(fresh_database(server, with_schema=False)), "this checkout": ""}
        migrate_with(tree, databases[ref])
        databases["this checkout"] = stack.enter_context(fresh_database(server))
        roots = {ref: tree, "this checkout": ROOT}
        runs: dict[str, list[dict[str, Any]]] = {side: [] for side in roots}
        for round_ in range(rounds):
            for side in list(roots) if round_ % 2 == 0 else list(reversed(roots)):
                env = {**os.environ, "PYTHONPATH": str(roots[side])}
                done = subprocess.run(
                    [sys.executable, str(script), databases[side], str(steps), str(reps)],
                    cwd=roots[side],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
        for side, results in runs.items():
            base_wall = statistics.median(statistics.median(r["enqueue_many"]["wall"]) for r in results)
            for shape in ("chord", "chain"):
                walls = [
                    statistics.median(r[shape]["wall"]) / statistics.median(r["enqueue_many"]["wall"]) for r in results
                ]
                cpu = sum(r[shape]["cpu"] for r in results) / sum(r["enqueue_many"]["cpu"] for r in results)
                print(
                    f"(c) {side}: a {steps:,}-step {shape} takes CPU {cpu:.2f}x, wall {statistics.median(walls):.2f}x"
                    f" (rounds {', '.join(f'{w:.2f}' for w in walls)}) enqueue_many ({base_wall * 1000:.0f} ms)"
                )
        print(json.dumps(runs))


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--chain", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--before", default="main", help="The git ref before workflows (default: main)")
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    parser.add_argument("--enqueue-against", metavar="REF", help="Only (c), for this checkout and REF alternately")
    parser.add_argument("--rounds", type=int, default=4, help="Rounds of --enqueue-against (default 4)")
    options = parser.parse_args()
    if options.enqueue_against:
        enqueue_against(options.enqueue_against, options.rounds, options.steps, options.reps, options.dsn)
        return
    out: dict[str, Any] = {"steps": options.steps, "chain": options.chain, "reps": options.reps}
    with server_dsn(options.dsn) as server, ExitStack() as stack:
        before_tree = export_tree(options.before, Path(stack.enter_context(tempfile.TemporaryDirectory())))
        before_db = stack.enter_context(fresh_database(server, with_schema=False))
        migrate_with(before_tree, before_db)
        after_db = stack.enter_context(fresh_database(server))

        # (a) chord against a plain drain of as many runs, alternately
        chord_rates, plain_rates = [], []
        for rep in range(options.reps):
            for side in ("plain", "chord") if rep % 2 == 0 else ("chord", "plain"):
                if side == "plain":
                    plain_rates.append(drain(after_db, options.steps))
                else:
                    chord_rates.append(chord_drain(after_db, options.steps))
            print(f"chord rep {rep + 1}: chord {chord_rates[-1]:,.0f}/s, plain {plain_rates[-1]:,.0f}/s", flush=True)
        ratios = [p / c for p, c in zip(plain_rates, chord_rates)]
        out["chord"] = {"chord_per_s": chord_rates, "plain_per_s": plain_rates, "time_ratio": ratios}
        print(f"(a) chord of {options.steps:,}: takes {statistics.median(ratios):.2f}x a plain drain (target <= 1.3x)")
        header, plain = completion_ms(after_db, chord_header=True), completion_ms(after_db)
        out["chord"]["complete_many_ms"] = {"header": header, "plain": plain}
        print(
            f"(a) run_complete_many of 100, server ms median: chord header steps {statistics.median(header):.3f},"
            f" plain runs {statistics.median(plain):.3f}: {statistics.median(header) / statistics.median(plain):.2f}x"
        )

        # (b) chain latency
        latencies = chain_latency(after_db, options.chain)
        out["chain_ms"] = {"p50": _pct(latencies, 0.5), "p99": _pct(latencies, 0.99), "max": latencies[-1]}
        print(
            f"(b) chain of {options.chain:,}: parent end -> child start p50 {out['chain_ms']['p50']:.2f} ms,"
            f" p99 {out['chain_ms']['p99']:.2f} ms (targets 2 and 10)"
        )

        # (c) enqueue
        times = enqueue_times(after_db, options.steps, options.reps)
        base = statistics.median(times["enqueue_many"]["wall"])
        base_cpu = times["enqueue_many"]["cpu"]
        out["enqueue_s"] = times
        for shape in ("chord", "chain"):
            wall = statistics.median(times[shape]["wall"])
            cpu = f", CPU {times[shape]['cpu'] / base_cpu:.2f}x" if base_cpu and times[shape]["cpu"] else ""
            print(
                f"(c) enqueue a {options.steps:,}-step {shape}: {wall * 1000:.0f} ms, {wall / base:.2f}x"
                f" enqueue_many ({base * 1000:.0f} ms){cpu} (target <= 2x)"
            )

        # (d) the plain drain and the completion statement, before and after
        drains: dict[str, list[float]] = {"before": [], "after": []}
        trees = {"before": before_tree, "after": ROOT}
        databases = {"before": before_db, "after": after_db}
        for rep in range(options.reps):
            for side in ("before", "after") if rep % 2 == 0 else ("after", "before"):
                drains[side].append(drain(databases[side], options.steps * 2, root=trees[side]))
        drain_ratio = statistics.median(drains["after"]) / statistics.median(drains["before"])
        completions = {side: completion_ms(databases[side]) for side in ("before", "after")}
        server_ratio = statistics.median(completions["before"]) / statistics.median(completions["after"])
        out["drain_per_s"] = drains
        out["complete_many_ms"] = completions
        print(
            f"(d) plain drain: after/before {drain_ratio:.2f}x (median {statistics.median(drains['after']):,.0f}"
            f" vs {statistics.median(drains['before']):,.0f}/s); run_complete_many of 100, server ms median"
            f" {statistics.median(completions['before']):.3f} before, {statistics.median(completions['after']):.3f}"
            f" after: {server_ratio:.2f}x the speed (target >= 0.95x)"
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""What does one enqueue cost, against the raw INSERT + commit it wraps? Issue 18's first item.

    python -m benchmarks.enqueue [--calls 2000] [--rounds 5] [--baseline-tree DIR] [--dsn SERVER_DSN]

One run per call, one caller, each call its own transaction (autocommit), as a web request
makes it. Paths: ``App.enqueue``, ``Task.enqueue`` and their asyncio twins
``App.enqueue_async`` / ``Task.enqueue_async`` (pooled connections, as an application uses
them), and the raw baseline of benchmarks/peers.py: psycopg's one-row ``INSERT ... RETURNING
id`` on one held connection, on pgsched's table without its trigger (in a database of its own
on the same server). Per path: the wall time of a call and the client's CPU time per call
(``time.process_time``: it holds on a shared machine, where the wall clock is noise). The raw
statement also runs on pgsched's own table, with its trigger (the insert check and the
NOTIFY): the difference is what the database adds to every enqueue, whatever the client.

``--baseline-tree`` (a checkout of another commit, e.g. ``git worktree add /tmp/base main``)
runs the same pgsched paths with that tree's pgsched, in the same run: before/after.
Each tree's paths run in a client process of their own; rounds interleave every path of every
tree, and a figure is the median over rounds. A throwaway embedded PostgreSQL (fsync and
synchronous_commit on) unless --dsn names a server. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
PATHS = ("App.enqueue", "Task.enqueue", "App.enqueue_async", "Task.enqueue_async")
RAW = "raw INSERT + commit"
# The same statement on pgsched's table with its trigger (the check and the NOTIFY): what
# the database adds, apart from pgsched's Python.
RAW_TRIGGER = "raw INSERT + commit, with trigger"
RAW_SQL = "INSERT INTO pgsched.runs (task, args) VALUES (%s, %s) RETURNING id"
WARMUP = 50


# ---- the client: one process per tree, answering one JSON command per line


class Client:
    def __init__(self, dsn: str, raw_dsn: str) -> None:
        import psycopg
        from psycopg.types.json import Jsonb

        from pgsched import App

        self.app = App(dsn)

        @self.app.task
        def noop() -> None:
            pass

        self.noop = noop
        self.raw = psycopg.connect(raw_dsn, autocommit=True)
        self.raw_trigger = psycopg.connect(dsn, autocommit=True)
        self.jsonb = Jsonb
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        self.loop.run_until_complete(self.app.aclose())
        self.app.close()
        self.raw.close()
        self.raw_trigger.close()

    def hello(self) -> dict[str, Any]:
        import pgsched

        return {"pgsched": str(Path(pgsched.__file__).parent)}

    def measure(self, path: str, n: int) -> dict[str, Any]:
        if path.endswith("_async"):
            return self.loop.run_until_complete(self._measure_async(path, n))
        call: Callable[[], object] = {
            "App.enqueue": lambda: self.app.enqueue("noop", {}),
            "Task.enqueue": lambda: self.noop.enqueue(),
            RAW: lambda: self.raw.execute(RAW_SQL, ("noop", self.jsonb({}))).fetchone(),
            RAW_TRIGGER: lambda: self.raw_trigger.execute(RAW_SQL, ("noop", self.jsonb({}))).fetchone(),
        }[path]
        for _ in range(WARMUP):
            call()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            call()
        return {"wall_us": (time.perf_counter() - wall) / n * 1e6, "cpu_us": (time.process_time() - cpu) / n * 1e6}

    async def _measure_async(self, path: str, n: int) -> dict[str, Any]:
        async def call() -> None:
            if path == "App.enqueue_async":
                await self.app.enqueue_async("noop", {})
            else:
                await self.noop.enqueue_async()

        for _ in range(WARMUP):
            await call()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await call()
        return {"wall_us": (time.perf_counter() - wall) / n * 1e6, "cpu_us": (time.process_time() - cpu) / n * 1e6}


def serve_client() -> None:
    client = Client(os.environ["BENCH_DSN"], os.environ["BENCH_RAW_DSN"])
    for line in sys.stdin:
        request = json.loads(line)
        answer = getattr(client, request.pop("cmd"))(**request)
        print(json.dumps(answer), flush=True)
    client.close()


class ClientProcess:
    def __init__(self, tree: Path, dsn: str, raw_dsn: str) -> None:
        # The client runs as a file, with the tree first on the path: its pgsched is the one imported.
        env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_DSN": dsn, "BENCH_RAW_DSN": raw_dsn}
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "client"],
            env=env,
            cwd=tree,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the client exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(30)


# ---- the orchestrator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout: its pgsched is measured as 'before'")
    parser.add_argument("--dsn", help="a server to create the benchmark databases on (default: embedded)")
    return parser.parse_args()


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    args = parse_args()
    trees = {"after": ROOT} | ({"before": args.baseline_tree.resolve()} if args.baseline_tree else {})
    samples: dict[str, list[dict[str, float]]] = {}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn, fresh_database(server) as raw_dsn:
        import psycopg

        with psycopg.connect(raw_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        clients = {name: ClientProcess(tree, dsn, raw_dsn) for name, tree in trees.items()}
        try:
            for name, client in clients.items():
                print(f"{name}: pgsched from {client.call('hello')['pgsched']}", flush=True)
            sides = [("after", RAW), ("after", RAW_TRIGGER)] + [(name, path) for name in clients for path in PATHS]
            for round_number in range(args.rounds):
                order = sides[round_number % len(sides) :] + sides[: round_number % len(sides)]
                for name, path in order:
                    answer = clients[name].call("measure", path=path, n=args.calls)
                    label = path if path.startswith(RAW) else f"{path} ({name})"
                    samples.setdefault(label, []).append(answer)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute("TRUNCATE pgsched.runs")
                with psycopg.connect(raw_dsn, autocommit=True) as conn:
                    conn.execute("TRUNCATE pgsched.runs")
                print(f"round {round_number + 1}/{args.rounds} done", flush=True)
        finally:
            for client in clients.values():
                client.close()
    report(samples, args)


def report(samples: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    figures = {
        label: {key: round(statistics.median(s[key] for s in rows), 1) for key in ("wall_us", "cpu_us")}
        for label, rows in samples.items()
    }
    raw = figures[RAW]
    print(f"\none enqueue per call, {args.calls:,} calls x {args.rounds} rounds (medians); ratio = raw's wall / path's")
    print(f"{'path':34s} {'wall us':>8s} {'runs/s':>8s} {'vs raw':>7s} {'CPU us':>7s}")
    for label, f in figures.items():
        f["per_s"] = round(1e6 / f["wall_us"])
        f["vs_raw"] = round(raw["wall_us"] / f["wall_us"], 3)
        print(f"{label:34s} {f['wall_us']:8.1f} {f['per_s']:8,d} {f['vs_raw']:7.2f} {f['cpu_us']:7.1f}")
    print(json.dumps({"benchmark": "enqueue", "calls": args.calls, "rounds": args.rounds, "figures": figures}))


if __name__ == "__main__":
    if sys.argv[1:] == ["client"]:
        serve_client()
    else:
        main()

"""What does one enqueue cost, against the raw INSERT + commit it wraps? Issue 18's first item.

    python -m benchmarks.enqueue [--calls 2000] [--rounds 5] [--baseline-tree DIR] [--dsn SERVER_DSN]
                                 [--pgqueuer-python PYTHON] [--synchronous-commit off]

One run per call, one caller, each call its own transaction (autocommit), as a web request
makes it. Paths: ``App.enqueue``, ``Task.enqueue`` and their asyncio twins
``App.enqueue_async`` / ``Task.enqueue_async`` (pooled connections, as an application uses
them), and the raw baseline of benchmarks/peers.py: psycopg's one-row ``INSERT ... RETURNING
id`` on one held connection, on pgsched's table without its trigger (in a database of its own
on the same server). Per path: the wall time of a call and the client's CPU time per call
(``time.process_time``: it holds on a shared machine, where the wall clock is noise). The raw
statement also runs on pgsched's own table, with its trigger (the insert check and the
NOTIFY): the difference is what the database adds to every enqueue, whatever the client.

Besides the client's CPU, the server's: the CPU time of the backends serving the path's calls
(``/proc/PID/schedstat`` of every backend of the benchmark's databases, read before and after
each path's calls; on this machine the commit's fsync decides the wall time, so the two CPU
figures are what pgsched's own code changes). ``--pgqueuer-python`` (default: the PgQueuer venv
``benchmarks.peers`` keeps, when it is there) adds PgQueuer's single enqueue
(``Queries.enqueue`` on one asyncpg connection, as benchmarks/peers_drivers/pgqueuer.py calls
it) in a database of its own on the same server, in the same rounds.

``--baseline-tree`` (a checkout of another commit, e.g. ``git worktree add /tmp/base main``)
runs the same pgsched paths with that tree's pgsched, on a database that tree's migrations
built (its insert trigger included), in the same run: before/after.
Each tree's paths run in a client process of their own; rounds interleave every path of every
tree, and a figure is the median over rounds. A throwaway embedded PostgreSQL (fsync and
synchronous_commit on) unless --dsn names a server. ``--synchronous-commit off`` sets it off for
the benchmark's databases: the wall clock then shows what a call costs besides the commit's WAL
flush (not a durable enqueue; benchmarks.enqueue_costs compares both). The last line is one
JSON object.
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
PGQUEUER = "PgQueuer Queries.enqueue"
PGQUEUER_PYTHON = Path("/tmp/pgsched-peers/venvs/pgqueuer/bin/python")
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


class PgQueuerClient:
    """PgQueuer's single enqueue, run by the python of a venv that has it (asyncpg driver)."""

    def __init__(self, dsn: str) -> None:
        import asyncpg
        from pgqueuer import Queries
        from pgqueuer.db import AsyncpgDriver

        self.loop = asyncio.new_event_loop()
        self.conn = self.loop.run_until_complete(asyncpg.connect(dsn))
        self.queries = Queries(AsyncpgDriver(self.conn))
        self.loop.run_until_complete(self.queries.install())

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())

    def hello(self) -> dict[str, Any]:
        from importlib.metadata import version

        return {"pgsched": f"pgqueuer {version('pgqueuer')}"}

    def measure(self, path: str, n: int) -> dict[str, Any]:
        return self.loop.run_until_complete(self._measure(n))

    async def _measure(self, n: int) -> dict[str, Any]:
        for _ in range(WARMUP):
            await self.queries.enqueue("noop", None)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            await self.queries.enqueue("noop", None)
        return {"wall_us": (time.perf_counter() - wall) / n * 1e6, "cpu_us": (time.process_time() - cpu) / n * 1e6}


def serve_client() -> None:
    client: Client | PgQueuerClient
    if os.environ.get("BENCH_PGQUEUER"):
        client = PgQueuerClient(os.environ["BENCH_DSN"])
    else:
        client = Client(os.environ["BENCH_DSN"], os.environ["BENCH_RAW_DSN"])
    for line in sys.stdin:
        request = json.loads(line)
        answer = getattr(client, request.pop("cmd"))(**request)
        print(json.dumps(answer), flush=True)
    client.close()


class ClientProcess:
    def __init__(self, tree: Path, dsn: str, raw_dsn: str, python: str = sys.executable, **env_extra: str) -> None:
        # The client runs as a file, with the tree first on the path: its pgsched is the one imported.
        env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_DSN": dsn, "BENCH_RAW_DSN": raw_dsn, **env_extra}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "client"],
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


def add_pgqueuer_python(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pgqueuer-python",
        type=Path,
        default=PGQUEUER_PYTHON if PGQUEUER_PYTHON.exists() else None,
        help="a python with pgqueuer[asyncpg] installed: adds PgQueuer's single enqueue (default: peers' venv)",
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="calls per path and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout: its pgsched is measured as 'before'")
    parser.add_argument("--dsn", help="a server to create the benchmark databases on (default: embedded)")
    add_pgqueuer_python(parser)
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        default="on",
        help="off: the benchmark's databases commit without waiting for the WAL flush, so the wall "
        "clock shows the rest of a call (on a loaded disk the flush is most of it); not a durable enqueue",
    )
    return parser.parse_args()


def set_synchronous_commit(server: str, dsns: list[str], mode: str) -> None:
    """Each database's default (its sessions' setting from their next connection on)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    with psycopg.connect(server, autocommit=True) as conn:
        for dsn in dsns:
            name = sql.Identifier(str(conninfo_to_dict(dsn)["dbname"]))
            conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = {}").format(name, sql.Literal(mode)))


def migrate_with(tree: Path, dsn: str) -> None:
    """Migrate ``dsn`` with ``tree``'s migrations (its schema, triggers included, is measured)."""
    code = "import os, psycopg\nfrom pgsched.migrate import migrate\n"
    code += "with psycopg.connect(os.environ['BENCH_DSN'], autocommit=True) as conn:\n    migrate(conn)\n"
    env = {**os.environ, "PYTHONPATH": str(tree), "BENCH_DSN": dsn}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, check=True)


def as_url(dsn: str) -> str:
    """A libpq DSN as the postgresql:// URL asyncpg takes."""
    from urllib.parse import urlencode

    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(dsn)
    return f"postgresql:///{params.pop('dbname')}?{urlencode({k: str(v) for k, v in params.items()})}"


def backend_cpu_ns(conn: Any, databases: list[str]) -> dict[int, int] | None:
    """CPU time so far of each backend of ``databases`` (None: a server whose processes this
    machine cannot see). Only this run's databases: other benchmarks may share the server."""
    pids = [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()", (databases,)
        )
    ]
    times = {}
    for pid in pids:
        try:
            times[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
    return times


def cpu_between(before: dict[int, int] | None, after: dict[int, int] | None) -> float | None:
    """ns of CPU the backends alive at both readings used between them."""
    if before is None or after is None:
        return None
    return float(sum(after[pid] - before[pid] for pid in before.keys() & after.keys()))


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    args = parse_args()
    trees = {"after": ROOT} | ({"before": args.baseline_tree.resolve()} if args.baseline_tree else {})
    samples: dict[str, list[dict[str, float]]] = {}
    from psycopg.conninfo import conninfo_to_dict

    with (
        server_dsn(args.dsn) as server,
        fresh_database(server) as dsn,
        fresh_database(server) as raw_dsn,
        fresh_database(server, with_schema=False) as pgq_dsn,
        fresh_database(server, with_schema=False) as before_dsn,
    ):
        import psycopg

        set_synchronous_commit(server, [dsn, raw_dsn, pgq_dsn, before_dsn], args.synchronous_commit)
        with psycopg.connect(raw_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        if args.baseline_tree:  # the baseline's pgsched on a database its own migrations built
            migrate_with(trees["before"], before_dsn)
        clients = {
            name: ClientProcess(tree, dsn if name == "after" else before_dsn, raw_dsn) for name, tree in trees.items()
        }
        sides = [("after", RAW), ("after", RAW_TRIGGER)] + [(name, path) for name in clients for path in PATHS]
        if args.pgqueuer_python:
            clients[PGQUEUER] = ClientProcess(ROOT, as_url(pgq_dsn), "", str(args.pgqueuer_python), BENCH_PGQUEUER="1")
            sides.append((PGQUEUER, PGQUEUER))
        try:
            for name, client in clients.items():
                print(f"{name}: pgsched from {client.call('hello')['pgsched']}", flush=True)
            databases = [conninfo_to_dict(each)["dbname"] for each in (dsn, raw_dsn, pgq_dsn, before_dsn)]
            with psycopg.connect(server, autocommit=True) as watcher:
                for round_number in range(args.rounds):
                    order = sides[round_number % len(sides) :] + sides[: round_number % len(sides)]
                    for name, path in order:
                        before = backend_cpu_ns(watcher, databases)
                        answer = clients[name].call("measure", path=path, n=args.calls)
                        used = cpu_between(before, backend_cpu_ns(watcher, databases))
                        if used is not None:
                            answer["server_cpu_us"] = used / 1e3 / (args.calls + WARMUP)
                        label = path if path.startswith(RAW) or path == PGQUEUER else f"{path} ({name})"
                        samples.setdefault(label, []).append(answer)
                    for each in (dsn, raw_dsn) + ((before_dsn,) if args.baseline_tree else ()):
                        with psycopg.connect(each, autocommit=True) as conn:
                            conn.execute("TRUNCATE pgsched.runs")
                    print(f"round {round_number + 1}/{args.rounds} done", flush=True)
        finally:
            for client in clients.values():
                client.close()
    report(samples, args)


def report(samples: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    figures = {
        label: {
            key: round(statistics.median(s[key] for s in rows), 1)
            for key in ("wall_us", "cpu_us", "server_cpu_us")
            if all(key in s for s in rows)
        }
        for label, rows in samples.items()
    }
    raw = figures[RAW]
    pgq = figures.get(PGQUEUER)
    print(
        f"\none enqueue per call, {args.calls:,} calls x {args.rounds} rounds (medians), synchronous_commit "
        f"{args.synchronous_commit}; ratio = the other's wall / path's"
    )
    print(
        f"{'path':34s} {'wall us':>8s} {'runs/s':>8s} {'vs raw':>7s} {'vs PgQ':>7s} {'CPU us':>7s} {'server':>7s}"
        f" {'both':>7s}"
    )
    for label, f in figures.items():
        f["per_s"] = round(1e6 / f["wall_us"])
        f["vs_raw"] = round(raw["wall_us"] / f["wall_us"], 3)
        f["vs_pgqueuer"] = round(pgq["wall_us"] / f["wall_us"], 3) if pgq else float("nan")
        server = f.get("server_cpu_us", float("nan"))
        print(
            f"{label:34s} {f['wall_us']:8.1f} {f['per_s']:8,d} {f['vs_raw']:7.2f} {f['vs_pgqueuer']:7.2f}"
            f" {f['cpu_us']:7.1f} {server:7.1f} {f['cpu_us'] + server:7.1f}"
        )
    print(
        json.dumps(
            {
                "benchmark": "enqueue",
                "calls": args.calls,
                "rounds": args.rounds,
                "synchronous_commit": args.synchronous_commit,
                "figures": figures,
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["client"]:
        serve_client()
    else:
        main()

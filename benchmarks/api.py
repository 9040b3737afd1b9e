"""What does the REST API cost over enqueuing from Python? POST /runs against App.enqueue.

    python -m benchmarks.api [--clients 16] [--requests 5000] [--rounds 3] [--api-workers 1,2]
                             [--quick] [--dsn SERVER_DSN]

Both sides queue the same no-op run, one call each, from the same number of concurrent
callers, into the same database (emptied before every measurement):
(a) direct: ``App.enqueue`` from ``--clients`` threads sharing one App (a pool of 10
    connections, as one API process has);
(b) API: ``--clients`` concurrent ``httpx.AsyncClient`` requests (keep-alive) to a real
    `pgsched api` (uvicorn) subprocess with 1 and with 2 worker processes, authenticated with a
    write key made by ``pgsched.api.keys``. Every response must be a 201.
(c) where ``wrk`` is installed (Debian's package: a C load generator, so the client costs the
    cores almost nothing): ``--clients`` keep-alive connections POSTing for ``--wrk-seconds``
    against the same servers, and the API processes' CPU time per request (utime + stime of
    the server and its worker processes, from /proc): issue 18's "API CPU per POST".
The servers log as deployed (``--log-level info``: the access log is on, to a file).
Measurements are interleaved (direct, then each API, once per round) so that load from other
programs drifting over the run hits every side alike; a side's runs/s is its median round.
A POST also reads the new run back for its response body (one more statement than an
enqueue), and the client, the server and PostgreSQL share the machine's cores: the ratio is what
the API hop costs on one machine, not an API's ceiling. A throwaway embedded PostgreSQL (fsync
and synchronous_commit on) unless --dsn names a server. The last line printed is one JSON object
with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Awaitable, Callable, Iterator

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import percentile, stop_worker
from pgsched import App
from pgsched.api import keys as api_keys
from pgsched.api.settings import ApiSettings

ROOT = Path(__file__).resolve().parent.parent
TASK = "noop"
RUN_BODY = {"task": TASK, "args": {}}
# Calls before the clock starts, per caller: pools grown, keys cached, connections kept alive.
WARMUP_PER_CLIENT = 10
READY_TIMEOUT_S = 60.0
# Settings that would change what is measured (a 429 from a rate limit, a Redis hop): not passed on.
API_ENV_LEFT_OUT = ("PGSCHED_API_RATE_LIMIT", "PGSCHED_REDIS_URL")
DIRECT = "direct"


@dataclass
class Side:
    """One way of enqueuing: its throughput in every round and every call's latency."""

    label: str
    processes: int
    per_s: list[float] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, requests: int, wall_s: float, latencies_ms: list[float]) -> None:
        self.per_s.append(requests / wall_s)
        self.latencies_ms.extend(latencies_ms)

    @property
    def median_per_s(self) -> float:
        return statistics.median(self.per_s)

    def summary(self) -> dict[str, object]:
        return {
            "per_s": round(self.median_per_s),
            "per_s_rounds": [round(x) for x in self.per_s],
            "p50_ms": round(percentile(self.latencies_ms, 50), 3),
            "p99_ms": round(percentile(self.latencies_ms, 99), 3),
        }


async def drive(clients: int, requests: int, call: Callable[[], Awaitable[None]]) -> tuple[float, list[float]]:
    """``requests`` calls from ``clients`` concurrent callers: (wall seconds, latency of each call in ms)."""
    tickets = itertools.count()
    latencies: list[float] = []

    async def caller() -> None:
        while next(tickets) < requests:
            start = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(clients)))
    return time.perf_counter() - start, latencies


async def warm_then_measure(
    clients: int, requests: int, call: Callable[[], Awaitable[None]]
) -> tuple[float, list[float]]:
    await drive(clients, clients * WARMUP_PER_CLIENT, call)
    return await drive(clients, requests, call)


def empty_runs(dsn: str) -> None:
    """Every measurement starts from an empty table, so none pays for another's index growth.
    The previous measurement's last requests land first: when wrk stops, the API still answers
    the ones it holds, and an insert waiting on TRUNCATE's lock would count in the next side."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        settled(conn)
        conn.execute("TRUNCATE pgsched.runs")
        conn.execute("VACUUM ANALYZE pgsched.runs")


def settled(conn: psycopg.Connection, quiet_s: float = 0.5, timeout_s: float = 30.0) -> None:
    """Wait until no run has been added for ``quiet_s`` seconds (at most ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        found = conn.execute("SELECT count(*) FROM pgsched.runs_all").fetchone()
        if found == seen:
            return
        seen = found
        time.sleep(quiet_s)


def check_all_queued(dsn: str, expected: int, label: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT count(*) FROM pgsched.runs_all").fetchone()[0]  # type: ignore[index]
    if found != expected:
        raise RuntimeError(f"{label}: {found} runs in the table, {expected} expected")


# ---- (a) direct: App.enqueue, one call each, from `clients` threads


def measure_direct(dsn: str, clients: int, requests: int) -> tuple[float, list[float]]:
    app = App(dsn, pool_max_size=ApiSettings.pool_max_size)
    try:
        with ThreadPoolExecutor(max_workers=clients, thread_name_prefix="enqueue") as threads:

            async def enqueue() -> None:
                await asyncio.get_running_loop().run_in_executor(threads, app.enqueue, TASK, {})

            return asyncio.run(warm_then_measure(clients, requests, enqueue))
    finally:
        app.close()


# ---- (b) POST /runs to a `pgsched api` subprocess


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def python_of(root: Path) -> str:
    """The interpreter that runs ``root``'s code. Another tree needs its own venv: with this
    one's (an editable install), PYTHONPATH=root finds root's ``pgsched`` package, but the
    editable install's finder still maps ``pgsched.cli`` and ``pgsched.schema`` (cli/ and
    schema/ in pyproject's package-dir) to this tree, so the baseline ran this tree's CLI and SQL."""
    if root.resolve() == ROOT:
        return sys.executable
    python = root / ".venv" / "bin" / "python"
    if not python.exists():
        raise SystemExit(
            f"--baseline-tree {root}: no {python}; make its own venv first: "
            f"cd {root} && python3 -m venv .venv && .venv/bin/pip install -e ."
        )
    check = (
        "import pgsched, pgsched.cli, pgsched.schema as s; print(pgsched.__file__, pgsched.cli.__file__, s.__file__)"
    )
    found = subprocess.run([python, "-c", check], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    strays = [path for path in found if not Path(path).resolve().is_relative_to(root.resolve())]
    if strays:
        raise SystemExit(f"--baseline-tree {root}: its venv imports {strays} from another tree: pip install -e {root}")
    return str(python)


def start_api(dsn: str, port: int, processes: int, log: IO[bytes], root: Path = ROOT) -> subprocess.Popen[bytes]:
    """`pgsched api` of the code under ``root`` (another tree, run by its own venv: the before
    of a before/after)."""
    env = {k: v for k, v in os.environ.items() if k not in API_ENV_LEFT_OUT} | {"PYTHONPATH": str(root)}
    return subprocess.Popen(
        [
            python_of(root),
            "-m",
            "pgsched.cli.main",
            "api",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(processes),
            "--log-level",
            "info",  # as deployed: the access log on
            "--dsn",
            dsn,
        ],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_until_ready(proc: subprocess.Popen[bytes], base_url: str, log: IO[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(
                f"pgsched api exited with {proc.returncode}: {log.read().decode(errors='replace')[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"pgsched api was not ready within {READY_TIMEOUT_S:.0f} s")
        time.sleep(0.1)


@dataclass(frozen=True)
class ApiServer:
    base_url: str
    pid: int


@contextlib.contextmanager
def api_server(dsn: str, processes: int, root: Path = ROOT) -> Iterator[ApiServer]:
    """A running `pgsched api` with ``processes`` workers. Its output goes to a file, not a
    pipe: a pipe nobody reads would stall the server once full."""
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = start_api(dsn, port, processes, log, root)
        try:
            base_url = f"http://127.0.0.1:{port}"
            wait_until_ready(proc, base_url, log)
            yield ApiServer(base_url, proc.pid)
        finally:
            stop_worker(proc)  # terminate, then kill after 30 s: the same for any pgsched process


# ---- (c) wrk: POST /runs from a C client, and the API processes' CPU per request

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"task": "noop", "args": {}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer KEY"
done = function(summary, latency, requests)
  io.write(string.format("WRK %d %d %d\\n", summary.requests, summary.errors.status, summary.duration))
end
"""


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its children: uvicorn's supervisor and workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent's pid
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wrk_posts(server: ApiServer, key: str, clients: int, seconds: float) -> tuple[int, float, float]:
    """POST /runs from ``clients`` wrk connections for ``seconds``: (requests, wall s, API CPU s)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(WRK_SCRIPT.replace("KEY", key))
        script.flush()
        argv = ["wrk", "-t1", f"-c{clients}", "-s", script.name, f"{server.base_url}/runs"]
        subprocess.run([*argv[:-1], "-d1s", argv[-1]], check=True, capture_output=True)  # warm-up
        cpu = tree_cpu_s(server.pid)
        output = subprocess.run([*argv[:-1], f"-d{seconds:g}s", argv[-1]], check=True, capture_output=True, text=True)
        cpu = tree_cpu_s(server.pid) - cpu
    line = next(x for x in output.stdout.splitlines() if x.startswith("WRK "))
    requests, bad_status, duration_us = (int(x) for x in line.split()[1:])
    if bad_status:
        raise RuntimeError(f"wrk: {bad_status} of {requests} POST /runs did not answer 2xx")
    return requests, duration_us / 1e6, cpu


async def post_runs(base_url: str, key: str, clients: int, requests: int) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits, timeout=30) as client:

        async def post() -> None:
            response = await client.post("/runs", json=RUN_BODY)
            if response.status_code != 201:
                raise RuntimeError(f"POST /runs answered {response.status_code}: {response.text[:500]}")

        return await warm_then_measure(clients, requests, post)


def make_key(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        key, _ = api_keys.create_key(conn, "write", name="benchmarks.api")
    return key


# ---- one round: every side once, each from an empty table


@dataclass
class WrkSide:
    """POST /runs from wrk against one server: throughput and API CPU per request, per round."""

    label: str
    processes: int
    server: ApiServer
    per_s: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {
            "per_s": round(statistics.median(self.per_s)),
            "per_s_rounds": [round(x) for x in self.per_s],
            "api_cpu_ms_per_request": round(statistics.median(self.cpu_ms), 3),
            "api_cpu_ms_rounds": [round(x, 3) for x in self.cpu_ms],
        }


def measure_round(
    dsn: str,
    key: str,
    servers: dict[int, ApiServer],
    sides: dict[str, Side],
    wrk_sides: dict[str, WrkSide],
    args: argparse.Namespace,
) -> None:
    clients, requests = args.clients, args.requests
    expected = requests + clients * WARMUP_PER_CLIENT
    empty_runs(dsn)
    sides[DIRECT].add(requests, *measure_direct(dsn, clients, requests))
    check_all_queued(dsn, expected, "App.enqueue")
    for processes, server in servers.items():
        empty_runs(dsn)
        sides[f"api_{processes}"].add(requests, *asyncio.run(post_runs(server.base_url, key, clients, requests)))
        check_all_queued(dsn, expected, f"POST /runs, {processes} process(es)")
    for side in wrk_sides.values():
        empty_runs(dsn)
        done, wall_s, cpu_s = wrk_posts(side.server, key, clients, args.wrk_seconds)
        side.per_s.append(done / wall_s)
        side.cpu_ms.append(cpu_s / done * 1000)


# ---- report


def server_description(server: str) -> str:
    with psycopg.connect(server) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('server_version', 'fsync', 'synchronous_commit')"
            ).fetchall()
        )
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"PostgreSQL {settings['server_version']} fsync={settings['fsync']} "
        f"synchronous_commit={settings['synchronous_commit']}"
    )


def results_table(sides: dict[str, Side], clients: int, requests: int, rounds: int) -> Table:
    table = Table(title=f"one run per call: {requests:,} calls x {rounds} round(s), {clients} concurrent callers")
    # runs/s: the median round; min-max: the spread over rounds; latencies: every call of every round.
    for column in ("via", "procs", "runs/s", "min-max", "p50 ms", "p99 ms", "vs direct"):
        table.add_column(column, justify="left" if column == "via" else "right")
    direct = sides[DIRECT].median_per_s
    for side in sides.values():
        table.add_row(
            side.label,
            str(side.processes),
            f"{side.median_per_s:,.0f}",
            f"{min(side.per_s):,.0f}-{max(side.per_s):,.0f}",
            f"{percentile(side.latencies_ms, 50):.2f}",
            f"{percentile(side.latencies_ms, 99):.2f}",
            f"{side.median_per_s / direct:.2f}x",
        )
    return table


def wrk_table(wrk_sides: dict[str, WrkSide], direct_per_s: float, clients: int, seconds: float) -> Table:
    table = Table(title=f"wrk: POST /runs from {clients} connections, {seconds:g} s a round (medians)")
    for column in ("server", "procs", "runs/s", "vs direct", "API CPU ms/request", "rounds"):
        table.add_column(column, justify="right")
    for label, side in wrk_sides.items():
        table.add_row(
            label,
            str(side.processes),
            f"{statistics.median(side.per_s):,.0f}",
            f"{statistics.median(side.per_s) / direct_per_s:.2f}x",
            f"{statistics.median(side.cpu_ms):.3f}",
            " ".join(f"{x:.3f}" for x in side.cpu_ms),
        )
    return table


def figures(sides: dict[str, Side], clients: int, requests: int, rounds: int) -> dict[str, object]:
    direct = sides[DIRECT]
    api = {name: side for name, side in sides.items() if name != DIRECT}
    ratios: dict[str, float] = {}
    for name, side in api.items():
        ratios[f"{name}_vs_direct"] = round(side.median_per_s / direct.median_per_s, 3)
        ratios[f"{name}_p50_vs_direct"] = round(
            percentile(side.latencies_ms, 50) / percentile(direct.latencies_ms, 50), 3
        )
    return {
        DIRECT: direct.summary(),
        **{name: side.summary() for name, side in api.items()},
        "ratios": ratios,
        "clients": clients,
        "requests": requests,
        "rounds": rounds,
        "cores": os.cpu_count(),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, help="concurrent callers on each side (default 16; --quick 8)")
    parser.add_argument("--requests", type=int, help="calls measured per side and round (default 5000; --quick 1000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick 1)")
    parser.add_argument("--api-workers", default="1,2", help="API worker process counts, comma-separated")
    parser.add_argument("--wrk-seconds", type=float, help="wrk's run per server and round (default 10; --quick 3)")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="another checkout with its own venv (`git worktree add /tmp/base main`, then in it `python3 -m venv "
        ".venv && .venv/bin/pip install -e .`): its `pgsched api` is measured by wrk too",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller run, to check the benchmark works")
    parser.add_argument(
        "--dsn", help="a server to create the benchmark database on (default: a throwaway embedded one)"
    )
    args = parser.parse_args()
    args.clients = args.clients or (8 if args.quick else 16)
    args.requests = args.requests or (1000 if args.quick else 5000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.wrk_seconds = args.wrk_seconds or (3 if args.quick else 10)
    try:
        args.api_workers = [int(n) for n in args.api_workers.split(",")]
    except ValueError:
        parser.error(f"--api-workers must be comma-separated integers, got {args.api_workers!r}")
    if len(set(args.api_workers)) != len(args.api_workers):
        parser.error(f"--api-workers names a process count twice: {args.api_workers}")
    if min(args.clients, args.requests, args.rounds, *args.api_workers) < 1:
        parser.error("--clients, --requests, --rounds and every --api-workers count must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    sides = {DIRECT: Side("App.enqueue", 1)} | {f"api_{n}": Side("POST /runs", n) for n in args.api_workers}
    wrk_sides: dict[str, WrkSide] = {}
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk): no API CPU per request", flush=True)
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn, contextlib.ExitStack() as servers_open:
        print(server_description(server), flush=True)
        key = make_key(dsn)
        servers = {n: servers_open.enter_context(api_server(dsn, n)) for n in args.api_workers}
        if shutil.which("wrk"):
            wrk_sides = {f"api_{n}": WrkSide(f"api_{n}", n, server) for n, server in servers.items()}
            if args.baseline_tree:
                for n in args.api_workers:
                    base = servers_open.enter_context(api_server(dsn, n, args.baseline_tree.resolve()))
                    wrk_sides[f"baseline_api_{n}"] = WrkSide(f"baseline_api_{n}", n, base)
        for round_number in range(1, args.rounds + 1):
            measure_round(dsn, key, servers, sides, wrk_sides, args)
            print(
                f"round {round_number}/{args.rounds}: "
                + ", ".join(f"{name} {side.per_s[-1]:,.0f} runs/s" for name, side in sides.items())
                + "".join(
                    f", wrk {label} {side.per_s[-1]:,.0f} runs/s {side.cpu_ms[-1]:.3f} ms CPU/request"
                    for label, side in wrk_sides.items()
                ),
                flush=True,
            )
    Console().print(results_table(sides, args.clients, args.requests, args.rounds))
    result = figures(sides, args.clients, args.requests, args.rounds)
    if wrk_sides:
        direct_per_s = sides[DIRECT].median_per_s
        Console().print(wrk_table(wrk_sides, direct_per_s, args.clients, args.wrk_seconds))
        result["wrk"] = {label: side.summary() for label, side in wrk_sides.items()}
        for label, side in wrk_sides.items():
            result["ratios"][f"wrk_{label}_vs_direct"] = round(statistics.median(side.per_s) / direct_per_s, 3)  # type: ignore[index]
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

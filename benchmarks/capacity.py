"""What one run costs the primary, measured, and what a day of runs costs from that.

    python -m benchmarks.capacity [--runs 50000] [--singles 2000] [--per-day 100000000] [--peak 10] [--dsn SERVER_DSN]

On a throwaway embedded PostgreSQL (fsync and synchronous_commit on) it measures, for each hop a
run takes — a single enqueue (`App.enqueue`), a bulk enqueue (`enqueue_many`) and the drain by
one worker process (claim, no-op task, completion) — the WAL bytes (`pg_current_wal_lsn`), the
CPU of the database's processes (the postmaster and every child, exited ones included through
the postmaster's reaped-children times) and the CPU of the client or worker, each divided by the
runs. Then the bytes a run holds: its hot row while queued (heap and indexes of `pgsched.runs`)
and once finished (wherever finished runs are kept). CPU is CPU time, not wall time, so the
figures hold on a shared machine; each phase starts after a CHECKPOINT, so its WAL includes the
full-page images a checkpoint causes (an upper bound: at a steady rate most pages were already
written since the last checkpoint).

The last lines are a capacity model for --per-day runs a day with peaks --peak times the
average, and one JSON object with every figure (docs/operations/capacity.md is written from it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import psutil
import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import start_worker, stop_worker, wait_until
from pgsched import App

SECONDS_PER_DAY = 86_400


def children_cpu_s(parent: psutil.Process) -> float:
    """CPU seconds of the live descendants of ``parent`` (one that exits while we look is skipped)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for child in parent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
    return total


@dataclass
class HopCost:
    """What one run cost the database and its caller in one hop, per run."""

    runs: int
    wal_bytes: float
    db_cpu_ms: float
    client_cpu_ms: float
    runs_per_s: float


class DatabaseMeter:
    """CPU seconds of every process of the server and its WAL position, read before and after a hop."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.postmaster = psutil.Process(conn.info.backend_pid).parent()

    def cpu_s(self) -> float:
        # The postmaster's children_* times hold the backends that exited (reaped) since it started.
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        return total + children_cpu_s(self.postmaster)

    def wal_lsn(self) -> str:
        return str(self.conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0])  # type: ignore[index]

    def wal_bytes_since(self, lsn: str) -> int:
        row = self.conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn,)).fetchone()
        return int(row[0])  # type: ignore[index]

    @contextlib.contextmanager
    def hop(self, runs: int, client_cpu: ClientCpu) -> Iterator[HopMeasure]:
        self.conn.execute("CHECKPOINT")
        measure = HopMeasure(runs)
        lsn, cpu, started = self.wal_lsn(), self.cpu_s(), time.perf_counter()
        client_cpu.start()
        yield measure
        seconds = time.perf_counter() - started
        measure.cost = HopCost(
            runs=runs,
            wal_bytes=self.wal_bytes_since(lsn) / runs,
            db_cpu_ms=(self.cpu_s() - cpu) * 1000 / runs,
            client_cpu_ms=client_cpu.seconds() * 1000 / runs,
            runs_per_s=runs / seconds,
        )


@dataclass
class HopMeasure:
    runs: int
    cost: HopCost | None = None


class ClientCpu:
    """CPU seconds of this process, or of a worker process and its children once attached."""

    def __init__(self) -> None:
        self.process: psutil.Process | None = None
        self.begin = 0.0
        self.end: float | None = None

    def attach(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def now(self) -> float:
        if self.process is None:
            return time.process_time()
        times = self.process.cpu_times()
        return times.user + times.system + children_cpu_s(self.process)

    def start(self) -> None:
        self.begin = self.now()

    def stop(self) -> None:
        """Read the CPU now: a worker process is read before it exits."""
        self.end = self.now()

    def seconds(self) -> float:
        return (self.end if self.end is not None else self.now()) - self.begin


def runs_bytes(conn: psycopg.Connection, *, with_history: bool) -> int:
    """Heap, TOAST and index bytes of ``pgsched.runs`` and, with_history, of every table whose
    name starts with ``runs_history`` (a partitioned history's partitions), where they exist."""
    row = conn.execute(
        """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pgsched' AND c.relkind = 'r'
          AND (c.relname = 'runs' OR (%(with_history)s AND c.relname LIKE 'runs\\_history%%'))
        """,
        {"with_history": with_history},
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def measure(dsn: str, runs: int, singles: int) -> dict[str, object]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        meter = DatabaseMeter(conn)
        app = App(dsn)
        app.task(name="noop")(lambda: None)
        app.enqueue("noop", {})  # the pool opens outside the measure
        conn.execute("TRUNCATE pgsched.runs")

        with meter.hop(singles, ClientCpu()) as single:
            for _ in range(singles):
                app.enqueue("noop", {})
        conn.execute("TRUNCATE pgsched.runs")

        with meter.hop(runs, ClientCpu()) as bulk:
            for start in range(0, runs, 10_000):
                app.enqueue_many("noop", [{}] * min(10_000, runs - start))
        app.close()
        conn.execute("VACUUM ANALYZE pgsched.runs")
        hot_bytes = runs_bytes(conn, with_history=False) / runs

        worker_cpu = ClientCpu()
        with meter.hop(runs, worker_cpu) as drain:
            worker = start_worker(dsn)
            worker_cpu.attach(worker.pid)
            worker_cpu.start()
            try:
                wait_until(
                    conn, "SELECT NOT EXISTS (SELECT FROM pgsched.runs WHERE status IN ('queued', 'running'))", 600
                )
                worker_cpu.stop()
            finally:
                stop_worker(worker)
        conn.execute("VACUUM ANALYZE")
        finished_bytes = runs_bytes(conn, with_history=True) / runs

    assert single.cost and bulk.cost and drain.cost
    return {
        "single_enqueue": asdict(single.cost),
        "bulk_enqueue": asdict(bulk.cost),
        "drain": asdict(drain.cost),
        "hot_row_bytes": hot_bytes,
        "finished_run_bytes": finished_bytes,
    }


def model(figures: dict[str, object], per_day: int, peak: float, single_share: float) -> dict[str, float]:
    """Cores and bytes for ``per_day`` runs a day, ``single_share`` of them enqueued one by one."""
    single, bulk, drain = (figures[k] for k in ("single_enqueue", "bulk_enqueue", "drain"))
    assert isinstance(single, dict) and isinstance(bulk, dict) and isinstance(drain, dict)

    def blend(key: str) -> float:
        enqueue = single_share * single[key] + (1 - single_share) * bulk[key]
        return float(enqueue + drain[key])

    average = per_day / SECONDS_PER_DAY
    db_cpu_ms, wal_bytes = blend("db_cpu_ms"), blend("wal_bytes")
    finished = float(figures["finished_run_bytes"])  # type: ignore[arg-type]
    return {
        "average_runs_per_s": average,
        "peak_runs_per_s": average * peak,
        "db_cpu_ms_per_run": db_cpu_ms,
        "db_cores_average": average * db_cpu_ms / 1000,
        "db_cores_peak": average * peak * db_cpu_ms / 1000,
        "worker_cores_peak_noop": average * peak * float(drain["client_cpu_ms"]) / 1000,
        "wal_bytes_per_run": wal_bytes,
        "wal_gib_per_day": per_day * wal_bytes / 2**30,
        "wal_mib_per_s_peak": average * peak * wal_bytes / 2**20,
        "history_gib_per_day": per_day * finished / 2**30,
        "history_bytes_per_million_runs": finished * 1_000_000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50_000, help="runs bulk-enqueued and drained")
    parser.add_argument("--singles", type=int, default=2_000, help="runs enqueued one call each")
    parser.add_argument("--per-day", type=int, default=100_000_000, help="runs a day for the capacity model")
    parser.add_argument("--peak", type=float, default=10.0, help="peak rate as a multiple of the average")
    parser.add_argument("--single-share", type=float, default=0.5, help="share of runs enqueued one by one")
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()

    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        figures = measure(dsn, args.runs, args.singles)
    for hop in ("single_enqueue", "bulk_enqueue", "drain"):
        cost = figures[hop]
        assert isinstance(cost, dict)
        print(
            f"{hop:15} WAL {cost['wal_bytes']:7.0f} B/run  database CPU {cost['db_cpu_ms']:.4f} ms/run  "
            f"client CPU {cost['client_cpu_ms']:.4f} ms/run  ({cost['runs_per_s']:,.0f} runs/s here)"
        )
    print(f"hot row while queued {figures['hot_row_bytes']:.0f} B; finished run {figures['finished_run_bytes']:.0f} B")
    capacity = model(figures, args.per_day, args.peak, args.single_share)
    print(
        f"{args.per_day:,} runs/day = {capacity['average_runs_per_s']:,.0f}/s average, "
        f"{capacity['peak_runs_per_s']:,.0f}/s at peak: database {capacity['db_cores_average']:.2f} cores average, "
        f"{capacity['db_cores_peak']:.1f} at peak; WAL {capacity['wal_gib_per_day']:.1f} GiB/day "
        f"({capacity['wal_mib_per_s_peak']:.1f} MiB/s at peak); history {capacity['history_gib_per_day']:.1f} GiB/day"
    )
    print(json.dumps({"figures": figures, "model": capacity, "args": vars(args)}))


if __name__ == "__main__":
    main()

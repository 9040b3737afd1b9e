"""Is the dashboard cheap on a big table? Page times, the database CPU of a live page, and
what ten open dashboards cost a concurrent drain.

    python -m benchmarks.ui [--finished 1000000] [--queued 10000] [--requests 100]
                            [--drain 20000] [--rounds 3] [--dsn SERVER_DSN]

The table holds ``--finished`` finished runs (spread over the last week, 2% failed, 8 queues,
40 tasks, the rollup counted as the beat leader counts it) and ``--queued`` queued ones.
(a) Each page's time: ``--requests`` sequential GETs of it from a signed-in client to a real
    `pgsched api` process, p50/p95 of the whole request as the client sees it (an upper bound
    on the server's time).
(b) A live page's database CPU: the queries of one poll of the queues page (the session
    lookup, the queue figures, the chart, the anomaly baseline), run on one connection; the
    CPU its backend used, read from /proc (PostgreSQL on this machine), divided by the polls
    and by the poll interval (2 s).
(c) A drain of ``--drain`` runs by one worker in a queue of its own, with and without ten
    dashboards polling the queues page every 2 s through the API; interleaved, median of
    ``--rounds`` rounds each. The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from contextlib import ExitStack
from typing import Callable

import httpx
import psycopg
from psycopg_pool import ConnectionPool

from benchmarks._server import fresh_database, server_dsn
from benchmarks.api import api_server
from benchmarks.throughput import percentile, start_worker, stop_worker, wait_until
from pgsched.api import keys as api_keys
from pgsched.api.keys import digest
from pgsched.queues import list_queues
from pgsched.sql import queries
from pgsched.ui import insights
from pgsched.ui.db import page_connection
from pgsched.ui.sessions import session_key

POLL_S = 2.0  # the dashboard's live interval (pgsched.ui.render.LIVE_EVERY_S)
DASHBOARDS = 10
PAGES = {
    "queues": "/ui",
    "runs": "/ui/runs",
    "runs, failed of one task": "/ui/runs?status=failed&task=task-7",
    "runs, args contain": "/ui/runs?args=%7B%22customer%22%3A+4242%7D",
    "runs, 3rd page": None,  # filled in: a cursor deep in the history
    "run detail": None,
    "failures": "/ui/failures",
    "jobs": "/ui/jobs",
    "workers": "/ui/workers",
    "bulk confirm (capped count)": "/ui/runs/bulk?action=retry&status=failed",
}


def fill(dsn: str, finished: int, queued: int) -> None:
    """The big table, written in one statement per kind, then analysed; the rollup counted."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Finished runs written as a restore writes them (triggers off): schema 0009 lets SQL
        # insert only queued runs, and replaying 10^6 through a worker is not what is measured.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO pgsched.runs (task, args, queue, status, attempt, errors, created_at, started_at, finished_at)"
            " SELECT 'task-' || (i %% 40), jsonb_build_object('customer', i %% 100000), 'queue-' || (i %% 8),"
            "        CASE WHEN (i / 40) %% 50 = 0 THEN 'failed' ELSE 'succeeded' END::pgsched.run_status, 1,"
            "        CASE WHEN (i / 40) %% 50 = 0 THEN jsonb_build_array(jsonb_build_object('attempt', 1, 'type',"
            "             'Error' || (i %% 3), 'message', 'planned', 'traceback', 'Traceback ...')) ELSE '[]' END,"
            "        t - interval '2 seconds', t - interval '1 second', t"
            " FROM generate_series(1, %(n)s) AS i, LATERAL (SELECT now() - (i * interval '7 days' / %(n)s) AS t) AS at",
            {"n": finished},
        )
        conn.execute("RESET session_replication_role")
        conn.execute(
            "INSERT INTO pgsched.runs (task, args, queue, run_at)"
            " SELECT 'task-' || (i %% 40), '{}', 'queue-' || (i %% 8), now() + interval '1 day' * (i %% 2)"
            " FROM generate_series(1, %(n)s) AS i",
            {"n": queued},
        )
        conn.execute(
            "INSERT INTO pgsched.jobs (name, task, every_s)"
            " SELECT 'job-' || i, 'task-1', 60 FROM generate_series(1, 50) AS i"
        )
        conn.execute(queries["rollup_refresh"], {"minutes": 8 * 24 * 60, "now": None})
        # As autovacuum would have left a table this size: statistics, and the visibility map
        # that lets the queue figures' failed count be an index-only scan.
        conn.execute("VACUUM ANALYZE pgsched.runs")
        conn.execute("VACUUM ANALYZE pgsched.run_rollup")


def signed_in_client(base_url: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=30)
    response = client.post("/ui/login", data={"key": key})
    if response.status_code != 303:
        raise RuntimeError(f"sign-in answered {response.status_code}")
    return client


def page_times(client: httpx.Client, paths: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, float]] = {}
    for name, path in paths.items():
        samples = []
        for _ in range(requests + 5):  # 5 to warm up: connections, plans, caches
            start = time.perf_counter()
            response = client.get(path)
            samples.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
        samples = samples[5:]
        times[name] = {"p50_ms": round(statistics.median(samples), 2), "p95_ms": round(percentile(samples, 95), 2)}
    return times


def deep_paths(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        deep = conn.execute("SELECT id FROM pgsched.runs_all ORDER BY id DESC OFFSET 100 LIMIT 1").fetchone()
        failed = conn.execute("SELECT max(id) FROM pgsched.runs_all WHERE status = 'failed'").fetchone()
    assert deep is not None and failed is not None
    return {"runs, 3rd page": f"/ui/runs?cursor={deep[0]}", "run detail": f"/ui/runs/{failed[0]}"}


def backend_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a PostgreSQL backend (Linux /proc; clock ticks)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def live_db_cpu_ms_per_s(dsn: str, key_id: int, repeats: int) -> dict[str, float]:
    """Backend CPU milliseconds of each part of a queues-page poll, and what an open page
    costs per second in the steady state: the session and the queue figures every poll
    (2 s); the chart and the anomaly baseline as often as the app recomputes them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        token = "bench-" + os.urandom(8).hex()
        params = {"token_hash": digest(token), "key_id": key_id, "ttl_s": 3600, "now": None}
        conn.execute(queries["ui_session_insert"], params)
    parts: dict[str, Callable[[psycopg.Connection], object]] = {
        "session and queue figures": lambda conn: (
            session_key(conn, token),
            list_queues(conn, tenant=None, last_hour=False),  # as the queues page reads them (0017)
        ),
        "chart": lambda conn: insights.last_hour(conn, None),
        "anomaly baseline": lambda conn: insights.baseline(conn, None),
    }
    every_s = {
        "session and queue figures": POLL_S,
        "chart": insights.CHART_KEPT_S,
        "anomaly baseline": insights.ANOMALIES_KEPT_S,
    }
    with ConnectionPool(dsn, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
        cpu_ms = {}
        for name, part in parts.items():
            for _ in range(2):  # the first round warms the backend's caches
                before = backend_cpu_s(pid)
                for _ in range(repeats):
                    with page_connection(pool) as conn:
                        part(conn)
                cpu_ms[name] = (backend_cpu_s(pid) - before) * 1000 / repeats
    per_s = sum(cpu_ms[name] / every_s[name] for name in parts)
    return {**{f"{name} ms": round(ms, 3) for name, ms in cpu_ms.items()}, "per_s_ms": round(per_s, 3)}


def drain_rate(dsn: str, n: int) -> float:
    """Runs/s of one worker draining ``n`` no-op runs of its own queue, by the database's clock."""
    from benchmarks.bench_app import app

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM pgsched.runs WHERE queue = 'drain'")
        app.use_dsn(dsn)
        app.enqueue_many("noop", [{}] * n, queue="drain")
        app.close()
        worker = start_worker(dsn, "--queues", "drain")
        try:
            wait_until(
                conn,
                "SELECT count(*) = 0 FROM pgsched.runs WHERE queue = 'drain' AND status IN ('queued', 'running')",
                600,
            )
        finally:
            stop_worker(worker)
        first, last = conn.execute(
            "SELECT min(started_at), max(finished_at) FROM pgsched.runs_all WHERE queue = 'drain'"
        ).fetchone()  # type: ignore[misc]
    return n / (last - first).total_seconds()


class Dashboards:
    """``count`` signed-in browsers' worth of live polling of the queues page, in threads."""

    def __init__(self, base_url: str, key: str, count: int) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(base_url, key, i)) for i in range(count)]
        self.polls = 0

    def _poll(self, base_url: str, key: str, index: int) -> None:
        client = signed_in_client(base_url, key)
        try:
            self._stop.wait(POLL_S * index / len(self._threads))  # spread out, as real tabs are
            while not self._stop.is_set():
                client.get("/ui", headers={"HX-Request": "true"})
                self.polls += 1
                self._stop.wait(POLL_S)
        finally:
            client.close()

    def __enter__(self) -> Dashboards:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--finished", type=int, default=1_000_000)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=100, help="GETs per page")
    parser.add_argument("--drain", type=int, default=20_000, help="runs per drain")
    parser.add_argument("--rounds", type=int, default=3, help="drains with and without dashboards, interleaved")
    parser.add_argument(
        "--dsn", help="a server to create the benchmark database on (default: a throwaway embedded one)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    with ExitStack() as stack:
        server = stack.enter_context(server_dsn(args.dsn))
        dsn = stack.enter_context(fresh_database(server))
        started = time.perf_counter()
        fill(dsn, args.finished, args.queued)
        print(
            f"filled {args.finished:,} finished and {args.queued:,} queued runs "
            f"in {time.perf_counter() - started:.0f} s"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            key, row = api_keys.create_key(conn, "admin", name="benchmarks.ui")
        base_url = stack.enter_context(api_server(dsn, 1))
        client = signed_in_client(base_url, key)
        stack.callback(client.close)
        paths = {name: path for name, path in {**PAGES, **deep_paths(dsn)}.items() if path is not None}
        times = page_times(client, paths, args.requests)
        for name, figures in times.items():
            print(f"  {name:<30} p50 {figures['p50_ms']:7.2f} ms   p95 {figures['p95_ms']:7.2f} ms")
        live = live_db_cpu_ms_per_s(dsn, row["id"], repeats=100)
        print(f"an open queues page's database CPU: {live['per_s_ms']:.2f} ms per second ({live})")
        alone: list[float] = []
        watched: list[float] = []
        for _ in range(args.rounds):
            alone.append(drain_rate(dsn, args.drain))
            with Dashboards(base_url, key, DASHBOARDS):
                watched.append(drain_rate(dsn, args.drain))
        slowdown = 1 - statistics.median(watched) / statistics.median(alone)
        print(
            f"drain of {args.drain:,} runs: {statistics.median(alone):,.0f} runs/s alone, "
            f"{statistics.median(watched):,.0f} runs/s with {DASHBOARDS} dashboards open ({slowdown:+.1%} slower)"
        )
    print(
        json.dumps(
            {
                "finished_runs": args.finished,
                "queued_runs": args.queued,
                "pages": times,
                "live_db_cpu": live,
                "drain_alone_per_s": [round(r) for r in alone],
                "drain_with_dashboards_per_s": [round(r) for r in watched],
                "drain_slowdown": round(slowdown, 4),
            }
        )
    )


if __name__ == "__main__":
    main()

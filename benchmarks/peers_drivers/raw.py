"""The raw-SQL ceiling: psycopg and no framework, on pgsched's table without its NOTIFY
trigger runs_inserted (as benchmarks/throughput.py's baseline). Bulk enqueue is COPY (an unnest INSERT is
measured too), single enqueue a one-row INSERT + commit, and a worker is one process running
a claim-50 + complete loop (pgsched's claim query, a plain UPDATE to finish) with no task
machinery; when the queue is empty it waits on LISTEN, which the latency enqueue NOTIFYs."""

from __future__ import annotations

import os
import signal
import sys
import time

from benchmarks.peers_drivers import _client, _probe

PACKAGE = "psycopg"
REQUIREMENTS = None  # the benchmark's own venv (psycopg, and pgsched's schema and claim query)
STORE = "postgres"
CONFIG = (
    "psycopg, no framework, pgsched's table without its trigger, every commit durable (claims too); "
    "COPY (batch) / one-row INSERT + commit (single); worker: claim 50 + UPDATE ... = ANY(ids) loop, "
    "LISTEN when empty"
)
PENDING_SQL = "SELECT count(*) FROM pgsched.runs WHERE status IN ('queued', 'running')"
RESET_SQL = "TRUNCATE pgsched.runs"
CHANNEL = "peers_raw"
CLAIM_BATCH = 50
COMPLETE_SQL = (
    "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL WHERE id = ANY(%s)"
)


def worker_argv(python: str, index: int, dsn: str) -> list[str]:
    return [python, "-m", "benchmarks.peers_drivers.raw", "worker"]


def worker(dsn: str) -> None:
    import psycopg

    from pgsched.claim_cursor import FROM_THE_START
    from pgsched.sql import queries

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    params = {
        "queues": ["default"],
        "limit": CLAIM_BATCH,
        "worker_id": 1,
        "lease_s": 30.0,
        "now": None,
        "only_tasks": None,
        "skip_tasks": None,
        **FROM_THE_START,
    }
    with psycopg.connect(dsn, autocommit=True) as conn, psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute(f"LISTEN {CHANNEL}")
        claim = queries["run_claim"]
        while not stopping:
            rows = conn.execute(claim, params).fetchall()
            if not rows:
                for _ in listen.notifies(timeout=0.2, stop_after=1):
                    pass
                continue
            for row in rows:
                if row[1] == "stamp":
                    _probe.stamp()
                else:
                    _probe.mark()
            conn.execute(COMPLETE_SQL, ([row[0] for row in rows],))


class Client:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def hello(self) -> dict:
        return {"version": f"psycopg {_client.package_version(PACKAGE)}"}

    def setup(self) -> None:
        import psycopg

        from pgsched.migrate import migrate

        self.conn = psycopg.connect(self.dsn, autocommit=True)
        migrate(self.conn)
        self.conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        # A hand-rolled queue keeps its finished rows where they are: no move to the history (0030).
        self.conn.execute("DROP TRIGGER IF EXISTS runs_to_history ON pgsched.runs")
        self.reset()

    def reset(self) -> None:
        self.conn.execute(RESET_SQL)

    def _copy(self, n: int) -> None:
        from psycopg.types.json import Jsonb

        with self.conn.transaction(), self.conn.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
            for _ in range(n):
                copy.write_row(("noop", Jsonb({})))

    def bulk(self, n: int) -> dict:
        start = time.perf_counter()
        self._copy(n)
        result = _client.timed_rate(n, time.perf_counter() - start)
        self.reset()
        start = time.perf_counter()
        self.conn.execute(
            "INSERT INTO pgsched.runs (task, args) SELECT t, '{}'::jsonb FROM unnest(%s::text[]) AS t", (["noop"] * n,)
        )
        result["extra"] = {"enqueue_bulk_unnest_per_s": n / (time.perf_counter() - start)}
        return result

    def single(self, n: int) -> dict:
        from psycopg.types.json import Jsonb

        start = time.perf_counter()
        for _ in range(n):
            self.conn.execute("INSERT INTO pgsched.runs (task, args) VALUES (%s, %s) RETURNING id", ("noop", Jsonb({})))
        return _client.timed_rate(n, time.perf_counter() - start)

    def prefill(self, n: int) -> None:
        self._copy(n)

    def pending(self) -> int:
        return self.conn.execute(PENDING_SQL).fetchone()[0]  # type: ignore[index]

    def _enqueue_stamp(self) -> None:
        self.conn.execute(
            "WITH r AS (INSERT INTO pgsched.runs (task, args) VALUES ('stamp', '{}') RETURNING id) "
            f"SELECT pg_notify('{CHANNEL}', '') FROM r"
        )

    async def latency(self, n: int, socket_path: str) -> dict:
        return await _client.measure_latency(self._enqueue_stamp, lambda: self.pending() == 0, n, socket_path)

    def close(self) -> None:
        if hasattr(self, "conn"):
            self.conn.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["client"]:
        _client.serve(Client(os.environ["PEERS_DSN"]))
    elif sys.argv[1:] == ["worker"]:
        worker(os.environ["PEERS_DSN"])

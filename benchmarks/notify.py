"""NOTIFY under many writers (issue 13, item 4): what the wake-up trigger costs concurrent
single-run enqueues, and how fast an idle worker starts a run after its enqueue commits.

    python -m benchmarks.notify [--writers 1,16,64] [--seconds 3] [--rounds 3] [--latency-runs 100] [--dsn SERVER_DSN]

Throughput: N connections (threads spread over 4 client processes, each connection its own),
each committing one-run INSERTs into pgsched.runs (autocommit: one transaction per run, as a
web request enqueues) for ``--seconds``; commits per second over all connections. The same
database and server for every variant, switched between measurements (the trigger's function
replaced, or the trigger disabled), rounds interleaved, the runs table emptied between
measurements:

- ``no wake-up trigger``: runs_inserted disabled (the baseline; 0036's row check
  runs_inserted_checked stays on in every variant, it is not the wake-up's);
- ``before``: main's trigger (0009): the insert check and a NOTIFY per queue on every insert;
- ``after``: 0027's trigger, no worker waiting (what many writers meet while workers are busy);
- ``after, a worker waiting``: 0027's trigger while a session holds the queue's waiting lock,
  as an idle worker does: every insert notifies again, like ``before``.

With a worker draining: ``--drain-writers`` connections (64) while one real worker
(concurrency 20, the default 2 s poll) drains the queue, before / after / no trigger,
interleaved: commits/s, NOTIFYs/s (counted by a session that LISTENs) and runs started/s.

Server time: one backend's time per single-row INSERT statement in a plpgsql loop, in a
transaction rolled back (no commit, no flush, no client): the CPU the trigger adds per insert.

Latency: one real ``pgsched worker`` process (concurrency 10), idle; a run is enqueued, and
commit->start is the run's started_at (the claim's clock) minus the client's clock when its
commit returned (one host, one clock; the worker may start the run before the enqueuer's
process hears its commit, so this can be below 0), and minus the client's clock when the
commit was sent (an upper bound: it counts the commit's own WAL flush). Between runs the
enqueuer waits until the worker waits again. Measured with ``before``'s and ``after``'s
trigger, interleaved. A throwaway embedded PostgreSQL (fsync and synchronous_commit on)
unless --dsn names a server. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PROCESSES = 4
INSERT = "INSERT INTO pgsched.runs (task, queue) VALUES ('noop', 'default')"
WAITING_LOCK = "SELECT pg_advisory_lock_shared(1885827959, hashtext('default'))"

# main's runs_inserted (schema 0009), for the "before" variant.
BEFORE_BODY = """
DECLARE
    bad record;
BEGIN
    SELECT id, status, attempt INTO bad FROM new_runs WHERE status NOT IN ('queued', 'waiting') OR attempt <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run %: a run is inserted queued (or waiting, in a workflow) with attempt 0, '
                        'got status % and attempt %', bad.id, bad.status, bad.attempt
            USING ERRCODE = 'check_violation', CONSTRAINT = 'run_must_be_inserted_queued';
    END IF;
    PERFORM pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM new_runs WHERE status = 'queued') AS queues;
    RETURN NULL;
END;
"""
NO_TRIGGER = "no wake-up trigger"
BEFORE = "before (main: NOTIFY every insert)"
AFTER = "after (0027, nobody waiting)"
AFTER_WAITING = "after, a worker waiting"
VARIANTS = (NO_TRIGGER, BEFORE, AFTER, AFTER_WAITING)
STARTED = "SELECT extract(epoch FROM started_at) FROM pgsched.runs_all WHERE id = %s AND started_at IS NOT NULL"
SENT = ", from the commit sent"
LATENCY_BEFORE = "before (main's trigger)"
LATENCY_AFTER = "after (0027: the worker said it waits)"


# ---- writer processes: each holds its connections and inserts on command


def _writer_process(dsn: str, connections: int, pipe: Connection) -> None:
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(connections)]
    for conn in conns:
        for _ in range(10):  # psycopg prepares after 5 executions: warm it up
            conn.execute(INSERT)
    pipe.send("ready")
    while True:
        command = pipe.recv()
        if command is None:
            break
        counts = [0] * connections
        deadline = time.monotonic() + float(command)
        cpu = time.process_time()
        threads = [
            threading.Thread(target=_insert_until, args=(conns[i], deadline, counts, i)) for i in range(connections)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pipe.send({"commits": sum(counts), "client_cpu_s": time.process_time() - cpu})
    for conn in conns:
        conn.close()


def _insert_until(conn: psycopg.Connection[Any], deadline: float, counts: list[int], i: int) -> None:
    n = 0
    while time.monotonic() < deadline:
        conn.execute(INSERT)
        n += 1
    counts[i] = n


class Writers:
    """``n`` connections over up to CLIENT_PROCESSES processes."""

    def __init__(self, dsn: str, n: int) -> None:
        ctx = mp.get_context("spawn")
        per = [n // CLIENT_PROCESSES + (1 if i < n % CLIENT_PROCESSES else 0) for i in range(CLIENT_PROCESSES)]
        self.pipes: list[Connection] = []
        self.procs = []
        for count in (c for c in per if c > 0):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_writer_process, args=(dsn, count, theirs), daemon=True)
            proc.start()
            self.pipes.append(ours)
            self.procs.append(proc)
        for pipe in self.pipes:
            assert pipe.recv() == "ready"

    def run(self, seconds: float) -> dict[str, float]:
        for pipe in self.pipes:
            pipe.send(seconds)
        answers = [pipe.recv() for pipe in self.pipes]
        return {
            "commits_per_s": sum(a["commits"] for a in answers) / seconds,
            "client_cpu_s": sum(a["client_cpu_s"] for a in answers),
        }

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for proc in self.procs:
            proc.join(10)


# ---- variants


# Since 0036 the trigger calls runs_inserted_v2 (the same wake-up, and 0026's tenant work in
# the same call): the variants swap runs_inserted()'s body, so the trigger is pointed back at it.
POINT_THE_TRIGGER_AT_0027 = """
DROP TRIGGER runs_inserted ON pgsched.runs;
CREATE TRIGGER runs_inserted AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_inserted();
"""


def after_body(conn: psycopg.Connection[Any]) -> str:
    """0027's function body, as installed by the migration (kept to put it back), with the
    trigger calling it."""
    conn.execute(POINT_THE_TRIGGER_AT_0027)
    row = conn.execute("SELECT prosrc FROM pg_proc WHERE oid = 'pgsched.runs_inserted()'::regprocedure").fetchone()
    assert row is not None
    return str(row[0])


def use_variant(admin: psycopg.Connection[Any], waiter: psycopg.Connection[Any], variant: str, after: str) -> None:
    body = BEFORE_BODY if variant == BEFORE else after
    admin.execute(
        "CREATE OR REPLACE FUNCTION pgsched.runs_inserted() RETURNS trigger LANGUAGE plpgsql AS $body$"
        + body  # type: ignore[operator]
        + "$body$"
    )
    state = "DISABLE" if variant == NO_TRIGGER else "ENABLE"
    admin.execute(f"ALTER TABLE pgsched.runs {state} TRIGGER runs_inserted")  # type: ignore[arg-type]
    waiter.execute("SELECT pg_advisory_unlock_all()")
    if variant == AFTER_WAITING:
        waiter.execute(WAITING_LOCK)


def throughput(dsn: str, args: argparse.Namespace) -> dict[str, dict[str, list[dict[str, float]]]]:
    samples: dict[str, dict[str, list[dict[str, float]]]] = {}
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as waiter:
        after = after_body(admin)
        for n in args.writers:
            writers = Writers(dsn, n)
            try:
                for round_number in range(args.rounds):
                    shift = round_number % len(VARIANTS)
                    for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                        use_variant(admin, waiter, variant, after)
                        admin.execute("TRUNCATE pgsched.runs CASCADE")
                        admin.execute("CHECKPOINT")
                        figure = writers.run(args.seconds)
                        samples.setdefault(str(n), {}).setdefault(variant, []).append(figure)
                        print(
                            f"  {n:>3} writers, round {round_number + 1}, {variant}: {figure['commits_per_s']:,.0f}/s",
                            flush=True,
                        )
            finally:
                writers.close()
        use_variant(admin, waiter, AFTER, after)
    return samples


# ---- with a worker draining the queue


DRAIN_VARIANTS = (NO_TRIGGER, BEFORE, AFTER)


def _count_notifies(dsn: str, seconds: float, counted: list[int]) -> None:
    """Notifications sent on 'pgsched' during ``seconds`` (this session LISTENs, never waits)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("LISTEN pgsched")
        deadline = time.monotonic() + seconds
        n = 0
        while (left := deadline - time.monotonic()) > 0:
            for _ in conn.notifies(timeout=left):
                n += 1
        counted.append(n)


def throughput_draining(dsn: str, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """The writers of ``--drain-writers`` while one real worker (concurrency 20) drains the
    queue, per trigger variant, interleaved: commits/s, NOTIFYs/s and runs the worker started."""
    samples: dict[str, list[dict[str, float]]] = {}
    worker = _start_worker(dsn, concurrency=20, poll_interval=2.0)
    try:
        with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as waiter:
            after = after_body(admin)
            _wait(lambda: _waiting(admin), 30, "the worker to start and wait")
            writers = Writers(dsn, args.drain_writers)
            try:
                for round_number in range(args.rounds):
                    shift = round_number % len(DRAIN_VARIANTS)
                    for variant in DRAIN_VARIANTS[shift:] + DRAIN_VARIANTS[:shift]:
                        use_variant(admin, waiter, variant, after)
                        time.sleep(2.5)  # the worker drains what is left, and waits again
                        started_before = _started(admin)
                        counted: list[int] = []
                        counter = threading.Thread(target=_count_notifies, args=(dsn, args.seconds, counted))
                        counter.start()
                        figure = writers.run(args.seconds)
                        counter.join()
                        figure["notifies_per_s"] = counted[0] / args.seconds
                        figure["started_per_s"] = (_started(admin) - started_before) / args.seconds
                        samples.setdefault(variant, []).append(figure)
                        print(
                            f"  {args.drain_writers} writers + a worker, round {round_number + 1}, {variant}:"
                            f" {figure['commits_per_s']:,.0f}/s, {figure['notifies_per_s']:,.0f} NOTIFY/s,"
                            f" {figure['started_per_s']:,.0f} started/s",
                            flush=True,
                        )
            finally:
                writers.close()
            use_variant(admin, waiter, AFTER, after)
    finally:
        worker.terminate()
        worker.wait(20)
    return samples


def _started(admin: psycopg.Connection[Any]) -> int:
    row = admin.execute("SELECT count(*) FROM pgsched.runs_all WHERE started_at IS NOT NULL").fetchone()
    return int(row[0]) if row else 0


def _start_worker(dsn: str, *, concurrency: int, poll_interval: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGSCHED_DSN": dsn, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgsched.cli.main",
            "worker",
            "--app",
            "benchmarks.bench_app:app",
            "--dsn",
            dsn,
            "--concurrency",
            str(concurrency),
            "--poll-interval",
            str(poll_interval),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )


# ---- the server's time per insert, apart from the commit


def server_time(dsn: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Microseconds of one backend per single-row INSERT statement (a plpgsql loop of them, in
    a transaction rolled back: no commit, no flush, no client), per variant, interleaved: what
    the trigger adds to each insert in CPU, whatever the disk."""
    samples: dict[str, list[float]] = {}
    loop = (
        "DO $$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN"
        " FOR i IN 1..%s LOOP INSERT INTO pgsched.runs (task, queue) VALUES ('noop', 'default'); END LOOP;"
        " RAISE NOTICE '%%', extract(epoch FROM clock_timestamp() - t0); END $$"
    )
    with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as waiter:
        after = after_body(admin)
        with psycopg.connect(dsn) as conn:
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
            for round_number in range(args.rounds):
                shift = round_number % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    use_variant(admin, waiter, variant, after)
                    conn.execute(loop % args.server_inserts)  # type: ignore[arg-type]
                    conn.rollback()
                    samples.setdefault(variant, []).append(float(notices.pop()) * 1e6 / args.server_inserts)
        use_variant(admin, waiter, AFTER, after)
    return samples


# ---- latency: an idle worker process


def latency(dsn: str, args: argparse.Namespace) -> dict[str, list[float]]:
    worker = _start_worker(dsn, concurrency=10, poll_interval=60)
    samples: dict[str, list[float]] = {
        LATENCY_BEFORE: [],
        LATENCY_AFTER: [],
        LATENCY_BEFORE + SENT: [],
        LATENCY_AFTER + SENT: [],
    }
    try:
        with psycopg.connect(dsn, autocommit=True) as admin, psycopg.connect(dsn, autocommit=True) as waiter:
            after = after_body(admin)
            enqueuer = psycopg.connect(dsn)
            _wait(lambda: _waiting(admin), 30, "the worker to start and wait")
            block = max(1, min(10, args.latency_runs))
            for i in range(args.latency_runs * 2):
                variant = (BEFORE, AFTER)[(i // block) % 2]  # blocks of 10, alternating
                if i % block == 0:
                    use_variant(admin, waiter, variant, after)
                label = LATENCY_BEFORE if variant == BEFORE else LATENCY_AFTER
                _wait(lambda: _waiting(admin), 10, "the worker to wait")
                time.sleep(0.01)
                sent, returned, started = _one_run(enqueuer, admin)
                samples[label].append((started - returned) * 1000)
                samples[label + SENT].append((started - sent) * 1000)
            enqueuer.close()
            use_variant(admin, waiter, AFTER, after)
    finally:
        worker.terminate()
        worker.wait(20)
    return samples


def _one_run(enqueuer: psycopg.Connection[Any], admin: psycopg.Connection[Any]) -> tuple[float, float, float]:
    """Enqueue one run: the client's clock as its commit was sent and as it returned, and the
    run's started_at (the claim's clock), once it started."""
    row = enqueuer.execute("INSERT INTO pgsched.runs (task, args) VALUES ('noop', '{}') RETURNING id").fetchone()
    assert row is not None
    sent = time.time()
    enqueuer.commit()
    returned = time.time()
    started = _wait(lambda: admin.execute(STARTED, (row[0],)).fetchone(), 10, "the run to start")
    return sent, returned, float(started[0])


def _waiting(admin: psycopg.Connection[Any]) -> bool:
    row = admin.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1885827959"
    ).fetchone()
    return bool(row and row[0] > 0)


def _wait(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.0005)
    raise TimeoutError(f"timed out waiting for {what}")


# ---- report


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min), {os.cpu_count()} cores"


def report(
    tp: dict[str, dict[str, list[dict[str, float]]]],
    draining: dict[str, list[dict[str, float]]],
    server: dict[str, list[float]],
    lat: dict[str, list[float]],
    args: argparse.Namespace,
) -> None:
    out: dict[str, Any] = {
        "throughput": {},
        "draining": draining,
        "server_us_per_insert": server,
        "latency_ms": {},
        "load": load(),
    }
    print(f"\nsingle-run enqueue commits/s ({args.seconds:g} s x {args.rounds} interleaved rounds, medians; {load()})")
    print("ratio = variant / no wake-up trigger, per round, then the median of the rounds' ratios")
    print(f"{'writers':>7s}  {'variant':38s} {'commits/s':>10s} {'vs none':>8s}  rounds' ratios")
    for n, by_variant in tp.items():
        base = [s["commits_per_s"] for s in by_variant[NO_TRIGGER]]
        out["throughput"][n] = {}
        for variant in VARIANTS:
            rates = [s["commits_per_s"] for s in by_variant[variant]]
            ratios = [r / b for r, b in zip(rates, base)]
            median_ratio = statistics.median(ratios)
            print(
                f"{n:>7s}  {variant:38s} {statistics.median(rates):>10,.0f} {median_ratio:>8.3f}  "
                + ", ".join(f"{r:.2f}" for r in ratios)
            )
            out["throughput"][n][variant] = {"commits_per_s": rates, "ratio_to_none": ratios}
    if draining:
        print(f"\n{args.drain_writers} writers while one worker (concurrency 20) drains the queue (medians)")
        base = [f["commits_per_s"] for f in draining[NO_TRIGGER]]
        for variant in DRAIN_VARIANTS:
            figures = draining[variant]
            ratios = [f["commits_per_s"] / b for f, b in zip(figures, base)]
            print(
                f"  {variant:38s} {statistics.median(f['commits_per_s'] for f in figures):>8,.0f}/s"
                f"  vs none {statistics.median(ratios):.3f}"
                f"  NOTIFY/s {statistics.median(f['notifies_per_s'] for f in figures):>7,.0f}"
                f"  started/s {statistics.median(f['started_per_s'] for f in figures):>7,.0f}"
                "  rounds: " + ", ".join(f"{r:.2f}" for r in ratios)
            )
    if server:
        print(
            f"\none backend's time per single-row INSERT, no commit ({args.server_inserts:,} x {args.rounds}, medians)"
        )
        base = statistics.median(server[NO_TRIGGER])
        for variant in VARIANTS:
            us = statistics.median(server[variant])
            print(f"  {variant:38s} {us:7.1f} us  (+{us - base:5.1f} us over no trigger)")
    if lat:
        print(
            f"\nidle worker, commit -> started_at, ms ({args.latency_runs} runs per variant): from the client's"
            " commit returning (a run may start before the enqueuer hears its commit: below 0), and from the"
            " commit sent (counts the commit's own WAL flush)"
        )
        for variant, values in lat.items():
            values = sorted(values)
            p50 = statistics.median(values)
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
            print(f"  {variant:62s} p50 {p50:6.2f}  p99 {p99:6.2f}  max {values[-1]:6.2f}")
            out["latency_ms"][variant] = {"p50": p50, "p99": p99, "max": values[-1]}
    print(json.dumps(out))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", default="1,16,64", help="comma-separated connection counts")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of one measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=100, help="runs per variant for the latency")
    parser.add_argument("--drain-writers", type=int, default=64, help="writers while a worker drains (0: skip)")
    parser.add_argument("--server-inserts", type=int, default=5000, help="inserts per server-time sample")
    parser.add_argument("--dsn", help="a server to create the benchmark database on (default: embedded)")
    args = parser.parse_args()
    args.writers = [int(w) for w in args.writers.split(",")]
    return args


def main() -> None:
    from benchmarks._server import fresh_database, server_dsn

    args = parse_args()
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        with psycopg.connect(server, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        print(f"PostgreSQL {row[0] if row else '?'}; {load()}", flush=True)
        tp = throughput(dsn, args)
        draining = throughput_draining(dsn, args) if args.drain_writers > 0 else {}
        server = server_time(dsn, args)
        lat = latency(dsn, args) if args.latency_runs > 0 else {}
    report(tp, draining, server, lat, args)


if __name__ == "__main__":
    main()

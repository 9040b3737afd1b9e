"""What a tenant with a max_running (issue #14, schema 0033) costs the other claims, and its own.

    python -m benchmarks.tenant_limits [--runs 20000] [--reps 3] [--samples 40]
                                       [--baseline-tree PATH] [--dsn SERVER_DSN]

The tenant T has max_running 1 and its slot is taken (one of its runs "running" under a lease of
an hour), so its queued runs stay queued whatever the claims do: the cost of walking past them.

(a) statements, same run: a claim of 50 (rolled back) from a queue of --runs runs without a
    tenant behind 10,000 of T's queued first ("head"), against the same queue without them
    ("none"), interleaved: run_claim from the start (a full pass, once a second per worker) and
    from a cursor past T's runs; run_claim_limited_v3 and _v4 for the other runs; and each
    version's claim of T's runs (run_claim_tenant_limited, 0 to take: its slot is taken);
(b) drains: one `pgsched worker` drains --runs no-op runs without a tenant, with T's 10,000
    queued at the head ("head"), with T set but no run of it queued ("empty": each claim round
    still makes T's claim) and with no tenant at all ("none"); this tree against
    --baseline-tree's (the previous code, which claims T's runs by run_claim_limited_v3) on the
    same databases, alternately; and "head"/"none" again with the queue's limits set as in
    benchmarks.limits (a), which never bind (its runs then go through the limited claim). Runs/s
    of the runs without a tenant, first start to last end, and CPU µs per run (the worker's and,
    on a local server, its backends');
(c) the start delay behind a tenant's slot: T has max_running 1 and 200 runs of 10 ms, 2 idle
    workers x concurrency 4 (benchmarks.limits_app's span task); the gap from one run's end to
    the next run's start, p50/p90 in ms, this tree against --baseline-tree's, alternately.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.limits import UNBINDING, _cpu_s, _postmaster
from benchmarks.limits_app import CREATE_SPANS
from benchmarks.throughput import ROOT, start_worker, stop_worker, wait_until
from pgsched.sql import queries

HEAD = 10_000
TENANT = """
INSERT INTO pgsched.tenants (name, max_running) VALUES ('T', 1);
INSERT INTO pgsched.runs (task, tenant, run_at) VALUES ('noop', 'T', now() - interval '2 hours');
UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),
                        lease_expires_at = now() + interval '1 hour'
WHERE tenant = 'T';
"""
# T's backlog sorts first: enqueued an hour before the others.
T_BACKLOG = "INSERT INTO pgsched.runs (task, tenant, run_at) SELECT 'noop', 'T', now() - interval '1 hour'"
T_BACKLOG += f" FROM generate_series(1, {HEAD})"
OTHERS = "INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, %s)"
OTHERS_LEFT = "SELECT count(*) = 0 FROM pgsched.runs WHERE tenant IS NULL AND status IN ('queued', 'running')"
OTHERS_RATE = """
SELECT count(*) / extract(epoch FROM max(finished_at) - min(started_at))
FROM pgsched.runs_all WHERE tenant IS NULL AND status = 'succeeded'
"""
CLAIM = {"limit": 50, "worker_id": 0, "lease_s": 60.0, "now": None, "only_tasks": None, "skip_tasks": None}
LIMITED = {**CLAIM, "queues": ["default"], "task": None, "queue_locked": False, "skip_flush": False}


def _v3(name: str) -> str:
    """The named query as the previous release has it: run_claim_limited_v3 (no cursor)."""
    return (
        queries[name]
        .replace("run_claim_limited_v4(", "run_claim_limited_v3(")
        .replace(", NULL, NULL, NULL, NULL)", ")")
    )


def _statements(cursor_after: tuple[Any, ...]) -> dict[str, tuple[str, dict[str, Any]]]:
    full = {"after_priority": [None], "after_run_at": [None], "after_id": [None], "from_run_at": [None]}
    priority, run_at, run_id = cursor_after
    at_cursor = {"after_priority": [priority], "after_run_at": [run_at], "after_id": [run_id], "from_run_at": [run_at]}
    return {
        "run_claim, full pass": (queries["run_claim"], {**CLAIM, "queues": ["default"], **full}),
        "run_claim, at a cursor": (queries["run_claim"], {**CLAIM, "queues": ["default"], **at_cursor}),
        "limited v3, other runs": (_v3("run_claim_limited"), {**LIMITED, "tenant": None}),
        "limited v4, other runs": (queries["run_claim_limited"], {**LIMITED, "tenant": None}),
        "limited v4, at a cursor": (queries["run_claim_limited_from"], {**LIMITED, "tenant": None, **at_cursor}),
        "tenant claim v3": (_v3("run_claim_tenant_limited"), {**LIMITED, "tenant": "T"}),
        "tenant claim v4": (queries["run_claim_tenant_limited"], {**LIMITED, "tenant": "T"}),
    }


def _prepare(dsn: str, runs: int, head: bool) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(TENANT)
        if head:
            conn.execute(T_BACKLOG)
        conn.execute(OTHERS, (runs,))
        conn.execute("VACUUM ANALYZE pgsched.runs")


def _ms(conn: psycopg.Connection, statement: str, params: dict[str, Any]) -> float:
    with conn.transaction(force_rollback=True):
        started = time.perf_counter()
        conn.execute(statement, params).fetchall()
        return (time.perf_counter() - started) * 1000


def statement_times(server: str, runs: int, samples: int) -> dict[str, dict[str, float]]:
    """(a): median ms of each claim, head against none, interleaved."""
    with fresh_database(server) as head_dsn, fresh_database(server) as none_dsn:
        _prepare(head_dsn, runs, head=True)
        _prepare(none_dsn, runs, head=False)
        conns = {
            side: psycopg.connect(dsn, options="-c plan_cache_mode=force_generic_plan -c synchronous_commit=off")
            for side, dsn in (("head", head_dsn), ("none", none_dsn))
        }
        try:
            # A cursor just before the runs without a tenant: where a claim after a full pass starts.
            after = (
                conns["head"]
                .execute(
                    "SELECT priority, run_at - interval '1 microsecond', 0 FROM pgsched.runs"
                    " WHERE tenant IS NULL ORDER BY id LIMIT 1"
                )
                .fetchone()
            )
            statements = _statements(tuple(after))  # type: ignore[arg-type]
            times: dict[str, dict[str, list[float]]] = {name: {"head": [], "none": []} for name in statements}
            for sample in range(samples):
                for name, (statement, params) in statements.items():
                    for side in ("head", "none") if sample % 2 == 0 else ("none", "head"):
                        times[name][side].append(_ms(conns[side], statement, params))
        finally:
            for conn in conns.values():
                conn.close()
    return {name: {side: statistics.median(ms) for side, ms in sides.items()} for name, sides in times.items()}


def _drain(
    dsn: str, runs: int, scenario: tuple[bool, bool, bool], root: Path, postmaster: int | None
) -> tuple[float, float]:
    """Runs/s of the runs without a tenant, and CPU µs per run (worker + server backends)."""
    head, tenant, limited = scenario
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgsched.runs, pgsched.tenants, pgsched.queues")
        if limited:
            conn.execute(UNBINDING)
        if tenant:
            conn.execute(TENANT)
            if head:
                conn.execute(T_BACKLOG)
        conn.execute(OTHERS, (runs,))
        conn.execute("VACUUM ANALYZE pgsched.runs")
        server_before = _cpu_s(postmaster) if postmaster else 0.0
        worker_before = _children_cpu_s()
        worker = start_worker(dsn, root=root)
        try:
            wait_until(conn, OTHERS_LEFT, 600)
        finally:
            stop_worker(worker)
        time.sleep(0.5)  # the worker's backends exit and are reaped
        server_s = (_cpu_s(postmaster) - server_before) if postmaster else 0.0
        cpu_us = (server_s + _children_cpu_s() - worker_before) / runs * 1e6
        return float(conn.execute(OTHERS_RATE).fetchone()[0]), cpu_us  # type: ignore[index]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# (T's runs at the head, T set, the queue limited by limits that do not bind)
SCENARIOS = {
    "head": (True, True, False),
    "empty": (False, True, False),
    "none": (False, False, False),
    "head, limited queue": (True, True, True),
    "none, limited queue": (False, False, True),
}


def drains(server: str, runs: int, reps: int, baseline: Path | None) -> dict[str, dict[str, list[float]]]:
    """(b): runs/s per scenario and tree, alternately."""
    trees = {"this": ROOT, **({"baseline": baseline} if baseline else {})}
    figures: dict[str, dict[str, list[float]]] = {
        s: {f"{t}{cpu}": [] for t in trees for cpu in ("", "_cpu_us")} for s in SCENARIOS
    }
    with fresh_database(server) as dsn:
        postmaster = _postmaster(dsn)
        for rep in range(reps):
            for scenario, flags in SCENARIOS.items():
                order = list(trees) if rep % 2 == 0 else list(reversed(trees))
                for tree in order:
                    rate, cpu_us = _drain(dsn, runs, flags, trees[tree], postmaster)
                    figures[scenario][tree].append(rate)
                    figures[scenario][f"{tree}_cpu_us"].append(cpu_us)
                print(
                    f"rep {rep + 1} {scenario}: " + ", ".join(_last(figures[scenario], tree) for tree in trees),
                    flush=True,
                )
    return figures


def _last(figures: dict[str, list[float]], tree: str) -> str:
    return f"{tree} {figures[tree][-1]:,.0f}/s {figures[tree + '_cpu_us'][-1]:.0f} µs/run"


GAP_RUNS = 200
GAPS = """
WITH spans_of AS (
    SELECT n, min(at) FILTER (WHERE event = 'start') AS started, max(at) FILTER (WHERE event = 'end') AS ended
    FROM spans GROUP BY n
)
SELECT percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY gap_ms), max(gap_ms) FROM (
    SELECT extract(epoch FROM started - lag(ended) OVER (ORDER BY started)) * 1000 AS gap_ms FROM spans_of
) AS gaps WHERE gap_ms IS NOT NULL
"""


def start_gaps(server: str, reps: int, baseline: Path | None) -> dict[str, list[list[float]]]:
    """(c): [p50, p90, max] ms from a run's end to the next start, per tree and repetition."""
    trees = {"this": ROOT, **({"baseline": baseline} if baseline else {})}
    figures: dict[str, list[list[float]]] = {tree: [] for tree in trees}
    for rep in range(reps):
        for tree in list(trees) if rep % 2 == 0 else list(reversed(trees)):
            with fresh_database(server) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(CREATE_SPANS)
                conn.execute("INSERT INTO pgsched.tenants (name, max_running) VALUES ('T', 1)")
                conn.execute(
                    "INSERT INTO pgsched.runs (task, args, tenant)"
                    " SELECT 'span', jsonb_build_object('n', g, 'ms', 10), 'T' FROM generate_series(1, %s) AS g",
                    (GAP_RUNS,),
                )
                procs = [
                    start_worker(dsn, "--concurrency", "4", app="benchmarks.limits_app:app", root=trees[tree])
                    for _ in range(2)
                ]
                try:
                    done = f"SELECT count(*) = {GAP_RUNS} FROM pgsched.runs_all WHERE status = 'succeeded'"
                    wait_until(conn, done, 600)
                finally:
                    for proc in procs:
                        stop_worker(proc)
                (p50, p90), most = conn.execute(GAPS).fetchone()  # type: ignore[misc]
                figures[tree].append([p50, p90, float(most)])
                print(f"rep {rep + 1} {tree}: gap p50 {p50:.1f} ms, p90 {p90:.1f} ms, max {most:.1f} ms", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000, help="Runs without a tenant")
    parser.add_argument("--reps", type=int, default=3, help="Drains of each scenario and tree in (b)")
    parser.add_argument("--samples", type=int, default=40, help="Claims of each kind and side in (a)")
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    parser.add_argument("--baseline-tree", type=Path, help="(b): a checkout of the previous code to drain against")
    parser.add_argument("--only", default="abc", help="Run only these parts (default: abc)")
    options = parser.parse_args()
    results: dict[str, Any] = {}
    with server_dsn(options.dsn) as server:
        if "a" in options.only:
            results["statements_ms"] = statement_times(server, options.runs, options.samples)
            for name, sides in results["statements_ms"].items():
                print(
                    f"(a) {name}: {HEAD:,} of T's runs at the head {sides['head']:.2f} ms,"
                    f" none {sides['none']:.2f} ms ({sides['head'] / sides['none']:.2f}x)",
                    flush=True,
                )
        if "b" in options.only:
            figures = results["drains"] = drains(server, options.runs, options.reps, options.baseline_tree)
            for scenario, trees in figures.items():
                line = ", ".join(f"{tree} median {statistics.median(values):,.0f}" for tree, values in trees.items())
                if "baseline" in trees:
                    ratios = [a / b for a, b in zip(trees["this"], trees["baseline"])]
                    cpu = [a / b for a, b in zip(trees["this_cpu_us"], trees["baseline_cpu_us"])]
                    line += f"; runs/s this/baseline {', '.join(f'{r:.2f}' for r in ratios)}"
                    line += f"; CPU per run this/baseline {', '.join(f'{r:.2f}' for r in cpu)}"
                print(f"(b) {scenario}: {line}", flush=True)
        if "c" in options.only:
            gaps = results["start_gaps_ms"] = start_gaps(server, options.reps, options.baseline_tree)
            for tree, reps in gaps.items():
                print(
                    f"(c) {tree}: gap p50 {', '.join(f'{r[0]:.1f}' for r in reps)} ms;"
                    f" p90 {', '.join(f'{r[1]:.1f}' for r in reps)} ms",
                    flush=True,
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()

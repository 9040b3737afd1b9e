"""What the drain's two statements cost the server, and which part of the schema that is (issue
18: the drain fell from 0.91x to 0.78x of the raw loop between 11-27 and 12-07).

    python -m benchmarks.drain_statements [--runs 20000] [--rounds 3] [--batch 100] [--dsn SERVER_DSN]

One database per variant, migrated by this tree; a variant takes one part out (in a benchmark
database only): ``all`` (as deployed), ``no-status-triggers`` (the three AFTER UPDATE OF status
triggers of 0019/0031: finished-run NOTIFY, workflow step row trigger, steps-ended statement
trigger), ``no-checks`` (every CHECK constraint on runs, 0009's included). Per variant and
round: ``--runs`` runs queued by one COPY, then claimed ``--batch`` at a time with run_claim on a
connection like the fetcher's and completed with run_complete_many (the worker's) or with the
raw loop's plain ``UPDATE ... WHERE id = ANY`` (``raw-complete``) or with the completer's lean
statement for a batch of successes (``lean-complete``, run_complete_succeeded), both on the
``all`` database;
the figure is the backend's CPU time (/proc) per run, so other load on the machine barely moves
it. Variants alternate per round; medians. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
from collections.abc import Iterator
from typing import Any

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.peers_drivers.raw import COMPLETE_SQL
from benchmarks.worker_cpu import thread_cpu_s
from pgsched.claim_cursor import ClaimCursors
from pgsched.fetcher import CLAIM_CONNECTION
from pgsched.run_types import ClaimedRun
from pgsched.sql import number_array, queries, text_array

STATUS_TRIGGERS = ("runs_notify_finished", "runs_step_finished", "runs_steps_ended")
DROP_CHECKS = """
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = 'pgsched.runs'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE pgsched.runs DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$
"""
VARIANTS = ("all", "lean-complete", "raw-complete", "no-status-triggers", "no-checks")
SAME_DATABASE = {"lean-complete": "all", "raw-complete": "all"}  # other statements, not another schema


def prepare(conn: psycopg.Connection[Any], variant: str) -> None:
    if variant == "no-status-triggers":
        for name in STATUS_TRIGGERS:
            conn.execute(f"ALTER TABLE pgsched.runs DISABLE TRIGGER {name}")
    elif variant == "no-checks":
        conn.execute(DROP_CHECKS)


def drain(dsn: str, runs: int, batch: int, completion: str) -> dict[str, float]:
    """Backend CPU µs per run of claiming and completing ``runs`` queued runs."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("TRUNCATE pgsched.runs")
        with admin.transaction(), admin.cursor().copy("COPY pgsched.runs (task, args) FROM STDIN") as copy:
            for _ in range(runs):
                copy.write_row(("noop", "{}"))
        admin.execute("VACUUM ANALYZE pgsched.runs")
    cursors = ClaimCursors()
    base = {"limit": batch, "worker_id": 1, "lease_s": 30.0, "now": None, "only_tasks": None, "skip_tasks": None}
    with psycopg.connect(dsn, **CLAIM_CONNECTION) as conn:
        conn.execute("SET synchronous_commit = on")  # the completion's durable commit, as the worker's pool
        backend = conn.info.backend_pid
        claim_s = complete_s = 0.0
        done = 0
        while True:
            params = {**base, "queues": ["default"], **cursors.params(["default"])}
            before = thread_cpu_s(backend)
            claimed = [ClaimedRun(*row) for row in conn.execute(queries["run_claim"], params).fetchall()]
            claim_s += thread_cpu_s(backend) - before
            cursors.advance(["default"], claimed)
            if not claimed:
                break
            ids = [run.id for run in claimed]
            before = thread_cpu_s(backend)
            if completion == "raw-complete":
                conn.execute(COMPLETE_SQL, (ids,))
            elif completion == "lean-complete":
                conn.execute(
                    queries["run_complete_succeeded"],
                    {
                        "worker_id": 1,
                        "ids": number_array(ids),
                        "attempts": number_array([run.attempt for run in claimed]),
                        "results": text_array(["null"] * len(claimed)),
                    },
                ).fetchall()
            else:
                conn.execute(
                    queries["run_complete_many"],
                    {
                        "worker_id": 1,
                        "ids": number_array(ids),
                        "attempts": number_array([run.attempt for run in claimed]),
                        "statuses": text_array(["succeeded"] * len(claimed)),
                        "results": text_array(["null"] * len(claimed)),
                        "errors": text_array([None] * len(claimed)),
                        "retry_delays_s": number_array([0.0] * len(claimed)),
                    },
                ).fetchall()
            complete_s += thread_cpu_s(backend) - before
            done += len(claimed)
    assert done == runs, f"{done} of {runs} claimed"
    return {"claim_us_per_run": claim_s / runs * 1e6, "complete_us_per_run": complete_s / runs * 1e6}


@contextlib.contextmanager
def databases(server: str) -> Iterator[dict[str, str]]:
    with contextlib.ExitStack() as stack:
        dsns = {}
        for variant in VARIANTS:
            if variant in SAME_DATABASE:
                continue
            dsns[variant] = dsn = stack.enter_context(fresh_database(server))
            with psycopg.connect(dsn, autocommit=True) as conn:
                prepare(conn, variant)
        for variant, other in SAME_DATABASE.items():
            dsns[variant] = dsns[other]
        yield dsns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--dsn", help="a server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    figures: dict[str, list[dict[str, float]]] = {variant: [] for variant in VARIANTS}
    with server_dsn(options.dsn) as server, databases(server) as dsns:
        for rnd in range(options.rounds):
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            for variant in order:
                result = drain(dsns[variant], options.runs, options.batch, variant)
                figures[variant].append(result)
                print(
                    f"[{rnd + 1}] {variant:<19} claim {result['claim_us_per_run']:5.1f} µs/run"
                    f"  complete {result['complete_us_per_run']:5.1f} µs/run",
                    flush=True,
                )
    report = {
        variant: {key: statistics.median(r[key] for r in rows) for key in ("claim_us_per_run", "complete_us_per_run")}
        for variant, rows in figures.items()
    }
    for variant, medians in report.items():
        print(f"{variant:<19} " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()), flush=True)
    print(json.dumps({"runs": options.runs, "batch": options.batch, "rounds": options.rounds, "medians": report}))


if __name__ == "__main__":
    main()

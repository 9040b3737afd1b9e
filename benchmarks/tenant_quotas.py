"""What schema 0026's tenant trigger (quotas and the usage log) costs the server on the write
path, against the same schema without it, same run.

    python -m benchmarks.tenant_quotas [--samples 300] [--dsn SERVER_DSN]

Two databases on one server, the same pgsched schema, except that "before" has no tenant
work on insert (0027's trigger function, see WITHOUT_THE_TRIGGER). Each statement runs
alternately on both under EXPLAIN ANALYZE (the server's execution time, AFTER triggers
included; rolled back), and the medians are compared, as benchmarks/schema_rules.py does.
The statements: a single-row INSERT without a tenant (most enqueues), with a tenant that has
no quota (usage log only), with a tenant that has both quotas (lock, day counter, queued count
over its 1,000 queued runs), and 1,000-row INSERTs without and with a quota'd tenant (a bulk
enqueue). The claim and the completion are not touched by 0026 (no trigger on UPDATE). Then
the beat leader's usage fold: one round over 20,000 tenant runs finished since the last (and
20,000 without a tenant), and an empty round (wall clock, median of 5). The last line printed
is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from contextlib import ExitStack

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.schema_rules import execution_us
from pgsched.quotas import fold_usage

# 0026's own trigger until 0036, which does its work inside runs_inserted_v2 (only for rows
# with a tenant): "before" calls 0027's runs_inserted() instead, the wake-up without it.
WITHOUT_THE_TRIGGER = """
DROP TRIGGER runs_inserted ON pgsched.runs;
CREATE TRIGGER runs_inserted AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.runs_inserted();
"""

STATEMENTS = {
    "1 run, no tenant": "INSERT INTO pgsched.runs (task, args) VALUES ('noop', '{}')",
    "1 run, tenant, no quota": "INSERT INTO pgsched.runs (task, args, tenant) VALUES ('noop', '{}', 'free')",
    "1 run, tenant with quotas": "INSERT INTO pgsched.runs (task, args, tenant) VALUES ('noop', '{}', 'acme')",
    "1,000 runs, no tenant": "INSERT INTO pgsched.runs (task, args) SELECT 'noop', '{}' FROM generate_series(1, 1000)",
    "1,000 runs, quotas": (
        "INSERT INTO pgsched.runs (task, args, tenant) SELECT 'noop', '{}', 'acme' FROM generate_series(1, 1000)"
    ),
}
# A backlog: 10,000 runs without a tenant, 1,000 queued for the quota'd tenant, whose quotas
# are far from binding (the check runs in full, and admits).
SETUP = """
INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, 10000);
INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', 'acme' FROM generate_series(1, 1000);
INSERT INTO pgsched.tenants (name, max_queued, runs_per_day) VALUES ('acme', 1000000, 100000000);
INSERT INTO pgsched.runs (task, tenant) VALUES ('noop', 'acme');  -- today's counter exists, as it does all day
"""

# Finished 4 minutes ago, after a 2 s attempt: inside the round, past the fold's 1-minute lag.
FINISHED = """
TRUNCATE pgsched.runs;
INSERT INTO pgsched.runs (task, tenant) SELECT 'noop', 't' || (g % 50) FROM generate_series(1, 20000) AS g;
INSERT INTO pgsched.runs (task) SELECT 'noop' FROM generate_series(1, 20000);
UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now() - interval '242 seconds',
       finished_at = now() - interval '4 minutes';
"""


async def fold_ms(dsn: str, rounds: int = 5) -> dict[str, float]:
    """Median wall-clock ms of a fold of 20,000 finished tenant runs, and of an empty one."""
    full, empty = [], []
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(FINISHED)
        await conn.execute("VACUUM ANALYZE pgsched.runs")
        for _ in range(rounds):
            await conn.execute(
                "TRUNCATE pgsched.tenant_usage; UPDATE pgsched.tenant_usage_fold"
                " SET finished_until = now() - interval '10 minutes'"
            )
            for figures in (full, empty):
                started = time.perf_counter()
                await fold_usage(conn)
                figures.append((time.perf_counter() - started) * 1000)
    return {"20,000 finished": statistics.median(full), "empty": statistics.median(empty)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name in STATEMENTS}
    with server_dsn(options.dsn) as server, ExitStack() as stack:
        conns, dsns = {}, {}
        for side in ("before", "after"):
            dsn = dsns[side] = stack.enter_context(fresh_database(server))
            conns[side] = stack.enter_context(psycopg.connect(dsn, autocommit=True))
            if side == "before":
                conns[side].execute(WITHOUT_THE_TRIGGER)
            conns[side].execute(SETUP)
            conns[side].execute("VACUUM ANALYZE pgsched.runs")
        for sample in range(options.samples):
            for name, statement in STATEMENTS.items():
                for side in ("before", "after") if sample % 2 == 0 else ("after", "before"):
                    figures[name][side].append(execution_us(conns[side], statement))
        fold = asyncio.run(fold_ms(dsns["after"]))
    print(f"{'server time, median us':<28}{'before (no 0026)':>18}{'after (0026)':>14}{'after-before':>14}")
    for name, sides in figures.items():
        before, after = statistics.median(sides["before"]), statistics.median(sides["after"])
        print(f"{name:<28}{before:>18,.0f}{after:>14,.0f}{after - before:>+14,.0f}")
    print(
        f"usage fold, median ms: 20,000 finished tenant runs {fold['20,000 finished']:,.1f}, empty {fold['empty']:,.1f}"
    )
    medians = {name: {side: statistics.median(v) for side, v in sides.items()} for name, sides in figures.items()}
    print(json.dumps({"samples": options.samples, "median_us": medians, "fold_ms": fold}))


if __name__ == "__main__":
    main()

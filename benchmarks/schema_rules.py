"""What schema 0009's rules (issue 11: checks on every run and job row, and a run inserted only
as queued) cost on the write path, against the same schema without them, in the same run.

    python -m benchmarks.schema_rules [--runs 20000] [--reps 3] [--dsn SERVER_DSN]

Two databases on one server, the same pgsched code and schema, except that "before" has 0009's
rules taken out again (its checks dropped, and the insert trigger back to 0001's wake-up
alone): a database at 0008 itself would not do, since a worker refuses a pending migration.
Each repetition measures both, alternately: bulk enqueue (enqueue_many, COPY), single enqueues
(one call each, runs/10 of them), and the drain of the bulk-enqueued runs by one `pgsched
worker` process (every claim and completion UPDATE checks the rules). The last line printed is
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
from contextlib import ExitStack

import psycopg

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import drain, enqueue_bulk, enqueue_single

# 0009's checks, and 0001's wake-up trigger in place of 0009's check-and-wake-up.
WITHOUT_THE_RULES = """
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conrelid::regclass AS tbl, conname FROM pg_constraint
             WHERE connamespace = 'pgsched'::regnamespace AND contype = 'c' AND NOT convalidated LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.tbl, c.conname);
    END LOOP;
END $$;
CREATE FUNCTION pgsched.notify_queued() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_notify('pgsched', queue) FROM (SELECT DISTINCT queue FROM new_runs) AS queues;
    RETURN NULL;
END;
$f$;
DROP TRIGGER runs_inserted ON pgsched.runs;
CREATE TRIGGER runs_notify_queued AFTER INSERT ON pgsched.runs REFERENCING NEW TABLE AS new_runs
    FOR EACH STATEMENT EXECUTE FUNCTION pgsched.notify_queued();
"""
MEASURES = {"bulk enqueue": enqueue_bulk, "single enqueue": enqueue_single, "drain": drain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dsn", help="A server to create the databases on (default: an embedded one)")
    options = parser.parse_args()
    figures: dict[str, dict[str, list[float]]] = {name: {"before": [], "after": []} for name in MEASURES}
    with server_dsn(options.dsn) as server, ExitStack() as stack:
        databases = {
            "before": stack.enter_context(fresh_database(server)),
            "after": stack.enter_context(fresh_database(server)),
        }
        with psycopg.connect(databases["before"], autocommit=True) as conn:
            conn.execute(WITHOUT_THE_RULES)
        for rep in range(options.reps):
            order = ("before", "after") if rep % 2 == 0 else ("after", "before")
            for name, measure in MEASURES.items():
                n = options.runs // 10 if name == "single enqueue" else options.runs
                for side in order:
                    figures[name][side].append(measure(databases[side], n))
            print(
                f"rep {rep + 1}: "
                + ", ".join(f"{k} {v['after'][-1] / v['before'][-1]:.2f}x" for k, v in figures.items())
            )
    print(f"\n{'runs/s, median (min-max)':<26}{'before (no rules)':>28}{'after (0009)':>28}{'after/before':>14}")
    for name, sides in figures.items():
        cells = [f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})" for v in sides.values()]
        ratio = statistics.median(sides["after"]) / statistics.median(sides["before"])
        print(f"{name:<26}{cells[0]:>28}{cells[1]:>28}{ratio:>13.2f}x")
    print(json.dumps({"runs": options.runs, "reps": options.reps, "figures": figures}))


if __name__ == "__main__":
    main()

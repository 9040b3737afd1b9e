"""Where a single enqueue's time goes, per side (issue 18, item 1).

    python -m benchmarks.enqueue_costs [--calls 1000] [--rounds 3] [--inserts 2000]
                                       [--pgqueuer-python PYTHON] [--dsn SERVER_DSN]

The peers benchmark's single enqueue is one client calling sequentially: each call is a round
trip, the server's work for the statement, and a durable commit's WAL flush. This script takes
a call apart on one PostgreSQL (a throwaway embedded server by default, so the WAL it counts
is only its own):

1. **Per call, each side** (one held connection or pgsched's pool, as the peers drivers call
   them): ``raw`` (psycopg's one-row INSERT on pgsched's table without its insert trigger, the
   peers' raw driver), ``raw+trigger`` (the same on pgsched's table as it is), ``App.enqueue``,
   ``PgQueuer`` (``Queries.enqueue`` on asyncpg, from ``--pgqueuer-python``), and ``bare``
   (the same psycopg INSERT into a table with a primary key and nothing else: what any durable
   one-row enqueue costs at least). Each side runs with ``synchronous_commit`` on and off
   (set for the server between passes): the difference of the two walls is the commit's
   flush, the rest is round trip, client and server CPU. Per call: wall, the client's CPU
   (``time.process_time``; PgQueuer's is its own process's), the server's CPU (the side's
   database's backends, ``/proc/PID/schedstat``) and the WAL it wrote
   (``pg_current_wal_insert_lsn`` before and after, warm-up calls included).
2. **Inside the server, pgsched's table piece by piece**: the backend CPU of a one-row INSERT
   (a PL/pgSQL loop of static INSERTs: each starts its own executor, as a prepared statement
   does) into tables built from ``pgsched.runs`` as it is: a primary key only; + the claim
   index; + every index; + every check (no trigger: what ``raw`` inserts into); the same with
   the one-column checks as domains (a prototype: PostgreSQL keeps a domain's checks prepared
   per session, while a table's are read from their stored text and planned again for every
   statement); and ``pgsched.runs`` itself (its triggers and foreign key). Also printed: how
   many characters of stored expression text a one-row INSERT parses before its first row
   (the checks' and the insert triggers' WHENs).

Rounds interleave every side (and every table), in an order rotated per round; figures are
medians with min-max. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

from benchmarks.enqueue import (
    ROOT,
    WARMUP,
    ClientProcess,
    add_pgqueuer_python,
    as_url,
    backend_cpu_ns,
    cpu_between,
)

RAW_SQL = "INSERT INTO pgsched.runs (task, args) VALUES (%s, %s) RETURNING id"
BARE_TABLE = "bench_bare"
BARE_SQL = f"INSERT INTO pgsched.{BARE_TABLE} (task, args) VALUES (%s, %s) RETURNING id"
SIDES = ("raw", "raw+trigger", "App.enqueue", "PgQueuer", "bare")

# Tables for part 2, built in the pgsched database from pgsched.runs as it is.
TABLES = {
    "primary key only": """
        CREATE TABLE pgsched.bench_t_plain (LIKE pgsched.runs INCLUDING DEFAULTS INCLUDING IDENTITY);
        ALTER TABLE pgsched.bench_t_plain ADD PRIMARY KEY (id)""",
    "+ claim index": """
        CREATE TABLE pgsched.bench_t_claim (LIKE pgsched.bench_t_plain INCLUDING ALL);
        CREATE INDEX ON pgsched.bench_t_claim (queue, priority, run_at, id) WHERE status = 'queued'""",
    "+ every index": """
        CREATE TABLE pgsched.bench_t_indexes (LIKE pgsched.runs INCLUDING DEFAULTS INCLUDING IDENTITY
                                              INCLUDING INDEXES)""",
    "+ every check (raw's table)": """
        CREATE TABLE pgsched.bench_t_checks (LIKE pgsched.runs INCLUDING ALL)""",
    "  checks as domains (prototype)": """
        CREATE TABLE pgsched.bench_t_domains (LIKE pgsched.runs INCLUDING DEFAULTS INCLUDING IDENTITY
                                              INCLUDING INDEXES)""",
    "pgsched.runs (triggers, FK)": "",
}
LOOP = """
CREATE FUNCTION pgsched.bench_insert_{name}(n integer) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        INSERT INTO {table} (task, args) VALUES ('noop', '{{}}'::jsonb);
    END LOOP;
END;
$$"""


# ---- part 1: per call


class Side:
    """One side's calls, measured in this process (PgQueuer's in a process of its venv)."""

    def __init__(self, call: Callable[[], object] | None, pgqueuer: ClientProcess | None = None) -> None:
        self.call = call
        self.pgqueuer = pgqueuer

    def measure(self, n: int) -> dict[str, float]:
        if self.pgqueuer is not None:
            return self.pgqueuer.call("measure", path="PgQueuer", n=n)
        assert self.call is not None
        for _ in range(WARMUP):
            self.call()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            self.call()
        return {"wall_us": (time.perf_counter() - wall) / n * 1e6, "cpu_us": (time.process_time() - cpu) / n * 1e6}


def set_synchronous_commit(watcher: psycopg.Connection[Any], mode: str) -> None:
    """For every session that did not SET it: a reload reaches idle backends before their next statement."""
    watcher.execute(sql.SQL("ALTER SYSTEM SET synchronous_commit = {}").format(sql.Literal(mode)))
    watcher.execute("SELECT pg_reload_conf()")
    time.sleep(0.2)


def wal_lsn(watcher: psycopg.Connection[Any]) -> str:
    return str(watcher.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0])  # type: ignore[index]


def per_call(
    watcher: psycopg.Connection[Any], sides: dict[str, tuple[Side, str]], calls: int, rounds: int
) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {}
    names = list(sides)
    for round_number in range(rounds):
        for mode in ("on", "off"):
            set_synchronous_commit(watcher, mode)
            for name in names[round_number % len(names) :] + names[: round_number % len(names)]:
                side, database = sides[name]
                before, lsn = backend_cpu_ns(watcher, [database]), wal_lsn(watcher)
                answer = side.measure(calls)
                used = cpu_between(before, backend_cpu_ns(watcher, [database]))
                wal = watcher.execute("SELECT %s::pg_lsn - %s::pg_lsn", (wal_lsn(watcher), lsn)).fetchone()[0]  # type: ignore[index]
                answer["wal_bytes"] = float(wal) / (calls + WARMUP)
                if used is not None:
                    answer["server_cpu_us"] = used / 1e3 / (calls + WARMUP)
                samples.setdefault(f"{name} | {mode}", []).append(answer)
        print(f"per call: round {round_number + 1}/{rounds} done", flush=True)
    set_synchronous_commit(watcher, "on")
    return samples


# ---- part 2: inside the server


def build_tables(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The variants' tables and their loop functions; returns label -> function name."""
    functions = {}
    for number, (label, ddl) in enumerate(TABLES.items()):
        if ddl:
            conn.execute(ddl.encode())
        table = re.search(r"CREATE TABLE (\S+)", ddl)
        name = f"v{number}"
        if label.strip().startswith("checks as domains"):
            as_domains(conn, table[1] if table else "")
        conn.execute(LOOP.format(name=name, table=table[1] if table else "pgsched.runs").encode())
        functions[label] = f"pgsched.bench_insert_{name}"
    return functions


def as_domains(conn: psycopg.Connection[Any], table: str) -> None:
    """``table`` (runs' columns and indexes, no checks) gets runs' checks back: each one-column
    check on a domain of its own, over the column's type, with the same constraint name; the
    checks of several columns on the table, as in runs."""
    checks = conn.execute(
        """
        SELECT c.conname, pg_get_constraintdef(c.oid), array_length(c.conkey, 1) = 1,
               a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_constraint AS c JOIN pg_attribute AS a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
        WHERE c.conrelid = 'pgsched.runs'::regclass AND c.contype = 'c'
        ORDER BY c.conname
        """
    ).fetchall()
    domains: dict[str, tuple[str, list[str]]] = {}
    for name, definition, single, column, type_name in checks:
        definition = definition.replace(" NOT VALID", "")
        if single:
            domains.setdefault(column, (type_name, []))[1].append(
                f"CONSTRAINT {name} " + re.sub(rf"\b{column}\b", "VALUE", definition)
            )
        else:
            conn.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} {definition}".encode())
    for column, (type_name, constraints) in domains.items():
        conn.execute(f"CREATE DOMAIN pgsched.bench_d_{column} {type_name} {' '.join(constraints)}".encode())
        conn.execute(f"ALTER TABLE {table} ALTER {column} TYPE pgsched.bench_d_{column}".encode())


def parsed_per_statement(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Characters of stored expression text a one-row INSERT into runs reads before its row."""
    checks, whens = conn.execute(
        """
        SELECT (SELECT sum(length(conbin::text)) FROM pg_constraint
                WHERE conrelid = 'pgsched.runs'::regclass AND contype = 'c'),
               (SELECT coalesce(sum(length(tgqual::text)), 0) FROM pg_trigger
                WHERE tgrelid = 'pgsched.runs'::regclass AND tgtype & 4 = 4 AND NOT tgisinternal)
        """
    ).fetchone()  # type: ignore[misc]
    return {"checks_chars": int(checks), "insert_trigger_when_chars": int(whens)}


def in_server(dsn: str, inserts: int, rounds: int) -> dict[str, list[float]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        functions = build_tables(conn)
        pid = conn.info.backend_pid
        samples: dict[str, list[float]] = {label: [] for label in functions}
        labels = list(functions)
        for label in labels:
            conn.execute(f"SELECT {functions[label]}(50)".encode())  # warm: plans and caches
        for round_number in range(rounds):
            for label in labels[round_number % len(labels) :] + labels[: round_number % len(labels)]:
                before = read_cpu_ns(pid)
                conn.execute(f"SELECT {functions[label]}({inserts})".encode())
                samples[label].append((read_cpu_ns(pid) - before) / 1e3 / inserts)
            conn.execute("TRUNCATE pgsched.runs")
            for ddl in TABLES.values():
                table = re.search(r"CREATE TABLE (\S+)", ddl)
                if table:
                    conn.execute(f"TRUNCATE {table[1]}".encode())
            print(f"in the server: round {round_number + 1}/{rounds} done", flush=True)
    return samples


def read_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


# ---- orchestration


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000, help="calls per side, mode and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (both parts)")
    parser.add_argument("--inserts", type=int, default=2000, help="one-row INSERTs per table and round (part 2)")
    parser.add_argument("--dsn", help="a server to create the databases on (default: embedded; WAL is then ours only)")
    add_pgqueuer_python(parser)
    return parser.parse_args()


def main() -> None:
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.types.json import Jsonb

    from benchmarks._server import fresh_database, server_dsn
    from pgsched import App

    args = parse_args()
    with (
        server_dsn(args.dsn) as server,
        fresh_database(server) as dsn,
        fresh_database(server) as raw_dsn,
        fresh_database(server) as bare_dsn,
        fresh_database(server, with_schema=False) as pgq_dsn,
        psycopg.connect(server, autocommit=True) as watcher,
    ):
        name = {each: conninfo_to_dict(each)["dbname"] for each in (dsn, raw_dsn, bare_dsn, pgq_dsn)}
        with psycopg.connect(raw_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER runs_inserted ON pgsched.runs")
        with psycopg.connect(bare_dsn, autocommit=True) as conn:
            conn.execute(TABLES["primary key only"].replace("bench_t_plain", BARE_TABLE).encode())
        app = App(dsn)

        @app.task
        def noop() -> None:
            pass

        app.enqueue("noop", {})  # the pool's connection exists before the first reading of its CPU

        raw = psycopg.connect(raw_dsn, autocommit=True)
        raw_trigger = psycopg.connect(dsn, autocommit=True)
        bare = psycopg.connect(bare_dsn, autocommit=True)
        sides: dict[str, tuple[Side, str]] = {
            "raw": (Side(lambda: raw.execute(RAW_SQL, ("noop", Jsonb({}))).fetchone()), name[raw_dsn]),
            "raw+trigger": (Side(lambda: raw_trigger.execute(RAW_SQL, ("noop", Jsonb({}))).fetchone()), name[dsn]),
            "App.enqueue": (Side(lambda: app.enqueue("noop", {})), name[dsn]),
            "bare": (Side(lambda: bare.execute(BARE_SQL, ("noop", Jsonb({}))).fetchone()), name[bare_dsn]),
        }
        pgqueuer = None
        if args.pgqueuer_python:
            pgqueuer = ClientProcess(ROOT, as_url(pgq_dsn), "", str(args.pgqueuer_python), BENCH_PGQUEUER="1")
            pgqueuer.call("hello")
            sides["PgQueuer"] = (Side(None, pgqueuer), name[pgq_dsn])
        try:
            calls = per_call(watcher, sides, args.calls, args.rounds)
        finally:
            if pgqueuer is not None:
                pgqueuer.close()
            app.close()
            for conn in (raw, raw_trigger, bare):
                conn.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            parsed = parsed_per_statement(conn)
        server = in_server(dsn, args.inserts, args.rounds)
    report(calls, server, parsed, args)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"


def report(
    calls: dict[str, list[dict[str, float]]],
    server: dict[str, list[float]],
    parsed: dict[str, int],
    args: argparse.Namespace,
) -> None:
    print(f"\n1. per call, {args.calls:,} calls x {args.rounds} rounds per side and mode: medians (min-max)")
    print(f"{'side | synchronous_commit':26s} {'wall us':>20s} {'client CPU':>10s} {'server CPU':>10s} {'WAL B':>7s}")
    figures: dict[str, Any] = {}
    for label in sorted(calls, key=lambda each: (each.split(" | ")[1] == "off", SIDES.index(each.split(" | ")[0]))):
        rows = calls[label]
        medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        figures[label] = {key: round(value, 1) for key, value in medians.items()}
        print(
            f"{label:26s} {spread([r['wall_us'] for r in rows]):>20s} {medians['cpu_us']:10.1f}"
            f" {medians.get('server_cpu_us', float('nan')):10.1f} {medians['wal_bytes']:7.0f}"
        )
    print("\nthe flush (wall on - wall off), and the rest of a call:")
    for side in SIDES:
        on, off = figures.get(f"{side} | on"), figures.get(f"{side} | off")
        if on and off:
            print(f"  {side:14s} flush {on['wall_us'] - off['wall_us']:7.1f} us, the rest {off['wall_us']:7.1f} us")
    print(f"\n2. inside the server: backend CPU per one-row INSERT, {args.inserts:,} x {args.rounds} rounds")
    for label, values in server.items():
        print(f"  {label:34s} {spread(values)} us")
    print(f"  stored expression text parsed per INSERT statement into runs: {parsed}")
    in_server_figures = {label: round(statistics.median(values), 1) for label, values in server.items()}
    print(json.dumps({"benchmark": "enqueue_costs", "per_call": figures, "in_server_us": in_server_figures} | parsed))


if __name__ == "__main__":
    main()

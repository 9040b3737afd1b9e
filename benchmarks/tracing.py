"""What do traces and correlated logs cost the drain? (issue 17)

    python -m benchmarks.tracing [--runs 20000] [--rounds 5] [--dsn SERVER_DSN]

Drains N queued no-op runs with one worker process, in these variants, interleaved round by
round (the machine is shared: each round's ratios compare drains minutes apart at most):

    base       the worker never imports OpenTelemetry; runs without a trace context (the reference)
    base+ctx   the same worker, every run queued inside a caller's span (its context stored)
    api        OpenTelemetry's API imported in the worker, no SDK; runs without a trace context
    api+ctx    the same, runs with a context: compare with base+ctx
    sdk+ctx    the SDK, a batch span processor and an exporter that drops every span
    json-logs  the base worker with --log-format json

The last line printed is one JSON object: each variant's drain rates, and its median ratio to the
same round's base and base+ctx.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from contextlib import AbstractContextManager, nullcontext

import psycopg
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from benchmarks._server import fresh_database, server_dsn
from benchmarks.throughput import BENCH_APP, drain

# variant: (worker app, worker options, whether runs are queued inside a caller's span)
VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "base": (BENCH_APP, (), False),
    "base+ctx": (BENCH_APP, (), True),
    "api": ("benchmarks.bench_app_otel:app", (), False),
    "api+ctx": ("benchmarks.bench_app_otel:app", (), True),
    "sdk+ctx": ("benchmarks.bench_app_otel_sdk:app", (), True),
    "json-logs": (BENCH_APP, ("--log-format", "json"), False),
}


def callers_span(traced: bool) -> AbstractContextManager[object]:
    """Where the runs are queued: inside a (remote, sampled) caller's span, or outside any."""
    if not traced:
        return nullcontext()
    context = SpanContext(random.getrandbits(128), random.getrandbits(64), is_remote=True, trace_flags=TraceFlags(1))
    return trace.use_span(NonRecordingSpan(context))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dsn", help="a server to create the database on (default: a throwaway embedded one)")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with server_dsn(args.dsn) as server, fresh_database(server) as dsn:
        for round_number in range(args.rounds):
            order = list(VARIANTS)
            random.shuffle(order)  # no variant always runs first (a cold cache) or last
            for name in order:
                app, options, traced = VARIANTS[name]
                with callers_span(traced):
                    rates[name].append(drain(dsn, args.runs, *options, worker_app=app))
            line = ", ".join(f"{name} {rates[name][-1]:,.0f}/s" for name in VARIANTS)
            print(f"round {round_number + 1}: {line}", flush=True)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("TRUNCATE pgsched.runs")

    ratios = {
        reference: {
            name: statistics.median(r / b for r, b in zip(rates[name], rates[reference]))
            for name in VARIANTS
            if name != reference
        }
        for reference in ("base", "base+ctx")
    }
    for reference, against in ratios.items():
        line = ", ".join(f"{name} {ratio:.3f}x" for name, ratio in against.items())
        print(f"median per-round ratio to {reference}: {line}", flush=True)
    print(json.dumps({"runs": args.runs, "rates": rates, "median_ratio": ratios}))


if __name__ == "__main__":
    main()

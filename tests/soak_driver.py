"""The chaos soak, shared by ``tests/test_soak.py`` (pytest -m soak) and ``benchmarks/soak.py``.

Real ``pgsched worker`` processes run ``tests.process_app:app``'s ``soak`` task: random
duration, random planned failures, every execution recorded (run id, attempt, pid, what it
planned) into the side table ``soak_executions``. While they drain, the driver SIGKILLs a
random worker every few seconds and starts a replacement, and restarts PostgreSQL once
(through a callback: the test and the benchmark stop and start their servers differently).
At the end it checks the invariants and returns the counts and every violation found; it
never asserts, so the caller decides (the test fails, the benchmark exits 1).

Synchronisation is by polling against deadlines (tests/support/waiting.py); the only sleep is
the one-second outage. The workers are tests/support/processes.py's, and every one started is
killed and reaped by :meth:`Soak.close`.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, TypeVar

import psycopg

from pgsched import App
from tests.support.processes import Process, Processes
from tests.support.waiting import wait_until

POLL_S = 0.05
TERMINAL = ("succeeded", "failed", "cancelled")
T = TypeVar("T")

CREATE_TABLE = (
    "CREATE TABLE soak_executions (key text NOT NULL, run_id bigint NOT NULL, attempt int NOT NULL,"
    " pid int NOT NULL, planned text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


class SoakError(Exception):
    """The soak could not go on (a deadline passed, a worker would not start)."""


@dataclass
class SoakConfig:
    runs: int = 3000
    workers: int = 4
    concurrency: int = 10
    lease_s: float = 2.0
    max_attempts: int = 4
    fail_rate: float = 0.25  # each attempt raises with this probability: 0.25**4 of runs end failed
    slow_rate: float = 0.02  # these attempts take 0.2-0.5 s instead of 0-50 ms
    kill_every_s: tuple[float, float] = (1.5, 3.0)
    restart_at: float = 0.4  # restart PostgreSQL once this share of the runs has finished
    outage_s: float = 1.0
    drain_timeout_s: float = 300.0
    seed: int | None = None
    # Leases lost by live workers around the PostgreSQL restart are violations (pgsched waits
    # one lease after a server start before rescuing). strict=False tolerates them within
    # restart_window_leases of the restart, to look at a regression without failing.
    strict: bool = True
    restart_window_leases: float = 3.0


class _Db:
    """The driver's own connection; reconnects (within a deadline) after PostgreSQL restarts."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None

    def rows(self, sql: str, params: Any = None, timeout: float = 60) -> list[tuple[Any, ...]]:
        def attempt() -> tuple[list[tuple[Any, ...]]]:  # a tuple: an empty result is an answer too
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                cursor = self._conn.execute(sql, params)
                return (cursor.fetchall() if cursor.description is not None else [],)
            except psycopg.OperationalError:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise

        return wait_until(
            attempt, timeout, f"the database to answer {sql[:60]!r}", poll=0.1, ignoring=(psycopg.OperationalError,)
        )[0]

    def scalar(self, sql: str, params: Any = None) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclass
class SoakResult:
    counts: dict[str, Any]
    violations: list[str]
    logs: dict[int, str] = field(default_factory=dict)  # pid -> worker log, for a failing report

    def report(self) -> str:
        return "\n".join(f"{name}: {value}" for name, value in self.counts.items())


class Soak:
    def __init__(
        self,
        dsn: str,
        config: SoakConfig,
        log_dir: Path,
        restart_postgres: Callable[[], None] | None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.dsn = dsn
        self.config = config
        self.log_dir = log_dir
        self.restart_postgres = restart_postgres
        self.say = say
        self.seed = config.seed if config.seed is not None else random.randrange(2**32)
        self.rng = random.Random(self.seed)
        self.db = _Db(dsn)
        self.workers = Processes(log_dir)
        self.procs = self.workers.started
        self.killed_at: dict[int, float] = {}  # pid -> wall clock (time.time()), comparable with now()
        self.kills = 0
        self.restarts = 0
        self.restart_windows: list[tuple[float, float]] = []
        self.violations: list[str] = []

    # ---- processes

    def _spawn(self, wait: bool = True) -> Process:
        c = self.config
        proc = self.workers.start(
            "worker",
            "--app",
            "tests.process_app:app",
            "--dsn",
            self.dsn,
            "--concurrency",
            str(c.concurrency),
            "--lease",
            str(c.lease_s),
            "--grace",
            "5",
            kind="soak-worker",
            env={"PGSCHED_DSN": self.dsn},
        )
        if wait:
            self._wait(lambda proc=proc: self._registered(proc), 30, f"worker pid {proc.pid} to register")
        return proc

    def _registered(self, proc: Process) -> bool:
        if proc.worker_id is None:
            proc.worker_id = self.db.scalar("SELECT id FROM pgsched.workers WHERE pid = %s", (proc.pid,))
        return proc.worker_id is not None

    def _live(self) -> list[Process]:
        return self.workers.expected_alive()

    def _wait(self, condition: Callable[[], T], timeout: float, what: str) -> T:
        try:
            return self.workers.wait_until(condition, timeout, what, poll=POLL_S)
        except AssertionError as error:  # the caller decides: the test fails, the benchmark exits 1
            raise SoakError(str(error)) from None

    def _check_unexpected_exits(self) -> None:
        try:
            self.workers.check_alive("the runs to finish")
        except AssertionError as error:
            raise SoakError(str(error)) from None

    def _kill_one(self) -> None:
        """SIGKILL a random registered worker and start its replacement (not waiting for it to
        register: the kill schedule does not depend on how fast Python starts)."""
        registered = [p for p in self._live() if self._registered(p)]
        if not registered:
            return
        victim = self.rng.choice(registered)
        self.killed_at[victim.pid] = time.time()
        victim.signal(signal.SIGKILL)
        victim.popen.wait(timeout=10)
        self.kills += 1
        self._spawn(wait=False)
        for proc in self._live():
            if proc.worker_id is None and time.monotonic() - proc.started_at > 30:
                raise SoakError(f"worker pid {proc.pid} did not register within 30s; its log:\n{proc.log()[-3000:]}")

    def _restart(self) -> None:
        assert self.restart_postgres is not None
        # A worker still starting up exits when it cannot reach the database (by design: a
        # start-up error, not an outage to ride out), so let the replacements register first.
        for proc in self._live():
            self._wait(lambda proc=proc: self._registered(proc), 30, f"worker pid {proc.pid} to register")
        self.say(f"restarting PostgreSQL ({self.config.outage_s:g}s outage)")
        began = time.time()
        self.restart_postgres()
        self.db.scalar("SELECT 1")  # reconnects
        back = time.time()
        self.restarts += 1
        self.restart_windows.append((began, back + self.config.restart_window_leases * self.config.lease_s))
        self.say(f"PostgreSQL back after {back - began:.1f}s")

    def close(self) -> None:
        """Kill and reap every worker still running (a no-op after a clean stop)."""
        self.workers.cleanup()
        self.db.close()

    # ---- the soak

    def run(self) -> SoakResult:
        c = self.config
        self.say(
            f"soak: {c.runs} runs, {c.workers} workers x concurrency {c.concurrency}, lease {c.lease_s:g}s, "
            f"max_attempts {c.max_attempts}, fail_rate {c.fail_rate}, seed {self.seed}"
        )
        self.db.rows(CREATE_TABLE)
        keys = [f"k{i}" for i in range(c.runs)]
        app = App(self.dsn)
        app.task(name="soak")(lambda key, fail_rate, slow_rate: None)
        try:
            ids = app.enqueue_many(
                "soak",
                [{"key": k, "fail_rate": c.fail_rate, "slow_rate": c.slow_rate} for k in keys],
                max_attempts=c.max_attempts,
            )
        finally:
            app.close()
        assert len(set(ids)) == c.runs

        started = time.monotonic()
        for _ in range(c.workers):
            self._spawn()
        next_kill = time.monotonic() + self.rng.uniform(*c.kill_every_s)
        restart_due = self.restart_postgres is not None
        last_report = time.monotonic()
        done = 0

        def all_finished() -> bool:
            nonlocal done
            done = self.db.scalar(
                "SELECT count(*) FROM pgsched.runs_all WHERE status IN ('succeeded', 'failed', 'cancelled')"
            )
            return done == c.runs

        def chaos() -> None:
            """Between two looks at the runs: the kill schedule, the one restart, a progress line."""
            nonlocal next_kill, restart_due, last_report
            self._check_unexpected_exits()
            now = time.monotonic()
            if restart_due and done >= c.restart_at * c.runs:
                restart_due = False
                self._restart()
            elif now >= next_kill:
                self._kill_one()
                next_kill = time.monotonic() + self.rng.uniform(*c.kill_every_s)
            if now - last_report >= 10:
                self.say(
                    f"  {done}/{c.runs} finished, {self.kills} kills, {self.restarts} restarts, {now - started:.0f}s"
                )
                last_report = now

        def stuck() -> str:
            return (
                f"only {done} of {c.runs} runs finished: "
                f"{self.db.rows('SELECT status::text, count(*) FROM pgsched.runs_all GROUP BY 1')}\n"
                f"{self.workers.diagnostics()}"
            )

        try:  # polled at the driver's own pace; no correctness depends on it
            wait_until(
                all_finished,
                c.drain_timeout_s - (time.monotonic() - started),
                f"all {c.runs} runs to finish",
                poll=0.1,
                check=chaos,
                diagnose=stuck,
            )
        except AssertionError as error:
            raise SoakError(str(error)) from None
        drained_s = time.monotonic() - started
        for proc in self._live():  # a replacement started late may not have registered yet
            self._wait(lambda proc=proc: self._registered(proc), 30, f"worker pid {proc.pid} to register")

        stopping = self._live()
        for proc in stopping:
            proc.signal(signal.SIGTERM)
        for proc in stopping:
            try:
                code = proc.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.violations.append(f"worker pid {proc.pid} did not stop within 30s of SIGTERM")
                continue
            if code != 0:
                self.violations.append(f"worker pid {proc.pid} exited with {code}, not 0")
            if "Traceback" in proc.log():
                self.violations.append(f"worker pid {proc.pid} logged a traceback")
        counts = self._check(drained_s)
        return SoakResult(counts, self.violations, {p.pid: p.log() for p in self.procs})

    # ---- invariants

    def _check(self, drained_s: float) -> dict[str, Any]:
        c = self.config
        v = self.violations
        pid_of = {p.worker_id: p.pid for p in self.procs}
        killed_at = {p.worker_id: self.killed_at[p.pid] for p in self.procs if p.pid in self.killed_at}

        def killed_before(worker_id: int, at: str) -> bool:
            """Was this worker killed before the sweep found its lease expired (mid-run)?"""
            when = killed_at.get(worker_id)
            return when is not None and when <= datetime.fromisoformat(at).timestamp()

        def in_restart(at: str) -> bool:
            t = datetime.fromisoformat(at).timestamp()
            return any(began <= t <= end for began, end in self.restart_windows)

        runs = self.db.rows(
            "SELECT id, args->>'key', status::text, attempt, max_attempts, worker_id, result, errors"
            " FROM pgsched.runs_all"
        )
        executions = self.db.rows("SELECT run_id, key, attempt, pid, planned FROM soak_executions")
        by_run: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for row in executions:
            by_run[row[0]].append(row)

        # Exactly one terminal state each; none lost.
        statuses = Counter(r[2] for r in runs)
        stuck = {s: n for s, n in statuses.items() if s not in TERMINAL}
        if stuck:
            v.append(f"runs not in a terminal state after the drain: {stuck}")
        if len(runs) != c.runs:
            v.append(f"{len(runs)} runs in the table, {c.runs} enqueued")
        keys = Counter(r[1] for r in runs)
        missing = {f"k{i}" for i in range(c.runs)} - set(keys)
        if missing:
            v.append(f"{len(missing)} keys lost, e.g. {sorted(missing)[:5]}")
        doubled = [k for k, n in keys.items() if n > 1]
        if doubled:
            v.append(f"{len(doubled)} keys in more than one run, e.g. {doubled[:5]}")

        lease_expired = killed_lease_expired = restart_lease_expired = planned_failures = 0
        executions_lost_to_kills = executions_lost_to_restart = 0
        db_errors: Counter[str] = Counter()
        runs_executed_more_than_once = runs_hit_by_kills = 0
        samples: dict[str, list[Any]] = defaultdict(list)

        def bad(kind: str, detail: Any) -> None:
            samples[kind].append(detail)

        for run_id, key, status, attempt, max_attempts, worker_id, result, errors in runs:
            execs = by_run.get(run_id, [])
            attempts = [e[2] for e in execs]
            if len(execs) > 1:
                runs_executed_more_than_once += 1
            # One execution per claimed attempt: never the same attempt twice, never more
            # executions than attempts, never an attempt the row does not know.
            if len(attempts) != len(set(attempts)):
                bad("the same attempt executed twice", (run_id, sorted(attempts)))
            if attempts and max(attempts) > attempt:
                bad("an execution of an attempt the row never reached", (run_id, attempt, sorted(attempts)))
            if any(e[1] != key for e in execs):
                bad("an execution recorded under another run's key", (run_id, key))
            errors = errors or []
            error_at = {e["attempt"]: e for e in errors}
            # Every attempt but a successful last one left exactly one error entry, in order.
            expected = list(range(1, attempt if status == "succeeded" else attempt + 1))
            if [e["attempt"] for e in errors] != expected:
                bad(
                    "errors[] does not list each failed attempt once",
                    (run_id, status, attempt, [e["attempt"] for e in errors]),
                )
            hit = False
            for entry in errors:
                kind = entry["type"]
                if kind == "LeaseExpired":
                    lease_expired += 1
                    if killed_before(entry["worker_id"], entry["at"]):
                        killed_lease_expired += 1
                        hit = True
                    elif in_restart(entry["at"]) and not c.strict:
                        restart_lease_expired += 1
                    else:
                        bad(
                            "a lease expired on a live worker" + (" (PostgreSQL restart)" * in_restart(entry["at"])),
                            (run_id, entry["attempt"], entry["worker_id"], entry["at"]),
                        )
                elif kind == "SoakFailure":
                    planned_failures += 1
                else:
                    db_errors[kind] += 1
            runs_hit_by_kills += hit
            # An execution whose outcome was lost is a duplicate; only a killed worker may
            # have produced it. A planned failure was executed by the worker that reported it.
            for _, _, exec_attempt, pid, planned in execs:
                entry = error_at.get(exec_attempt)
                if entry is None:
                    continue
                if entry["type"] == "LeaseExpired":
                    if pid != pid_of.get(entry["worker_id"]):
                        bad(
                            "an execution by a pid other than the worker whose lease expired",
                            (run_id, exec_attempt, pid, entry["worker_id"]),
                        )
                    elif killed_before(entry["worker_id"], entry["at"]):
                        executions_lost_to_kills += 1
                    else:
                        executions_lost_to_restart += 1  # its lease was flagged above
                elif entry["type"] == "SoakFailure":
                    if planned != "raise" or pid_of.get(entry["worker_id"]) != pid:
                        bad(
                            "a planned failure reported by another attempt or worker",
                            (run_id, exec_attempt, pid, planned, entry["worker_id"]),
                        )
            # No run completed by a stale attempt: the winning execution is the row's last
            # attempt, run by the process whose worker id the row holds, and it planned success.
            if status == "succeeded":
                won = [e for e in execs if e[2] == attempt]
                if (
                    not isinstance(result, dict)
                    or result.get("attempt") != attempt
                    or result.get("pid") != pid_of.get(worker_id)
                    or len(won) != 1
                    or won[0][3] != result.get("pid")
                    or won[0][4] != "ok"
                ):
                    bad(
                        "succeeded by a stale or foreign attempt",
                        (run_id, attempt, worker_id, pid_of.get(worker_id), result, won),
                    )
            elif status == "failed":
                if attempt != max_attempts:
                    bad("failed before its attempts were used up", (run_id, attempt, max_attempts))
                if result is not None:
                    bad("a failed run with a result", (run_id, result))
        for kind, details in samples.items():
            v.append(f"{kind}: {len(details)} runs, e.g. {details[:3]}")

        discarded = sum(p.log().count("outcome discarded") for p in self.procs)
        return {
            "runs": len(runs),
            "succeeded": statuses.get("succeeded", 0),
            "failed": statuses.get("failed", 0),
            "cancelled": statuses.get("cancelled", 0),
            "executions": len(executions),
            "duplicate_executions": executions_lost_to_kills + executions_lost_to_restart,
            "duplicate_executions_by_killed_workers": executions_lost_to_kills,
            "duplicate_executions_by_live_workers_in_restart": executions_lost_to_restart,
            "runs_executed_more_than_once": runs_executed_more_than_once,
            "runs_hit_by_kills": runs_hit_by_kills,
            "lease_expired_attempts": lease_expired,
            "lease_expired_on_killed_workers": killed_lease_expired,
            "lease_expired_on_live_workers_in_restart": restart_lease_expired,
            "planned_failures": planned_failures,
            "database_errors": dict(db_errors),
            "outcomes_discarded_by_fence": discarded,
            "kills": self.kills,
            "restarts": self.restarts,
            "workers_started": len(self.procs),
            "drain_s": round(drained_s, 1),
            "seed": self.seed,
        }


def counts_json(result: SoakResult) -> str:
    return json.dumps({**result.counts, "violations": len(result.violations)})

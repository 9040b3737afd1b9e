"""pgsched through a real PgBouncer in transaction mode, in front of the suite's PostgreSQL.

PgBouncer (Debian's ``pgbouncer`` package; skipped when its binary is absent) runs with a
server pool of two connections per database, so consecutive transactions of different
clients share server connections: a prepared statement or a session setting that leaked
would meet another client. What goes through it: enqueue (single, async, COPY), the CLI,
the API, worker claims/completions/heartbeats/sweeps, the beat's firings. What must not:
LISTEN and the beat leader's session lock, which use ``PGSCHED_DIRECT_DSN``; without one
the worker polls and the beat refuses to start.

Which server sessions came through PgBouncer is read from its admin console (SHOW SERVERS:
the local port of each of its server connections), so "direct" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from litestar.testing import TestClient
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from typer.testing import CliRunner

from pgsched import App
from pgsched.api import ApiSettings, create_app
from pgsched.api import keys as api_keys
from pgsched.beat import BeatOptions
from pgsched.cli.main import cli
from pgsched.errors import ConfigError
from pgsched.sql import queries
from pgsched.worker import Worker
from tests.support.db import empty_tables, scalar
from tests.support.processes import Process, Processes, free_port
from tests.support.waiting import wait_until
from tests.support.workers import CREATE_EXECUTIONS

POOL_SIZE = 2  # server connections per database: small, so clients' transactions share them
UNPRIVILEGED_USER = "pgsched-pg"  # the user tests/pg_ctl_unprivileged runs PostgreSQL as
# pg_locks rows of the beat leader's advisory lock (a bigint key: classid = high, objid = low 32 bits).
BEAT_LOCK = (
    "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND l.classid::bigint = (hashtextextended('pgsched.beat', 0) >> 32) & 4294967295"
    " AND l.objid::bigint = hashtextextended('pgsched.beat', 0) & 4294967295"
)

PGBOUNCER_INI = """\
[databases]
* = host={pg_host} port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
admin_users = {user}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
; "options" is not ignored (a default PgBouncer refuses it): a startup option sent through
; the pooler fails the connection here too.
ignore_startup_parameters = extra_float_digits
"""


# ---- PgBouncer


def find_pgbouncer() -> str | None:
    """$PGSCHED_TEST_PGBOUNCER, else on PATH, else Debian's /usr/sbin (not on a non-login PATH)."""
    chosen = os.environ.get("PGSCHED_TEST_PGBOUNCER")
    if chosen:
        return chosen
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Bouncer:
    popen: subprocess.Popen[bytes]
    port: int
    user: str
    workdir: Path

    def dsn(self, direct_dsn: str) -> str:
        """``direct_dsn`` with PgBouncer as its host and port."""
        return make_conninfo(direct_dsn, host="127.0.0.1", port=str(self.port))

    def log(self) -> str:
        return (self.workdir / "pgbouncer.log").read_text(errors="replace")

    def server_ports(self) -> set[int]:
        """The local ports of PgBouncer's server connections (what PostgreSQL sees as client_port).
        The admin console speaks only the simple query protocol: a client-side-binding cursor."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            dbname="pgbouncer",
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
        ) as admin:
            cursor = admin.execute("SHOW SERVERS")
            column = [c.name for c in cursor.description or ()].index("local_port")
            return {int(row[column]) for row in cursor.fetchall()}


def unprivileged(workdir: Path) -> list[str]:
    """PgBouncer refuses to run as root: as root, hand ``workdir`` to an unprivileged user and
    return the command prefix that runs as them (as tests/pg_ctl_unprivileged does for PostgreSQL)."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", UNPRIVILEGED_USER], check=True
        )
        account = pwd.getpwnam(UNPRIVILEGED_USER)
    for path in (workdir, *workdir.iterdir()):
        os.chown(path, account.pw_uid, account.pw_gid)
    return ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups"]


def start_pgbouncer(binary: str, pg_host: str, pg_port: int, user: str) -> Bouncer:
    workdir = Path(tempfile.mkdtemp(prefix="pgsched-pgbouncer-"))
    port = free_port()
    (workdir / "pgbouncer.ini").write_text(
        PGBOUNCER_INI.format(
            pg_host=pg_host, pg_port=pg_port, port=port, workdir=workdir, user=user, pool_size=POOL_SIZE
        )
    )
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.log").touch()
    prefix = unprivileged(workdir)
    with open(workdir / "pgbouncer.log", "wb") as log:
        popen = subprocess.Popen(
            [*prefix, binary, str(workdir / "pgbouncer.ini")],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    bouncer = Bouncer(popen, port, user, workdir)

    def answers() -> bool:
        with psycopg.connect(bouncer.dsn(f"user={user} dbname=postgres"), prepare_threshold=None) as conn:
            return conn.execute("SELECT 1").fetchone() is not None

    def running() -> None:
        if popen.poll() is not None:
            raise AssertionError(f"pgbouncer exited with {popen.returncode}:\n{bouncer.log()}")

    try:
        wait_until(
            answers,
            15,
            "pgbouncer to answer",
            poll=0.05,
            check=running,
            diagnose=bouncer.log,
            ignoring=(psycopg.OperationalError,),
        )
    except AssertionError:
        stop_pgbouncer(bouncer)
        raise
    return bouncer


def stop_pgbouncer(bouncer: Bouncer) -> None:
    if bouncer.popen.poll() is None:
        bouncer.popen.terminate()  # SIGTERM: PgBouncer's immediate shutdown
        try:
            bouncer.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            bouncer.popen.kill()
            bouncer.popen.wait()
    shutil.rmtree(bouncer.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def bouncer(postgresql_proc: Any) -> Iterator[Bouncer]:
    binary = find_pgbouncer()
    if binary is None:
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer, or set PGSCHED_TEST_PGBOUNCER)")
    started = start_pgbouncer(binary, postgresql_proc.host, postgresql_proc.port, postgresql_proc.user)
    try:
        yield started
    finally:
        stop_pgbouncer(started)


@dataclass
class Db:
    """This test's database: ``direct`` reaches PostgreSQL, ``pooled`` goes through PgBouncer;
    ``conn`` is a direct connection for the test's own reads."""

    direct: str
    pooled: str
    conn: psycopg.Connection[Any]
    bouncer: Bouncer

    def scalar(self, sql: str, params: Any = None) -> Any:
        return scalar(self.conn, sql, params)

    def status_of(self, run_id: int) -> str:
        return self.scalar("SELECT status::text FROM pgsched.runs_all WHERE id = %s", (run_id,))

    def count_runs(self, status: str | None = None) -> int:
        return self.scalar(
            "SELECT count(*) FROM pgsched.runs_all WHERE %(s)s::text IS NULL OR status::text = %(s)s", {"s": status}
        )

    def direct_sessions(self) -> list[str]:
        """The last query of every other session of this database that did not come through
        PgBouncer. pg_stat_activity is read first: a server connection PgBouncer opens after it
        cannot be mistaken for a direct one."""
        sessions = self.conn.execute(
            "SELECT client_port, query FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
        through_pgbouncer = self.bouncer.server_ports()
        return sorted(query for port, query in sessions if port not in through_pgbouncer)


@pytest.fixture
def db(module_dsn: str, bouncer: Bouncer) -> Iterator[Db]:
    empty_tables(module_dsn)
    with psycopg.connect(module_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS executions")
        conn.execute(CREATE_EXECUTIONS)
        yield Db(module_dsn, bouncer.dsn(module_dsn), conn, bouncer)


# ---- processes


class PooledProcesses(Processes):
    """`pgsched` processes of one test, with exactly the pooler settings it gives each."""

    def worker(self, *options: str, env: dict[str, str]) -> Process:
        return self.start("worker", "--app", "tests.pgbouncer_app:app", *options, kind="worker", env=env)


@pytest.fixture
def processes(db: Db, tmp_path: Path) -> Iterator[PooledProcesses]:
    spawner = PooledProcesses(tmp_path, db.conn)
    try:
        yield spawner
    finally:
        spawner.cleanup()


def registered_worker(db: Db, processes: PooledProcesses, worker: Process) -> int:
    return processes.wait_until(
        lambda: db.scalar("SELECT id FROM pgsched.workers WHERE pid = %s", (worker.pid,)),
        20,
        f"worker pid {worker.pid} to register",
    )


def start_latency(db: Db, processes: PooledProcesses, key: str) -> float:
    """Seconds from a plain SQL insert's commit (at most) to its task starting."""
    inserted_at = db.scalar(
        "INSERT INTO pgsched.runs (task, args) VALUES ('record', jsonb_build_object('key', %s::text))"
        " RETURNING clock_timestamp()",
        (key,),
    )
    executed_at = processes.wait_until(
        lambda: db.scalar("SELECT at FROM executions WHERE key = %s", (key,)), 10, f"run {key} to execute"
    )
    return float((executed_at - inserted_at).total_seconds())


def run_all_through_pgbouncer(db: Db, processes: PooledProcesses, prefix: str, count: int) -> None:
    """Enqueue ``count`` runs of ``record`` (keys ``{prefix}-0`` ...) through PgBouncer; wait
    until all of them have succeeded."""
    app = App(db.pooled, pgbouncer=True)
    try:
        ids = app.enqueue_many("record", [{"key": f"{prefix}-{i}"} for i in range(count)])
    finally:
        app.close()
    processes.wait_until(lambda: db.count_runs("succeeded") == len(ids), 60, f"{count} runs to succeed")


def assert_clean_exit(worker: Process) -> str:
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(15) == 0, worker.log()[-4000:]
    log = worker.log()
    for trouble in ("Traceback", "prepared statement", "unsupported startup parameter", "failed ("):
        assert trouble not in log, log[-6000:]
    return log


# ---- the test bed itself


def test_this_pgbouncer_breaks_psycopgs_automatic_prepared_statements(db: Db) -> None:
    """The control: with psycopg's default prepare threshold, two clients taking turns collide
    on the statement name each prepares on the shared server connection."""
    with psycopg.connect(db.pooled, autocommit=True) as first, psycopg.connect(db.pooled, autocommit=True) as second:
        with pytest.raises((psycopg.errors.DuplicatePreparedStatement, psycopg.errors.InvalidSqlStatementName)):
            for i in range(10):
                for conn in (first, second):
                    conn.execute("SELECT count(*) FROM pgsched.runs_all WHERE id > %s", (i,)).fetchone()


# ---- enqueue, CLI, API


def test_enqueue_async_enqueue_and_copy_enqueue_many_work_through_pgbouncer(
    db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGSCHED_DSN", db.pooled)
    monkeypatch.setenv("PGSCHED_PGBOUNCER", "1")
    app = App()  # everything from the environment, as a deployed app would
    app.task(name="record")(lambda key: key)
    try:
        assert app.pgbouncer and app.direct_dsn is None
        # Concurrent callers: the app's pool hands out several connections at once, whose
        # transactions PgBouncer interleaves on its two server connections.
        with ThreadPoolExecutor(max_workers=4) as threads:
            singles = list(threads.map(lambda i: app.enqueue("record", {"key": f"single-{i}"}), range(40)))
            bulks = list(
                threads.map(
                    lambda b: app.enqueue_many("record", [{"key": f"bulk-{b}-{i}"} for i in range(500)]), range(4)
                )
            )

        async def enqueue_concurrently() -> list[int]:
            try:
                return list(
                    await asyncio.gather(*(app.enqueue_async("record", {"key": f"async-{i}"}) for i in range(40)))
                )
            finally:
                await app.aclose()

        asyncs = asyncio.run(enqueue_concurrently())
    finally:
        app.close()

    bulk_ids = [run_id for ids in bulks for run_id in ids]
    assert len(set(singles + asyncs + bulk_ids)) == 40 + 40 + 2000
    assert db.count_runs("queued") == 2080
    assert db.scalar("SELECT count(DISTINCT args->>'key') FROM pgsched.runs_all") == 2080


def test_waiting_on_a_run_through_pgbouncer_listens_on_the_direct_dsn(db: Db) -> None:
    app = App(db.pooled, direct_dsn=db.direct)
    record = app.task(name="record")(lambda key: key)
    try:
        handle = record.delay("through the pooler")
        with ThreadPoolExecutor(max_workers=1) as thread:
            waiting = thread.submit(handle.get, 20)
            wait_until(lambda: db.scalar("SELECT awaited FROM pgsched.runs_all"), 10, "the waiter to mark the run")
            db.conn.execute(
                "UPDATE pgsched.runs SET status = 'succeeded', result = '\"done\"', finished_at = now() WHERE id = %s",
                (handle.id,),
            )
            assert waiting.result(timeout=20) == "done"
    finally:
        app.close()


def test_waiting_through_pgbouncer_without_a_direct_dsn_is_refused(db: Db) -> None:
    app = App(db.pooled, pgbouncer=True)
    try:
        run_id = app.enqueue("record", {"key": "k"})
        with pytest.raises(ConfigError, match=r"waiting on a run needs LISTEN.*set a direct DSN"):
            app.run(run_id).get(timeout=1)
    finally:
        app.close()


def test_enqueue_many_in_the_callers_transaction_through_pgbouncer_commits_or_rolls_back(db: Db) -> None:
    app = App(db.pooled, pgbouncer=True)
    with psycopg.connect(db.pooled, prepare_threshold=None) as conn:
        app.enqueue_many("record", [{"key": f"kept-{i}"} for i in range(100)], conn=conn)
        conn.commit()
        app.enqueue_many("record", [{"key": f"dropped-{i}"} for i in range(100)], conn=conn)
        conn.rollback()
    assert db.scalar("SELECT count(*) FROM pgsched.runs_all WHERE args->>'key' LIKE 'kept-%'") == 100
    assert db.count_runs() == 100


def test_cli_commands_work_through_pgbouncer(db: Db) -> None:
    runner = CliRunner()
    for i in range(3):
        result = runner.invoke(
            cli, ["enqueue", "record", "--args", json.dumps({"key": f"cli-{i}"}), "--dsn", db.pooled]
        )
        assert result.exit_code == 0, result.output
    listed = runner.invoke(cli, ["runs", "list", "--json", "--dsn", db.pooled])
    assert listed.exit_code == 0, listed.output
    assert sorted(run["task"] for run in json.loads(listed.output)) == ["record"] * 3
    stats = runner.invoke(cli, ["stats", "--json", "--dsn", db.pooled])
    assert stats.exit_code == 0, stats.output
    assert {row["queue"]: row["queued"] for row in json.loads(stats.output)} == {"default": 3}


def test_the_api_creates_and_reads_runs_through_pgbouncer(db: Db) -> None:
    key, _ = api_keys.create_key(db.conn, "write", name="pgbouncer")
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(ApiSettings(dsn=db.pooled, key_cache_s=0.0))) as client:
        created = [
            client.post("/runs", json={"task": "record", "args": {"key": f"api-{i}"}}, headers=headers)
            for i in range(12)
        ]
        assert [r.status_code for r in created] == [201] * 12, created[0].text
        batch = client.post(
            "/runs/batch", json={"task": "record", "args": [{"key": f"batch-{i}"} for i in range(300)]}, headers=headers
        )
        assert batch.status_code == 201, batch.text
        assert len(batch.json()["ids"]) == 300
        for response in created:
            got = client.get(f"/runs/{response.json()['id']}", headers=headers)
            assert (got.status_code, got.json()["status"]) == (200, "queued"), got.text
        listed = client.get("/runs?task=record&status=queued", headers=headers)
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["items"]) > 0
    assert db.count_runs("queued") == 312


def test_concurrent_posts_through_pgbouncer_need_no_setting(db: Db) -> None:
    """16 callers at once share PgBouncer's 2 server connections: a statement the API prepared on
    one would be missing on the other ("prepared statement _pg3_4 does not exist")."""
    key, _ = api_keys.create_key(db.conn, "write", name="pgbouncer-concurrent")
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(ApiSettings(dsn=db.pooled, key_cache_s=0.0))) as client:

        def post(i: int) -> int:
            return client.post("/runs", json={"task": "record", "args": {"key": f"c-{i}"}}, headers=headers).status_code

        with ThreadPoolExecutor(16) as callers:
            codes = list(callers.map(post, range(400)))
    assert codes == [201] * 400, sorted(set(codes))
    assert db.count_runs("queued") == 400


# ---- the worker


@pytest.mark.slow
def test_worker_through_pgbouncer_with_a_direct_dsn_drains_runs_and_wakes_on_notify(
    db: Db, processes: PooledProcesses
) -> None:
    # A poll every 30 s: runs that start within a second were woken by a notification.
    worker = processes.worker(
        "--poll-interval", "30", "--concurrency", "8", env={"PGSCHED_DSN": db.pooled, "PGSCHED_DIRECT_DSN": db.direct}
    )
    registered_worker(db, processes, worker)
    run_all_through_pgbouncer(db, processes, "drain", 300)
    assert db.scalar("SELECT count(DISTINCT key) FROM executions WHERE key LIKE 'drain-%'") == 300
    assert db.scalar("SELECT count(*) FROM executions WHERE pid = %s", (worker.pid,)) == 300

    latencies = [start_latency(db, processes, f"wake-{i}") for i in range(5)]
    assert max(latencies) < 1.0, f"start latencies after insert: {latencies}"
    # Only the LISTEN session went around PgBouncer (where the worker also says it waits, with
    # a session lock: schema 0027); claims, completions, heartbeats and the tasks' own writes
    # all went through it.
    [last_statement] = db.direct_sessions()
    assert last_statement == queries["worker_listen"] or "pg_advisory_" in last_statement, last_statement

    log = assert_clean_exit(worker)
    assert "no LISTEN" not in log
    assert db.scalar("SELECT count(*) FROM pgsched.workers") == 0


def test_a_queues_max_running_holds_for_workers_claiming_through_pgbouncer(db: Db, processes: PooledProcesses) -> None:
    # The limited claim is a transaction (its row lock lasts until the claim commits), which
    # transaction pooling keeps on one server connection.
    db.conn.execute("INSERT INTO pgsched.queues (name, max_running) VALUES ('default', 2)")
    env = {"PGSCHED_DSN": db.pooled, "PGSCHED_DIRECT_DSN": db.direct}
    pair = [processes.worker("--concurrency", "4", env=env) for _ in range(2)]
    for worker in pair:
        registered_worker(db, processes, worker)
    for i in range(16):
        args = {"key": f"limited-{i}", "seconds": 0.1}
        db.conn.execute("INSERT INTO pgsched.runs (task, args) VALUES ('slow', %s)", (Jsonb(args),))
    samples: list[int] = []

    def drained() -> bool:
        samples.append(db.count_runs("running"))
        return db.count_runs("succeeded") == 16

    processes.wait_until(drained, 60, "16 runs of a queue limited to 2 to succeed", poll=0.005)
    assert max(samples) == 2, f"running counts sampled: max {max(samples)}"
    for worker in pair:
        assert_clean_exit(worker)


def test_a_rate_a_task_limit_and_a_key_limit_hold_for_workers_claiming_through_pgbouncer(
    db: Db, processes: PooledProcesses
) -> None:
    # The bucket is spent in the limited claim's transaction (the row locks, then the claim),
    # which transaction pooling keeps on one server connection.
    db.conn.execute("INSERT INTO pgsched.queues (name, rate, burst, key_max_running) VALUES ('default', '10/s', 2, 1)")
    db.conn.execute("INSERT INTO pgsched.task_settings (task, max_running) VALUES ('slow', 3)")
    env = {"PGSCHED_DSN": db.pooled, "PGSCHED_DIRECT_DSN": db.direct}
    pair = [processes.worker("--concurrency", "4", env=env) for _ in range(2)]
    for worker in pair:
        registered_worker(db, processes, worker)
    for i in range(20):
        args = {"key": f"rated-{i}", "seconds": 0.05}
        db.conn.execute(
            "INSERT INTO pgsched.runs (task, args, concurrency_key) VALUES ('slow', %s, %s)",
            (Jsonb(args), f"k{i % 4}"),
        )
    samples: list[int] = []

    def drained() -> bool:
        samples.append(db.count_runs("running"))
        return db.count_runs("succeeded") == 20

    processes.wait_until(drained, 60, "20 rated runs to succeed", poll=0.005)
    assert max(samples) <= 3, f"running counts sampled: max {max(samples)}"
    span = db.scalar("SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM pgsched.runs_all")
    assert span >= (20 - 2) / 10 * 0.97, span  # the burst, then one start per token
    # key_max_running 1: a key's next run starts only after its previous one has finished.
    overlapping = db.scalar(
        "SELECT count(*) FROM pgsched.runs_all a JOIN pgsched.runs_all b ON a.concurrency_key = b.concurrency_key"
        " AND a.id < b.id AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
    )
    assert overlapping == 0
    for worker in pair:
        assert_clean_exit(worker)


@pytest.mark.slow
def test_worker_through_pgbouncer_without_a_direct_dsn_polls_and_warns_once(db: Db, processes: PooledProcesses) -> None:
    # --poll-interval 30 is capped by the fallback poll interval (default 0.5 s) without LISTEN.
    worker = processes.worker(
        "--poll-interval", "30", "--concurrency", "8", env={"PGSCHED_DSN": db.pooled, "PGSCHED_PGBOUNCER": "1"}
    )
    registered_worker(db, processes, worker)
    run_all_through_pgbouncer(db, processes, "polled", 200)

    latencies = [start_latency(db, processes, f"poll-{i}") for i in range(4)]
    assert max(latencies) < 1.5, f"start latencies after insert with a 0.5 s poll: {latencies}"
    assert db.direct_sessions() == []  # no LISTEN, nothing else around PgBouncer

    log = assert_clean_exit(worker)
    assert log.count("no LISTEN") == 1, log[-4000:]
    assert "set PGSCHED_DIRECT_DSN" in log


@pytest.mark.slow
def test_cancelling_a_running_run_reaches_a_worker_without_listen_through_its_heartbeat(
    db: Db, processes: PooledProcesses
) -> None:
    # A 1.5 s lease: the heartbeat, which also reads cancel requests, runs every 0.5 s.
    worker = processes.worker("--lease", "1.5", env={"PGSCHED_DSN": db.pooled, "PGSCHED_PGBOUNCER": "1"})
    registered_worker(db, processes, worker)
    run_id = db.scalar(
        'INSERT INTO pgsched.runs (task, args) VALUES (\'slow\', \'{"key": "long", "seconds": 60}\') RETURNING id'
    )
    processes.wait_until(
        lambda: db.scalar("SELECT count(*) FROM executions WHERE key = 'long'"), 10, "the long run to start"
    )

    asked = time.monotonic()
    assert db.scalar("SELECT pgsched.cancel(%s)", (run_id,)) == "running"
    processes.wait_until(lambda: db.status_of(run_id) == "cancelled", 10, "the running run to be cancelled")
    assert time.monotonic() - asked < 3
    assert db.conn.execute("SELECT event FROM executions WHERE key = 'long'").fetchall() == [("start",)]
    assert_clean_exit(worker)


# ---- the beat


@pytest.mark.slow
def test_beat_through_pgbouncer_leads_on_the_direct_dsn_and_fires_a_job(db: Db, processes: PooledProcesses) -> None:
    app = App(db.pooled, pgbouncer=True)
    try:
        app.schedule("tick", task="record", every=1, args={"key": "tick"})
    finally:
        app.close()
    beat = processes.start(
        "beat", "--lock-interval", "0.2", env={"PGSCHED_DSN": db.pooled, "PGSCHED_DIRECT_DSN": db.direct}
    )
    processes.wait_until(lambda: db.scalar("SELECT pid FROM pgsched.beat_status") == beat.pid, 20, "the beat to lead")
    processes.wait_until(
        lambda: db.scalar("SELECT count(*) FROM pgsched.runs_all WHERE job_id IS NOT NULL") >= 2,
        10,
        "the job to fire twice",
    )
    # The leader's lock is held by a direct session (with the LISTEN beside it), not by a
    # server connection PgBouncer would hand to other clients.
    holders = [
        port
        for (port,) in db.conn.execute(
            f"SELECT a.client_port FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid) WHERE {BEAT_LOCK}"
        )
    ]
    assert len(holders) == 1
    assert holders[0] not in db.bouncer.server_ports()
    assert len(db.direct_sessions()) == 2  # the lock connection and the LISTEN

    beat.signal(signal.SIGTERM)
    assert beat.wait_exit(15) == 0, beat.log()[-4000:]
    assert "Traceback" not in beat.log(), beat.log()[-4000:]
    assert db.scalar(f"SELECT count(*) FROM pg_locks AS l WHERE {BEAT_LOCK}") == 0
    assert db.scalar("SELECT count(*) FROM pgsched.beat_status") == 0  # it resigned


@pytest.mark.parametrize(
    "command", [["beat"], ["worker", "--app", "tests.pgbouncer_app:app", "--beat"]], ids=["beat", "worker --beat"]
)
def test_beat_without_a_direct_dsn_refuses_to_start_through_pgbouncer(
    db: Db, processes: PooledProcesses, command: list[str]
) -> None:
    refused = processes.start(*command, env={"PGSCHED_DSN": db.pooled, "PGSCHED_PGBOUNCER": "1"})
    assert refused.wait_exit(30) == 1
    lines = refused.log().strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: the beat cannot lead through PgBouncer: set PGSCHED_DIRECT_DSN"), lines
    assert db.scalar("SELECT count(*) FROM pgsched.beat_status") == 0


def test_a_worker_hosting_a_beat_refuses_a_pooled_dsn_without_a_direct_one() -> None:
    with pytest.raises(ConfigError, match="PGSCHED_DIRECT_DSN"):
        Worker(App("host=127.0.0.1 port=6432", pgbouncer=True), beat=BeatOptions())


# ---- configuration


def test_a_direct_dsn_implies_the_dsn_is_pooled_unless_said_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSCHED_PGBOUNCER", raising=False)
    monkeypatch.delenv("PGSCHED_DIRECT_DSN", raising=False)
    assert App("dbname=x").pgbouncer is False
    assert App("dbname=x", direct_dsn="dbname=y").pgbouncer is True
    monkeypatch.setenv("PGSCHED_DIRECT_DSN", "dbname=y")
    assert (App("dbname=x").pgbouncer, App("dbname=x").direct_dsn) == (True, "dbname=y")
    monkeypatch.setenv("PGSCHED_PGBOUNCER", "off")
    assert App("dbname=x").pgbouncer is False
    assert App("dbname=x", pgbouncer=True).pgbouncer is True


def test_a_pgbouncer_setting_that_is_not_a_boolean_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSCHED_PGBOUNCER", "maybe")
    with pytest.raises(ConfigError, match=r"PGSCHED_PGBOUNCER must be 1 or 0 .* got 'maybe'"):
        _ = App("dbname=x").pgbouncer

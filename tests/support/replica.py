"""A real streaming replica of the test session's server: ``pg_basebackup -R`` of the running
primary into a new data directory, then a second postmaster on another port (hot standby),
run as the same unprivileged user as the primary when the suite runs as root (PostgreSQL
refuses root; see tests/pg_ctl_unprivileged)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg

from tests.support.processes import free_port

WRAPPER = Path(__file__).resolve().parents[1] / "pg_ctl_unprivileged"
SERVER_USER = "pgsched-pg"  # the wrapper's


def _bin(name: str) -> str:
    return str(Path(os.environ["PGSCHED_REAL_PG_CTL"]).parent / name)


def _as_server_user(argv: list[str]) -> list[str]:
    if os.getuid() != 0:
        return argv
    return ["setpriv", f"--reuid={SERVER_USER}", f"--regid={pwd.getpwnam(SERVER_USER).pw_gid}", "--init-groups", *argv]


def _owned_by_server_user(directory: Path) -> None:
    """``directory``, new, owned by the server's user, reachable through its parents."""
    directory.mkdir(parents=True)
    if os.getuid() != 0:
        return
    shutil.chown(directory, SERVER_USER, SERVER_USER)
    directory.chmod(0o700)
    for parent in directory.parents:
        if parent != Path("/"):
            parent.chmod(parent.stat().st_mode | 0o001)


@dataclass
class Replica:
    """A hot standby streaming from the session's server."""

    data: Path
    log: Path
    port: int
    primary_port: int
    user: str

    def dsn(self, dbname: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={dbname}"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.data} "
        options += "-c hot_standby=on -c max_connections=200 -c fsync=off"
        subprocess.run(
            [str(WRAPPER), "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log), "-o", options],
            check=True,
            capture_output=True,
        )

    def start_if_stopped(self) -> None:
        status = subprocess.run([str(WRAPPER), "status", "-D", str(self.data)], capture_output=True)
        if status.returncode != 0:
            self.start()

    def stop(self) -> None:
        subprocess.run([str(WRAPPER), "stop", "-w", "-m", "fast", "-D", str(self.data)], capture_output=True)

    def pause_replay(self, dbname: str) -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_pause()")

    def resume_replay(self, dbname: str) -> None:
        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute("SELECT pg_wal_replay_resume()")

    def wait_for(self, dbname: str, timeout: float = 30.0) -> None:
        """Until the database exists on the replica (its CREATE DATABASE replayed) and replay
        has caught up with everything the primary has written so far (its insert position: with
        synchronous_commit off, a commit reaches the WAL a moment after it returns)."""
        with psycopg.connect(f"host=127.0.0.1 port={self.primary_port} user={self.user} dbname={dbname}") as primary:
            target = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]  # type: ignore[index]
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.dsn(dbname), connect_timeout=2) as conn:
                    row = conn.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
                    if row and row[0]:
                        return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the replica did not catch up: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)


@contextmanager
def streaming_replica(postgresql_proc: Any, directory: Path) -> Iterator[Replica]:
    """A replica of ``postgresql_proc``'s whole cluster, started; stopped afterwards."""
    replica = Replica(
        data=directory / "replica",
        log=directory / "replica.log",
        port=free_port(),
        primary_port=postgresql_proc.port,
        user=postgresql_proc.user,
    )
    _owned_by_server_user(replica.data)
    backup = [_bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(postgresql_proc.port), "-U", postgresql_proc.user]
    backup += ["-D", str(replica.data), "-R", "-X", "stream", "--checkpoint=fast"]
    subprocess.run(_as_server_user(backup), check=True, capture_output=True, cwd="/")
    replica.start()
    try:
        yield replica
    finally:
        replica.stop()

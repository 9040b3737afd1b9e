"""pgsched.beat.leader_status: the library's answer to "which beat leads?", which
`pgsched beat status` prints (tests/test_beat.py runs the command itself)."""

from __future__ import annotations

from datetime import timedelta

import psycopg

from pgsched.beat import leader_status
from pgsched.sql import queries


def test_leader_status_is_none_while_no_beat_leads(conn: psycopg.Connection) -> None:
    assert leader_status(conn) is None


def test_leader_status_reports_the_leaders_row_while_it_holds_the_lock(conn: psycopg.Connection, dsn: str) -> None:
    conn.execute(
        "INSERT INTO pgsched.beat_leader (host, pid, since, last_seen_at)"
        " VALUES ('beat-host', 4242, now() - interval '1 hour', now())"
    )
    assert leader_status(conn) is None, "a row without the lock is a leader that is gone"
    with psycopg.connect(dsn, autocommit=True) as lock_holder:
        lock_holder.execute(queries["leader_try_lock"])
        leader = leader_status(conn)
    assert leader is not None
    assert list(leader) == ["host", "pid", "since", "leading_for", "last_seen_at"]
    assert (leader["host"], leader["pid"]) == ("beat-host", 4242)
    assert leader["leading_for"] >= timedelta(hours=1)

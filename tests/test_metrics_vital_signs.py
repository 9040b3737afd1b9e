"""The /metrics gauges deploy/prometheus/alerts.yml and an autoscaler read, against a real
database: throughput per minute, live workers per queue, expired leases, desired workers, the
beat leader and the oldest open transaction."""

from __future__ import annotations

import psycopg

from tests.support.api import Api
from tests.support.beat import a_beat_leading
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import drop_the_rules_of_0009
from tests.support.metrics import metric_samples, value_of


def add_worker(conn: psycopg.Connection, queues: list[str], concurrency: int, seen_s_ago: float = 0) -> None:
    conn.execute(
        "INSERT INTO pgsched.workers (host, pid, queues, concurrency, last_seen_at)"
        " VALUES ('h', 1, %s, %s, now() - make_interval(secs => %s))",
        (queues, concurrency, seen_s_ago),
    )


def add_runs(conn: psycopg.Connection, queue: str, count: int) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            "INSERT INTO pgsched.runs (task, queue) SELECT 't', %s FROM generate_series(1, %s) RETURNING id",
            (queue, count),
        ).fetchall()
    ]


def start(conn: psycopg.Connection, ids: list[int], lease: str) -> None:
    conn.execute(
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, worker_id = 1,"
        " started_at = now() - interval '1 hour', lease_expires_at = now() + %s::interval WHERE id = ANY(%s)",
        (lease, ids),
    )


def test_live_workers_count_per_queue_and_a_silent_worker_is_not_live(api: Api, conn: psycopg.Connection):
    add_worker(conn, ["mail", "default"], 8)
    add_worker(conn, ["mail"], 4)
    add_worker(conn, ["reports"], 2, seen_s_ago=3600)  # its row outlived it
    samples = metric_samples(api)
    live = {labels["queue"]: value for labels, value in samples["pgsched_queue_live_workers"]}
    assert live == {"default": 1, "mail": 2, "reports": 0}


def test_expired_leases_are_counted_per_queue_with_the_oldest_age(api: Api, conn: psycopg.Connection):
    ids = add_runs(conn, "mail", 3)
    start(conn, ids[:2], "-5 minutes")
    start(conn, ids[2:], "30 seconds")
    samples = metric_samples(api)
    assert value_of(samples, "pgsched_queue_lease_expired_runs", "mail") == 2
    assert 290 < value_of(samples, "pgsched_queue_lease_expired_seconds", "mail") < 400


def test_desired_workers_divide_the_backlog_by_the_live_workers_concurrency(api: Api, conn: psycopg.Connection):
    add_worker(conn, ["mail"], 4)
    start(conn, add_runs(conn, "mail", 3), "30 seconds")
    add_runs(conn, "mail", 6)  # 9 runs want slots: ceil(9 / 4)
    add_runs(conn, "bulk", 150)  # no live worker: the default concurrency, 100
    samples = metric_samples(api)
    assert value_of(samples, "pgsched_queue_desired_workers", "mail") == 3
    assert value_of(samples, "pgsched_queue_desired_workers", "bulk") == 2


def test_failures_and_successes_of_the_last_minute_per_queue(api: Api, conn: psycopg.Connection):
    ids = add_runs(conn, "mail", 3)
    conn.execute(
        "UPDATE pgsched.runs SET status = CASE WHEN id = %s THEN 'succeeded' ELSE 'failed' END::pgsched.run_status,"
        " attempt = 1, started_at = now(), finished_at = now() WHERE id = ANY(%s)",
        (ids[0], ids),
    )
    samples = metric_samples(api)
    assert value_of(samples, "pgsched_queue_failed_last_minute", "mail") == 2
    assert value_of(samples, "pgsched_queue_succeeded_last_minute", "mail") == 1


def test_the_beat_leader_gauge_is_one_only_while_a_beat_holds_the_lock(api: Api, dsn: str):
    assert metric_samples(api)["pgsched_beat_leader"] == [({}, 0.0)]
    with a_beat_leading(dsn):
        assert metric_samples(api)["pgsched_beat_leader"] == [({}, 1.0)]


def test_a_transaction_held_open_shows_as_the_oldest_transaction(api: Api, dsn: str, conn: psycopg.Connection):
    def oldest() -> tuple[float, float]:
        samples = metric_samples(api)
        [(_, age_s)] = samples["pgsched_database_oldest_transaction_seconds"]
        [(_, xmin_age)] = samples["pgsched_database_oldest_xmin_age"]
        return age_s, xmin_age

    with psycopg.connect(dsn) as holder:  # not autocommit: its first statement opens a transaction
        holder.execute("SELECT txid_current()")
        for _ in range(3):  # transactions after it: each one it holds the horizon behind
            conn.execute("SELECT txid_current()")
        age_s, xmin_age = oldest()
        assert age_s > 0 and xmin_age >= 3
        holder.rollback()
    assert oldest() == (0, 0)


def test_a_lease_of_minus_infinity_from_before_the_rules_does_not_fail_the_scrape(api: Api, conn: psycopg.Connection):
    drop_the_rules_of_0009(conn)
    [run_id] = add_runs(conn, "legacy", 1)
    start(conn, [run_id], "-1 hour")
    conn.execute("UPDATE pgsched.runs SET lease_expires_at = '-infinity' WHERE id = %s", (run_id,))
    samples = metric_samples(api)
    assert value_of(samples, "pgsched_queue_lease_expired_runs", "legacy") == 1
    assert value_of(samples, "pgsched_queue_lease_expired_seconds", "legacy") > 2000 * 365 * 86400


def test_runs_claimed_under_a_held_horizon_show_as_dead_tuples_and_a_growing_claim_index(
    api: Api, dsn: str, conn: psycopg.Connection
):
    def vacuum_state() -> tuple[float, float]:
        samples = metric_samples(api)
        [(_, dead)] = samples["pgsched_runs_dead_tuples"]
        [(_, index_bytes)] = samples["pgsched_runs_claim_index_bytes"]
        return dead, index_bytes

    conn.execute("VACUUM pgsched.runs")
    _, index_before = vacuum_state()
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT txid_current()")
        ids = add_runs(conn, "default", 5000)
        start(conn, ids, "30 seconds")
        conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts reach pg_stat now
        dead, index_bytes = vacuum_state()
        holder.rollback()
    assert dead >= 5000  # each start left the queued version behind
    assert index_bytes > index_before


def test_the_runs_gauge_counts_finished_runs_from_the_last_hour_of_the_rollup(api: Api, conn: psycopg.Connection):
    """Queued and running from the rows; finished from the rollup (the beat's maintenance writes
    it), so a run that finished long ago, still retained, is no longer read at each scrape."""
    start(conn, add_runs(conn, "mail", 2), "30 seconds")
    add_runs(conn, "mail", 3)
    conn.execute(
        "INSERT INTO pgsched.run_rollup (minute, queue, task, succeeded, failed, cancelled) VALUES"
        " (date_trunc('minute', now()) - interval '5 minutes', 'mail', 't', 7, 2, 1),"
        " (date_trunc('minute', now()) - interval '2 hours', 'mail', 't', 100, 100, 100)"
    )
    runs = {
        labels["status"]: value for labels, value in metric_samples(api)["pgsched_runs"] if labels["queue"] == "mail"
    }
    assert runs == {"waiting": 0, "queued": 3, "running": 2, "succeeded": 7, "failed": 2, "cancelled": 1}


def test_pgsched_stats_warns_while_a_transaction_holds_the_horizon(dsn: str):
    quiet = run_cli(dsn, "stats", "--horizon-warning-s", "0")
    assert quiet.returncode == 0 and "warning" not in quiet.stderr, quiet.stderr
    with psycopg.connect(dsn, application_name="forgotten-psql") as holder:
        holder.execute("SELECT txid_current()")
        warned = run_cli(dsn, "stats", "--horizon-warning-s", "0")
        default = run_cli(dsn, "stats")  # open for less than a minute: no warning yet
        holder.rollback()
    assert warned.returncode == 0
    [line] = [line for line in warned.stderr.splitlines() if line.strip()]
    assert line.startswith("warning: a transaction open for") and "forgotten-psql" in line, line
    assert "dead runs wait for vacuum" in line
    assert "warning" not in default.stderr


def test_pgsched_stats_refuses_a_negative_warning_threshold(dsn: str):
    assert_one_error_line(run_cli(dsn, "stats", "--horizon-warning-s", "-1"), "--horizon-warning-s")

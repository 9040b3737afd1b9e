"""The /metrics gauges deploy/prometheus/alerts.yml and an autoscaler read, against a real
database: throughput per minute, live workers per queue, expired leases, desired workers, the
beat leader and the oldest open transaction."""

from __future__ import annotations

import psycopg

from tests.support.api import Api
from tests.support.beat import a_beat_leading
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

"""Workflows under real worker processes: 4 workers run diamond DAGs (a -> b, c -> d) whose
steps fail at random while one worker is SIGKILLed twice. Every step runs iff its condition
held, no step is released twice, nothing is left waiting, and each workflow ends as its steps
say. PGSCHED_TEST_DIAMONDS sets how many (default 500)."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from pgsched import App
from tests.support.waiting import wait_until
from tests.support.workers import Workers

DIAMONDS = int(os.environ.get("PGSCHED_TEST_DIAMONDS", "500"))
APP = "tests.workflow_app:app"
FAIL_P = 0.1


def enqueue_diamonds(dsn: str, plan: list[dict[str, bool]]) -> list[list[int]]:
    app = App(dsn)

    @app.task(max_attempts=2, retry_backoff=0.0)
    def step(key: str, fail: bool = False) -> str:  # the workers' task, for its signature
        return key

    ids = []
    for n, fails in enumerate(plan):
        wf = app.workflow(f"diamond-{n}")
        a = wf.add(step, key=f"{n}a", fail=fails["a"])
        b = wf.add(step, key=f"{n}b", fail=fails["b"], after=[a])
        c = wf.add(step, key=f"{n}c", fail=fails["c"], after=[a])
        wf.add(step, key=f"{n}d", fail=fails["d"], after=[b, c])
        ids.append(wf.enqueue().run_ids)
    app.close()
    return ids


def finished_steps(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pgsched.runs_all WHERE status IN ('succeeded', 'failed', 'cancelled')"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow
def test_diamonds_under_four_workers_and_two_sigkills_run_each_step_iff_its_condition_held(
    workers: Workers, conn: psycopg.Connection[Any], dsn: str
) -> None:
    rng = random.Random(15)
    plan = [{s: rng.random() < FAIL_P for s in "abcd"} for _ in range(DIAMONDS)]
    pool = [workers.start("--app", APP, "--lease", "2", "--concurrency", "4") for _ in range(4)]
    ids = enqueue_diamonds(dsn, plan)
    total = 4 * DIAMONDS
    for fraction in (3, 2):  # SIGKILL one worker at a third, another at half way; replace each
        workers.wait_until(lambda f=fraction: finished_steps(conn) >= total // f, 120, f"1/{fraction} of the steps")
        victim = pool.pop(0)
        victim.popen.send_signal(signal.SIGKILL)
        assert victim.popen.wait(timeout=10) == -signal.SIGKILL
        victim.expect_exit = True
        pool.append(workers.start("--app", APP, "--lease", "2", "--concurrency", "4"))
    workers.wait_until(
        lambda: conn.execute("SELECT count(*) FROM pgsched.workflows WHERE status = 'running'").fetchone() == (0,),
        180,
        "every workflow to end",
        alive=pool,
    )

    ran = Counter(key for (key,) in conn.execute("SELECT key FROM executions"))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {r["id"]: r for r in cur.execute("SELECT * FROM pgsched.runs_all")}
        workflows = {r["id"]: r for r in cur.execute("SELECT * FROM pgsched.workflows")}
    assert not [r for r in rows.values() if r["status"] in ("waiting", "queued", "running")]
    for n, (fails, run_ids) in enumerate(zip(plan, ids)):
        a_ok = not fails["a"]
        should_run = {"a": True, "b": a_ok, "c": a_ok, "d": a_ok and not fails["b"] and not fails["c"]}
        for step, run_id in zip("abcd", run_ids):
            row, key = rows[run_id], f"{n}{step}"
            rescued = sum(1 for e in row["errors"] if e["type"] == "LeaseExpired")
            if should_run[step]:
                assert ran[key] >= 1, (key, row)
                # Released once: it ran once per attempt (a SIGKILLed attempt's execution may not
                # have been recorded), and twice only where it failed or a kill rescued it.
                assert ran[key] <= row["attempt"], (key, ran[key], row)
                assert row["attempt"] <= (2 if fails[step] else 1 + rescued), (key, row)
                assert row["status"] == ("failed" if fails[step] else "succeeded"), (key, row)
            else:
                assert ran[key] == 0 and row["status"] == "cancelled", (key, row)
                assert row["errors"][-1]["type"] in ("UpstreamFailed", "UpstreamCancelled"), (key, row)
        statuses = [rows[i]["status"] for i in run_ids]
        expected = "failed" if "failed" in statuses else "succeeded"
        assert workflows[rows[run_ids[0]]["workflow_id"]]["status"] == expected, (n, statuses)


@pytest.mark.slow
def test_a_process_pool_step_gets_its_parents_results_and_a_chord_binds_them(
    workers: Workers, conn: psycopg.Connection[Any], dsn: str
) -> None:
    """Issue 15: parent_results are read by the worker and sent to the pool child with the
    run, so a pool="process" step sees them as an in-process one does."""
    from pgsched import chain, chord

    app = App(dsn)

    @app.task
    async def record(key: str) -> str:  # tests/process_app.py's tasks, for their signatures
        return key

    @app.task(pool="process")
    def gather_in_child(values: list[object]) -> dict[str, object]:
        return {}

    @app.task(pool="process")
    def next_in_child(previous: object) -> dict[str, object]:
        return {}

    worker = workers.start("--processes", "1")
    fan = chord([record.s(key=k) for k in ("x", "y", "z")], gather_in_child.s()).enqueue()
    line = chain(record.s(key="first"), next_in_child.s(), next_in_child.s()).enqueue()
    app.close()
    last = [fan.run_ids[-1], line.run_ids[-1]]
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pgsched.runs_all WHERE id = ANY(%s) AND status = 'succeeded'", (last,)
            ).fetchone()
            == (2,)
        ),
        30,
        "the chord's callback and the chain's last step to succeed",
        diagnose=lambda: str(conn.execute("SELECT id, status FROM pgsched.runs_all ORDER BY id").fetchall()),
    )
    results = dict(
        conn.execute(
            "SELECT id, result FROM pgsched.runs_all WHERE id = ANY(%s)", (fan.run_ids + line.run_ids,)
        ).fetchall()
    )

    callback = results[fan.run_ids[-1]]
    assert callback["values"] == ["x", "y", "z"] == callback["parents"]  # header order
    assert callback["parent"] == worker.pid and callback["pid"] != worker.pid  # ran in a child

    second, third = results[line.run_ids[1]], results[line.run_ids[2]]
    assert second["previous"] == "first" and second["parents"] == ["first"]
    assert third["previous"] == second and third["parents"] == [second]

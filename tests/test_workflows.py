"""Workflows (chains, groups, chords, DAGs): built in Python or SQL, run by a real worker
in-process, and what the schema does when a parent ends (release, cancel, re-arm), on real
PostgreSQL. The multi-process test (diamonds, SIGKILL) is in tests/test_workflow_processes.py."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from pgsched import App, chain, chord, current_run, group
from pgsched.canvas import MAX_STEPS
from pgsched.errors import InvalidArgs, InvalidInput
from pgsched.runs import retry_run
from pgsched.workflows import cancel_workflow, get_workflow, list_workflows, step_tree
from tests.support.inprocess import finish, run_async


def run_rows(conn: psycopg.Connection[Any], ids: list[int]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM pgsched.runs_all WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()


def workflow_row(conn: psycopg.Connection[Any], workflow_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM pgsched.workflows WHERE id = %s", (workflow_id,)).fetchone()
    assert row is not None
    return row


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pgsched.runs_all), (SELECT count(*) FROM pgsched.run_edges),"
        " (SELECT count(*) FROM pgsched.workflows)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.fixture
def etl(app: App) -> App:
    """An app with the tasks the tests below compose."""

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def double(n: int) -> int:
        return 2 * n

    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def total(values: list[int]) -> dict[str, Any]:
        return {"sum": sum(values), "seen": current_run().parent_results}

    @app.task(max_attempts=1)
    def boom(tag: str = "") -> None:
        raise RuntimeError(f"boom {tag}")

    @app.task
    def note(tag: str) -> dict[str, Any]:
        return {"tag": tag, "parents": current_run().parent_results}

    return app


# ---- 1, 2: the Python API and results flow


def test_a_chain_passes_each_result_to_the_next_steps_first_free_parameter(etl: App, dsn: str, conn) -> None:
    t = etl.tasks
    handle = chain(t["add"].s(x=1, y=2), t["double"].s(), t["double"].s()).enqueue()
    rows = finish(etl, dsn, *handle.run_ids)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert [r["result"] for r in rows] == [3, 6, 12]
    # The stored args say where the result goes; the worker put it there.
    assert run_rows(conn, handle.run_ids)[1]["args"] == {"n": {"$pgsched": "parent_result"}}
    assert handle.status() == "succeeded"
    wf = workflow_row(conn, handle.id)
    assert (wf["steps"], wf["name"], wf["finished_at"] is not None) == (3, "chain(add, double, double)", True)


def test_a_chord_callback_gets_its_headers_results_in_header_order_once(etl: App, dsn: str, conn) -> None:
    t = etl.tasks
    handle = chord([t["square"].s(x=i) for i in range(6)], t["total"].s()).enqueue(name="squares")
    rows = finish(etl, dsn, *handle.run_ids)
    callback = rows[-1]
    assert callback["result"] == {"sum": 55, "seen": [0, 1, 4, 9, 16, 25]}
    assert callback["attempt"] == 1
    assert handle.status() == "succeeded"


def test_a_workflow_runs_a_step_after_its_parents_and_an_alert_only_when_its_parent_failed(
    etl: App, dsn: str, conn
) -> None:
    t = etl.tasks
    wf = etl.workflow("nightly-etl")
    a = wf.add(t["note"], tag="a")
    b = wf.add(t["note"], tag="b")
    c = wf.add(t["note"], tag="c", after=[b, a])
    ok_alert = wf.add(t["note"], tag="alert-c", after=[c], when="failed")
    d = wf.add(t["boom"], tag="d", after=[c])
    d_alert = wf.add(t["note"], tag="alert-d", after=[d], when="failed")
    cleanup = wf.add(t["note"], tag="cleanup", after=[d], when="finished")
    handle = wf.enqueue()
    rows = {r["id"]: r for r in finish(etl, dsn, *handle.run_ids)}
    ids = handle.run_ids
    assert rows[ids[c.index]]["result"] == {
        "tag": "c",
        "parents": [{"tag": "b", "parents": []}, {"tag": "a", "parents": []}],
    }
    assert rows[ids[ok_alert.index]]["status"] == "cancelled"
    assert rows[ids[ok_alert.index]]["errors"][-1]["type"] == "ConditionNotMet"
    assert rows[ids[d.index]]["status"] == "failed"
    assert rows[ids[d_alert.index]]["status"] == "succeeded"
    assert rows[ids[cleanup.index]]["status"] == "succeeded"
    assert handle.status() == "failed"  # a step failed, whatever handled it


def test_nested_canvas_a_chain_of_groups_and_a_chord_whose_header_holds_chains(etl: App, dsn: str) -> None:
    t = etl.tasks
    handle = chain(
        t["add"].s(x=1, y=1),
        group(t["double"].s(), t["double"].s()),  # each gets 2
        t["total"].s(),  # gets [4, 4]
    ).enqueue()
    rows = finish(etl, dsn, *handle.run_ids)
    assert rows[-1]["result"]["sum"] == 8
    handle = chord([chain(t["add"].s(x=i, y=0), t["double"].s()) for i in range(3)], t["total"].s()).enqueue()
    rows = finish(etl, dsn, *handle.run_ids)
    assert rows[-1]["result"] == {"sum": 6, "seen": [0, 2, 4]}


def test_enqueue_async_and_in_the_callers_transaction(etl: App, dsn: str, conn) -> None:
    t = etl.tasks

    async def main() -> list[int]:
        async with await psycopg.AsyncConnection.connect(dsn) as own:
            handle = await chain(t["add"].s(x=1, y=2), t["double"].s()).enqueue_async(conn=own)
            await own.rollback()  # the caller's transaction decides: nothing is left
        kept = await chain(t["add"].s(x=1, y=2), t["double"].s()).enqueue_async()
        await etl.aclose()
        return [*handle.run_ids, *kept.run_ids]

    ids = run_async(main())
    assert [r["id"] for r in run_rows(conn, ids)] == ids[2:]
    assert counts(conn) == (2, 1, 1)


# ---- 3, 4: in the database: release, cancel propagation, retry re-arming, workflow status


def diamond(app: App, fail: str = "") -> Any:
    t = app.tasks
    wf = app.workflow("diamond")
    a = wf.add(t["boom"] if fail == "a" else t["note"], tag="a")
    b = wf.add(t["boom"] if fail == "b" else t["note"], tag="b", after=[a])
    c = wf.add(t["note"], tag="c", after=[a])
    wf.add(t["note"], tag="d", after=[b, c])
    return wf.enqueue()


def test_a_failed_parent_cancels_every_dependent_transitively_with_the_reason(etl: App, dsn: str, conn) -> None:
    handle = diamond(etl, fail="a")
    rows = finish(etl, dsn, *handle.run_ids)
    a = handle.run_ids[0]
    assert [r["status"] for r in rows] == ["failed", "cancelled", "cancelled", "cancelled"]
    for row in rows[1:]:
        assert row["errors"][-1]["message"] == f"upstream run {a} failed"
        assert row["errors"][-1]["upstream_run"] == a
    assert workflow_row(conn, handle.id)["status"] == "failed"
    assert conn.execute("SELECT count(*) FROM pgsched.runs_all WHERE status = 'waiting'").fetchone() == (0,)


def test_retrying_the_failed_run_re_arms_what_its_failure_cancelled(etl: App, dsn: str, conn) -> None:
    handle = diamond(etl, fail="b")
    rows = finish(etl, dsn, *handle.run_ids)
    assert [r["status"] for r in rows] == ["succeeded", "failed", "succeeded", "cancelled"]
    assert workflow_row(conn, handle.id)["status"] == "failed"
    etl.tasks["boom"].fn = lambda tag="": tag  # fixed: it works now
    retry_run(conn, handle.run_ids[1])
    d = run_rows(conn, [handle.run_ids[3]])[0]
    assert (d["status"], d["parents_pending"]) == ("waiting", 1)
    assert workflow_row(conn, handle.id)["status"] == "running"
    rows = finish(etl, dsn, *handle.run_ids)
    assert [r["status"] for r in rows] == ["succeeded"] * 4
    assert workflow_row(conn, handle.id)["status"] == "succeeded"


def test_two_parents_ending_in_the_same_statement_or_the_same_instant_release_their_child_once(
    etl: App, conn, dsn: str
) -> None:
    t = etl.tasks
    handle = chord([t["note"].s(tag="x"), t["note"].s(tag="y")], t["total"].si(values=[])).enqueue()
    x, y, child = handle.run_ids
    start = (
        "UPDATE pgsched.runs SET status = 'running', attempt = 1, started_at = now(),"
        " lease_expires_at = now() + interval '1 minute' WHERE id = ANY(%s)"
    )
    end = (
        "UPDATE pgsched.runs SET status = 'succeeded', finished_at = now(), lease_expires_at = NULL, result = '1'"
        " WHERE id = ANY(%s)"
    )
    conn.execute(start, ([x, y],))
    conn.execute(end, ([x, y],))  # one statement ends both
    row = run_rows(conn, [child])[0]
    assert (row["status"], row["parents_pending"]) == ("queued", 0)

    # Two transactions, each ending one parent, committed together: the child's row lock makes
    # the second decrement see the first.
    handle = chord([t["note"].s(tag="x"), t["note"].s(tag="y")], t["total"].si(values=[])).enqueue()
    x, y, child = handle.run_ids
    conn.execute(start, ([x, y],))
    barrier = threading.Barrier(2)

    def end_one(run_id: int) -> None:
        with psycopg.connect(dsn) as own:
            barrier.wait()
            own.execute(end, ([run_id],))
            own.commit()

    threads = [threading.Thread(target=end_one, args=(run_id,)) for run_id in (x, y)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    row = run_rows(conn, [child])[0]
    assert (row["status"], row["parents_pending"]) == ("queued", 0)


def test_cancelling_a_workflow_cancels_waiting_and_queued_steps_and_ends_it_cancelled(etl: App, conn) -> None:
    handle = diamond(etl)
    assert cancel_workflow(conn, handle.id) == 4
    rows = run_rows(conn, handle.run_ids)
    assert [r["status"] for r in rows] == ["cancelled"] * 4
    assert workflow_row(conn, handle.id)["status"] == "cancelled"
    shown = get_workflow(conn, handle.id)
    lines = step_tree(shown["steps_shown"])
    assert [(line.depth, line.step["task"], line.also_after) for line in lines] == [
        (0, "note", []),
        (1, "note", []),
        (2, "note", [handle.run_ids[2]]),
        (1, "note", []),
    ]
    assert [w["id"] for w in list_workflows(conn, status="cancelled")] == [handle.id]


# 0019's repair, which the previous release's leader calls, and 0058's, which finds parents in
# the history too (tests/test_workflow_moved_parents.py): the same on parents in runs.
REPAIRS = ["workflow_repair", "workflow_repair_v2"]


@pytest.mark.parametrize("repair", REPAIRS)
def test_the_repair_step_releases_a_step_left_waiting_and_settles_its_workflow(etl: App, conn, repair: str) -> None:
    t = etl.tasks
    handle = chain(t["note"].s(tag="a"), t["note"].s()).enqueue()
    a, b = handle.run_ids
    # A parent ended behind the trigger's back (triggers off, as a restore would): b is stuck.
    conn.execute("SET session_replication_role = replica")
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
        " WHERE id = %s",
        (a,),
    )
    conn.execute("SET session_replication_role = DEFAULT")
    assert run_rows(conn, [b])[0]["status"] == "waiting"
    statement = f"SELECT pgsched.{repair}(interval '0 s', 100)".encode()
    assert conn.execute(statement).fetchone() == (1,)
    assert run_rows(conn, [b])[0]["status"] == "queued"
    assert conn.execute(statement).fetchone() == (0,)


@pytest.mark.parametrize("repair", REPAIRS)
def test_the_repair_step_cancels_a_run_waiting_without_edges_and_settles_a_workflow_whose_steps_ended(
    conn, repair: str
) -> None:
    workflow = conn.execute("INSERT INTO pgsched.workflows (name) VALUES ('left') RETURNING id").fetchone()[0]
    # Written as a restore writes them (triggers off): a step that ended, and a waiting run whose
    # edges were not restored, which nothing would ever release.
    conn.execute("SET session_replication_role = replica")
    step = conn.execute(
        "INSERT INTO pgsched.runs (task, status, attempt, started_at, finished_at, workflow_id)"
        " VALUES ('note', 'succeeded', 1, now(), now(), %s) RETURNING id",
        (workflow,),
    ).fetchone()[0]
    orphan = conn.execute("INSERT INTO pgsched.runs (task, status) VALUES ('note', 'waiting') RETURNING id").fetchone()[
        0
    ]
    conn.execute("SET session_replication_role = DEFAULT")
    statement = f"SELECT pgsched.{repair}(interval '0 s', 100)".encode()
    assert conn.execute(statement).fetchone() == (2,)
    (row,) = run_rows(conn, [orphan])
    assert (row["status"], row["errors"][-1]["type"]) == ("cancelled", "NoParents")
    assert workflow_row(conn, workflow)["status"] == "succeeded"
    assert run_rows(conn, [step])[0]["status"] == "succeeded"
    assert conn.execute(statement).fetchone() == (0,)


# ---- 5: from SQL


def test_sql_enqueue_v3_depends_on_builds_a_dag_and_a_plain_insert_of_a_waiting_run_works(conn) -> None:
    a = conn.execute("SELECT pgsched.enqueue_v3('extract', '{\"file\": \"1.csv\"}')").fetchone()[0]
    b = conn.execute("SELECT pgsched.enqueue_v3('extract', '{}')").fetchone()[0]
    c = conn.execute("SELECT pgsched.enqueue_v3('load', depends_on => ARRAY[%s, %s]::bigint[])", (a, b)).fetchone()[0]
    alert = conn.execute(
        "SELECT pgsched.enqueue_v3('alert', depends_on => ARRAY[%s]::bigint[], condition => 'failed')", (c,)
    ).fetchone()[0]
    rows = run_rows(conn, [a, b, c, alert])
    assert [(r["status"], r["parents_pending"]) for r in rows] == [
        ("queued", None),
        ("queued", None),
        ("waiting", 2),
        ("waiting", 1),
    ]
    assert len({r["workflow_id"] for r in rows}) == 1
    workflow_id = rows[0]["workflow_id"]
    assert (get_workflow(conn, workflow_id)["unfinished"], workflow_row(conn, workflow_id)["steps"]) == (4, 4)

    # A plain INSERT: the waiting run, then its edge, in one transaction.
    with conn.transaction():
        d = conn.execute(
            "INSERT INTO pgsched.runs (task, status) VALUES ('report', 'waiting') RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO pgsched.run_edges (child, parent, condition) VALUES (%s, %s, 'finished')", (d, c))
    row = run_rows(conn, [d])[0]
    assert (row["status"], row["parents_pending"], row["workflow_id"]) == ("waiting", 1, workflow_id)

    # A parent that already ended counts at once: here it failed, so a run waiting for its success never will.
    conn.execute(
        "UPDATE pgsched.runs SET status = 'failed', attempt = 1, started_at = now(), finished_at = now() WHERE id = %s",
        (a,),
    )
    assert [r["status"] for r in run_rows(conn, [c, alert, d])] == ["cancelled"] * 3
    late = conn.execute("SELECT pgsched.enqueue_v3('late', depends_on => ARRAY[%s]::bigint[])", (a,)).fetchone()[0]
    assert run_rows(conn, [late])[0]["status"] == "cancelled"
    on_failure = conn.execute(
        "SELECT pgsched.enqueue_v3('on_failure', depends_on => ARRAY[%s]::bigint[], condition => 'failed')", (a,)
    ).fetchone()[0]
    assert run_rows(conn, [on_failure])[0]["status"] == "queued"


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[999999]::bigint[])",
            "depends_on names run 999999, which does not exist",
        ),
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{a}]::bigint[], tenant => 'acme')",
            "which does not exist for tenant acme",
        ),
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{a}]::bigint[], condition => 'maybe')",
            "condition must be succeeded, failed or finished",
        ),
        ("SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{a}, NULL]::bigint[])", "depends_on holds a NULL run id"),
        (
            "INSERT INTO pgsched.run_edges (child, parent) VALUES ({a}, {b})",
            "edge_parent_must_be_an_earlier_run_so_there_is_no_cycle",
        ),
        (
            "INSERT INTO pgsched.run_edges (child, parent) VALUES ({b}, {a})",
            "the child run {b} is queued; only a waiting run gets parents",
        ),
        ("INSERT INTO pgsched.run_edges (child, parent) VALUES ({w}, -5)", "no run -5 (the parent)"),
        ("INSERT INTO pgsched.run_edges (child, parent) VALUES ({w}, {t})", "belongs to another tenant"),
        (
            "INSERT INTO pgsched.run_edges (child, parent, condition) VALUES ({w}, {a}, 'often')",
            "edge_condition_must_be_succeeded_failed_or_finished",
        ),
        ("INSERT INTO pgsched.runs (task, status) VALUES ('lonely', 'waiting')", "a waiting run needs its parents"),
    ],
)
def test_bad_sql_input_is_refused_naming_the_problem_and_writes_nothing(conn, statement: str, message: str) -> None:
    a = conn.execute("SELECT pgsched.enqueue_v3('a')").fetchone()[0]
    b = conn.execute("SELECT pgsched.enqueue_v3('b')").fetchone()[0]
    t = conn.execute("SELECT pgsched.enqueue_v3('t', tenant => 'acme')").fetchone()[0]
    before = counts(conn)
    with pytest.raises(psycopg.Error) as raised:
        with conn.transaction():
            w = conn.execute("SELECT pgsched.enqueue_v3('w', depends_on => ARRAY[%s]::bigint[])", (a,)).fetchone()[0]
            conn.execute(statement.format(a=a, b=b, t=t, w=w).encode())
    assert message.format(b=b) in str(raised.value)
    assert counts(conn) == before


def test_tenants_are_kept_apart(etl: App, conn) -> None:
    theirs = etl.workflow("theirs", tenant="acme")
    theirs.add(etl.tasks["note"], tag="x")
    handle = theirs.enqueue()
    assert run_rows(conn, handle.run_ids)[0]["tenant"] == "acme"
    assert list_workflows(conn, tenant="other") == []
    assert [w["id"] for w in list_workflows(conn, tenant="acme")] == [handle.id]
    with pytest.raises(Exception, match=f"no workflow with id {handle.id}"):
        get_workflow(conn, handle.id, tenant="other")
    with pytest.raises(Exception, match=f"no workflow with id {handle.id}"):
        cancel_workflow(conn, handle.id, tenant="other")


# ---- 7: bad input from Python, refused before anything is written


def test_bad_python_input_names_the_step_and_the_problem_and_writes_nothing(etl: App, conn) -> None:
    t = etl.tasks
    wf = etl.workflow("bad")
    a = wf.add(t["note"], tag="a")
    with pytest.raises(
        InvalidInput, match=r"step 1 \(note\): when must be one of succeeded, failed, finished, got 'sometimes'"
    ):
        wf.add(t["note"], tag="b", after=[a], when="sometimes")
    with pytest.raises(InvalidArgs, match=r"step 1 \(add\): args do not fit add\("):
        wf.add(t["add"], x=1, after=[a], z=3)
    other = etl.workflow("other")
    with pytest.raises(InvalidInput, match=r"after names step 0 \(note\) of workflow 'bad', not of 'other'"):
        other.add(t["note"], tag="c", after=[a])
    with pytest.raises(InvalidArgs, match=r"step 1 \(add\): add\(.*has no parameter left"):
        chain(t["note"].s(tag="a"), t["add"].s(x=1, y=2)).enqueue()
    with pytest.raises(InvalidInput, match="chain part 1 is 'oops'"):
        chain(t["note"].s(tag="a"), "oops")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="has no steps"):
        etl.workflow("empty").enqueue()
    assert counts(conn) == (0, 0, 0)


def test_a_workflow_holds_at_most_100000_steps(etl: App) -> None:
    wf = etl.workflow("huge")
    sig = etl.tasks["square"].s(x=1)
    for _ in range(MAX_STEPS):
        wf.add(sig)
    with pytest.raises(InvalidInput, match=r"step 100000 \(square\): a workflow holds at most 100,000 steps"):
        wf.add(sig)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(when=st.text(max_size=12).filter(lambda s: s not in ("succeeded", "failed", "finished")))
def test_any_other_when_is_refused(etl: App, when: str) -> None:
    wf = etl.workflow("w")
    a = wf.add(etl.tasks["note"], tag="a")
    with pytest.raises(InvalidInput, match="when must be one of"):
        wf.add(etl.tasks["note"], tag="b", after=[a], when=when)
    assert len(wf.steps) == 1


def test_pruning_forgets_ended_workflows_with_their_edges_then_their_runs(etl: App, conn, dsn: str) -> None:
    import asyncio

    from pgsched.maintenance import prune_finished

    t = etl.tasks
    ended = chain(t["note"].s(tag="a"), t["note"].s()).enqueue()
    finish(etl, dsn, *ended.run_ids)
    running = chain(t["note"].s(tag="b"), t["note"].s()).enqueue()

    async def prune() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            await prune_finished(own, retention_s=0.0)

    asyncio.run(prune())
    assert [r[0] for r in conn.execute("SELECT id FROM pgsched.workflows")] == [running.id]
    assert conn.execute("SELECT count(*) FROM pgsched.run_edges").fetchone() == (1,)
    assert [r["id"] for r in run_rows(conn, ended.run_ids + running.run_ids)] == running.run_ids


def test_pruning_keeps_the_finished_steps_of_a_running_workflow_for_its_dependents(etl: App, conn, dsn: str) -> None:
    """Issue 15: the runs' retention deleted a finished step whose workflow still ran, so its
    dependent lost its parent_results and `workflows show` the step. Steps now go only with
    their workflow (workflow_prune, once it has ended before the retention)."""
    from pgsched.maintenance import prune_finished

    t = etl.tasks
    handle = chain(t["note"].s(tag="first"), t["note"].s().set(delay=3600)).enqueue()
    first, second = handle.run_ids
    (first_row,) = finish(etl, dsn, first)
    plain = etl.enqueue("note", {"tag": "plain"})
    finish(etl, dsn, plain)

    async def prune() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            return await prune_finished(own, retention_s=0.0)

    assert run_async(prune()) == 1  # the plain run only
    assert [r["id"] for r in run_rows(conn, [first, second, plain])] == [first, second]
    assert [s["id"] for s in get_workflow(conn, handle.id)["steps_shown"]] == [first, second]

    conn.execute("UPDATE pgsched.runs SET run_at = now() WHERE id = %s", (second,))
    (row,) = finish(etl, dsn, second)
    assert row["status"] == "succeeded"
    assert first_row["result"]["tag"] == "first"
    assert row["result"] == {"tag": first_row["result"], "parents": [first_row["result"]]}
    assert handle.status() == "succeeded"

    # Ended (and older than the retention): the workflow goes whole, its row, edges and steps.
    assert run_async(prune()) == 2
    assert counts(conn) == (0, 0, 0)


def test_the_edge_triggers_one_pass_path_leaves_nothing_miscounted(etl: App, conn) -> None:
    """Schema 0031 settles an edge insert in one join when each child's parents_pending already
    equals its new edges, all to open parents of the same transaction, and the children have no
    other edge. Each way out of that case must still count from all the edges."""
    wf_id = conn.execute("INSERT INTO pgsched.workflows (name) VALUES ('by hand') RETURNING id").fetchone()[0]

    def run(status: str, pending: int | None = None) -> int:
        return int(
            conn.execute(
                "INSERT INTO pgsched.runs (task, status, workflow_id, parents_pending) VALUES ('note', %s, %s, %s)"
                " RETURNING id",
                (status, wf_id, pending),
            ).fetchone()[0]
        )

    def edge(child: int, parent: int) -> None:
        conn.execute("INSERT INTO pgsched.run_edges (child, parent) VALUES (%s, %s)", (child, parent))

    with conn.transaction():
        # Two edges of one child in two statements, its parents_pending claiming one: the
        # first looks settled, the second finds the child's other edge and recounts.
        p1, p2 = run("queued"), run("queued")
        child = run("waiting", 1)
        edge(child, p1)
        edge(child, p2)
        # parents_pending saying more than the edges: recounted (and the child released).
        lone = run("waiting", 3)
        edge(lone, p1)
    rows = {r["id"]: r for r in run_rows(conn, [child, lone])}
    assert (rows[child]["status"], rows[child]["parents_pending"]) == ("waiting", 2)
    assert (rows[lone]["status"], rows[lone]["parents_pending"]) == ("waiting", 1)

    # A parent another transaction wrote (and could end at any moment): not settled by this
    # one's insert; an ended parent counts at once.
    done = run("queued")
    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
        " WHERE id = %s",
        (done,),
    )
    with conn.transaction():
        late = run("waiting", 2)
        conn.execute("INSERT INTO pgsched.run_edges (child, parent) VALUES (%s, %s), (%s, %s)", (late, done, late, p2))
    assert [(r["status"], r["parents_pending"]) for r in run_rows(conn, [late])] == [("waiting", 1)]


def test_a_python_workflow_takes_the_one_pass_path_in_the_callers_transaction_too(etl: App, conn) -> None:
    """Schema 0031: a workflow enqueued with conn= is written in a savepoint; its parents'
    xmin is the savepoint's, not the top transaction's. The edge trigger compares with the
    xmin of an edge the same statement wrote, so the usual insert still needs no recount (and
    locks no parent), whatever its shape."""
    t = etl.tasks

    def recounts() -> int:
        # Both versions: since 0048 the edge trigger's general path calls runs_recount_waiting_v2.
        row = conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_xact_user_functions"
            " WHERE funcname IN ('runs_recount_waiting', 'runs_recount_waiting_v2')"
        ).fetchone()
        return int(row[0])

    earlier = conn.execute("SELECT pgsched.enqueue_v3('note')").fetchone()[0]
    with conn.transaction():
        conn.execute("SET LOCAL track_functions = 'all'")
        line = chain(t["note"].s(tag="a"), t["note"].s(), t["note"].s()).enqueue(conn=conn)
        fan = chord([t["square"].s(x=i) for i in range(5)], t["total"].s()).enqueue(conn=conn)
        wf = etl.workflow("diamond")
        a = wf.add(t["note"], tag="a")
        b, c = wf.add(t["note"], tag="b", after=[a]), wf.add(t["note"], tag="c", after=[a])
        wf.add(t["note"], tag="d", after=[b, c], when="finished")
        diamond = wf.enqueue(conn=conn)
        assert recounts() == 0
        # What the count sees: an edge to a parent another transaction wrote takes the general path.
        late = conn.execute(
            "INSERT INTO pgsched.runs (task, status) VALUES ('note', 'waiting') RETURNING id"
        ).fetchone()[0]
        conn.execute("INSERT INTO pgsched.run_edges (child, parent) VALUES (%s, %s)", (late, earlier))
        assert recounts() == 1
    pending = {r["id"]: r["parents_pending"] for r in run_rows(conn, line.run_ids + fan.run_ids + diamond.run_ids)}
    assert [pending[i] for i in line.run_ids] == [None, 1, 1]
    assert [pending[i] for i in fan.run_ids] == [None] * 5 + [5]
    assert [pending[i] for i in diamond.run_ids] == [None, 1, 1, 2]

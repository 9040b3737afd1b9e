"""Parents that ended and moved to pgsched.runs_history (schema 0030) before a run was made to
wait for them (schema 0048): `enqueue_v3(depends_on => ...)` and a plain INSERT of an edge find
them there, and they count at once by the edge's condition, as a parent that ended and stayed in
pgsched.runs does. A moved parent is never updated, so it joins no workflow: the child starts
one (or joins its other parents') without it. Real PostgreSQL and, where a result flows, a real
worker in-process."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from pgsched import App, current_run
from pgsched.maintenance import repair_workflows
from pgsched.workflows import get_workflow, step_graph, step_tree
from tests.support.api import Api, make_keys
from tests.support.db import insert_restored, scalar
from tests.support.history import where
from tests.support.inprocess import finish
from tests.support.ui import ui_client
from tests.support.waiting import wait_until


def row_of(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM pgsched.runs_all WHERE id = %s", (run_id,)).fetchone()
    assert row is not None, f"run {run_id} does not exist"
    return row


def ended_and_moved(conn: psycopg.Connection[Any], status: str, *, tenant: str | None = None) -> int:
    """A plain run (no workflow, no unique_key) ended by a plain UPDATE, which moves it."""
    run_id = scalar(conn, "SELECT pgsched.enqueue_v3('parent', tenant => %s)", (tenant,))
    conn.execute(
        "UPDATE pgsched.runs SET status = %s, attempt = 1, started_at = now(), finished_at = now(),"
        " result = CASE WHEN %s = 'succeeded' THEN '7'::jsonb END WHERE id = %s",
        (status, status, run_id),
    )
    assert where(conn, run_id) == ["history"]
    return int(run_id)


def enqueue_after(conn: psycopg.Connection[Any], parents: list[int], condition: str = "succeeded") -> int:
    return int(
        scalar(
            conn,
            "SELECT pgsched.enqueue_v3('child', depends_on => %s::bigint[], condition => %s)",
            (parents, condition),
        )
    )


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pgsched.runs_all), (SELECT count(*) FROM pgsched.run_edges),"
        " (SELECT count(*) FROM pgsched.workflows)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_a_child_of_a_moved_succeeded_parent_is_queued_at_once_and_its_worker_gets_the_result(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    @app.task
    def report(tag: str) -> dict[str, Any]:
        return {"tag": tag, "parents": current_run().parent_results}

    parent = add.enqueue(a=2, b=3)
    assert finish(app, dsn, parent)[0]["status"] == "succeeded"
    assert where(conn, parent) == ["history"]

    child = scalar(
        conn, "SELECT pgsched.enqueue_v3('report', '{\"tag\": \"x\"}', depends_on => ARRAY[%s]::bigint[])", (parent,)
    )
    row = row_of(conn, child)
    assert (row["status"], row["parents_pending"]) == ("queued", 0)
    assert where(conn, parent) == ["history"]  # not moved back, not updated
    assert row_of(conn, parent)["workflow_id"] is None

    # The child started a workflow without its moved parent; the views show it, naming the parent.
    workflow = get_workflow(conn, row["workflow_id"])
    assert (workflow["steps"], workflow["unfinished"]) == (1, 1)
    steps = workflow["steps_shown"]
    assert [(s["id"], s["parents"], s["conditions"]) for s in steps] == [(child, [parent], ["succeeded"])]
    assert [line.step["id"] for line in step_tree(steps)] == [child]
    graph = step_graph(steps)
    assert graph is not None and ([n.id for n in graph.nodes], graph.edges) == ([child], [])
    view = conn.execute(
        "SELECT run_id, parents FROM pgsched.workflow_steps WHERE workflow_id = %s", (row["workflow_id"],)
    ).fetchall()
    assert view == [(child, [parent])]

    done = finish(app, dsn, child)[0]
    assert (done["status"], done["result"]) == ("succeeded", {"tag": "x", "parents": [5]})
    assert get_workflow(conn, row["workflow_id"])["status"] == "succeeded"


def test_a_moved_failed_parent_cancels_a_child_waiting_for_success_and_queues_one_waiting_for_failure(
    conn: psycopg.Connection[Any],
) -> None:
    failed = ended_and_moved(conn, "failed")
    for_success = enqueue_after(conn, [failed])
    for_failure = enqueue_after(conn, [failed], "failed")
    for_either = enqueue_after(conn, [failed], "finished")

    cancelled = row_of(conn, for_success)
    assert cancelled["status"] == "cancelled"
    assert cancelled["errors"][-1]["type"] == "UpstreamFailed"
    assert cancelled["errors"][-1]["upstream_run"] == failed
    assert [row_of(conn, run_id)["status"] for run_id in (for_failure, for_either)] == ["queued", "queued"]
    # Its workflow ended with it: a step was cancelled because an upstream run failed.
    assert get_workflow(conn, cancelled["workflow_id"])["status"] == "cancelled"

    succeeded = ended_and_moved(conn, "succeeded")
    assert row_of(conn, enqueue_after(conn, [succeeded], "failed"))["status"] == "cancelled"
    assert row_of(conn, enqueue_after(conn, [succeeded], "finished"))["status"] == "queued"
    cancelled_parent = ended_and_moved(conn, "cancelled")
    assert row_of(conn, enqueue_after(conn, [cancelled_parent], "finished"))["status"] == "cancelled"


# A parent: open (queued), or ended with a status and then kept in runs (a step of a workflow
# stays there until the leader moves its succeeded workflow, 0047) or moved to the history.
PARENT = st.one_of(
    st.just(("queued", "runs")),
    st.tuples(st.sampled_from(["succeeded", "failed", "cancelled"]), st.sampled_from(["runs", "history"])),
)
HOLDS = {"succeeded": {"succeeded"}, "failed": {"failed"}, "finished": {"succeeded", "failed"}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(PARENT, min_size=1, max_size=4), condition=st.sampled_from(["succeeded", "failed", "finished"]))
def test_a_moved_parent_counts_exactly_as_an_ended_parent_kept_in_runs(
    conn: psycopg.Connection[Any], kinds: list[tuple[str, str]], condition: str
) -> None:
    ids = []
    kept = scalar(conn, "INSERT INTO pgsched.workflows (name) VALUES ('kept') RETURNING id")
    for status, place in kinds:
        run_id = scalar(conn, "SELECT pgsched.enqueue_v3('parent')")
        if status != "queued":
            conn.execute(
                "UPDATE pgsched.runs SET status = %s, attempt = 1, started_at = now(), finished_at = now(),"
                " workflow_id = CASE WHEN %s THEN %s::bigint END WHERE id = %s",
                (status, place == "runs", kept, run_id),
            )
        assert where(conn, run_id) == [place]
        ids.append(run_id)
    row = row_of(conn, enqueue_after(conn, ids, condition))
    ended = [status for status, _ in kinds if status != "queued"]
    still_open = len(kinds) - len(ended)
    if any(status not in HOLDS[condition] for status in ended):
        assert row["status"] == "cancelled"
    elif still_open:
        assert (row["status"], row["parents_pending"]) == ("waiting", still_open)
    else:
        assert (row["status"], row["parents_pending"]) == ("queued", 0)


def test_moved_and_open_parents_together_wait_only_for_the_open_one(conn: psycopg.Connection[Any]) -> None:
    moved = ended_and_moved(conn, "succeeded")
    open_parent = scalar(conn, "SELECT pgsched.enqueue_v3('open')")
    child = enqueue_after(conn, [open_parent, moved])
    row = row_of(conn, child)
    assert (row["status"], row["parents_pending"]) == ("waiting", 1)
    # The open parent joins the child's workflow (so it stays in runs when it ends); the moved one cannot.
    assert row_of(conn, open_parent)["workflow_id"] == row["workflow_id"]
    assert get_workflow(conn, row["workflow_id"])["steps"] == 2

    conn.execute(
        "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
        " WHERE id = %s",
        (open_parent,),
    )
    assert where(conn, open_parent) == ["runs"]
    assert (row_of(conn, child)["status"], row_of(conn, child)["parents_pending"]) == ("queued", 0)
    # The edges keep depends_on's order, the moved parent's included (its parent_results place).
    assert conn.execute(
        "SELECT parent, position FROM pgsched.run_edges WHERE child = %s ORDER BY position", (child,)
    ).fetchall() == [(open_parent, 0), (moved, 1)]


def test_a_plain_insert_of_an_edge_to_a_moved_parent_counts_it_at_once(conn: psycopg.Connection[Any]) -> None:
    succeeded = ended_and_moved(conn, "succeeded")
    failed = ended_and_moved(conn, "failed")
    with conn.transaction():
        released = scalar(conn, "INSERT INTO pgsched.runs (task, status) VALUES ('report', 'waiting') RETURNING id")
        conn.execute("INSERT INTO pgsched.run_edges (child, parent) VALUES (%s, %s)", (released, succeeded))
    row = row_of(conn, released)
    assert (row["status"], row["parents_pending"]) == ("queued", 0)
    assert row["workflow_id"] is not None  # a workflow of its own, named after its task
    assert get_workflow(conn, row["workflow_id"])["name"] == "report"

    with conn.transaction():
        doomed = scalar(conn, "INSERT INTO pgsched.runs (task, status) VALUES ('report', 'waiting') RETURNING id")
        conn.execute(
            "INSERT INTO pgsched.run_edges (child, parent, condition)"
            " VALUES (%s, %s, 'succeeded'), (%s, %s, 'finished')",
            (doomed, failed, doomed, succeeded),
        )
    assert row_of(conn, doomed)["status"] == "cancelled"
    assert row_of(conn, doomed)["errors"][-1]["upstream_run"] == failed
    assert where(conn, succeeded) == where(conn, failed) == ["history"]


def test_an_enqueue_waiting_on_a_parent_that_moves_meanwhile_finds_it_in_the_history(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    """The parent's completion holds its row (deleted by the move) when enqueue_v3 comes to lock
    it; once that commits, the parent is found in the history and counts at once."""
    parent = scalar(conn, "SELECT pgsched.enqueue_v3('parent')")
    with psycopg.connect(dsn) as ender:  # not autocommit: holds the move open
        ender.execute(
            "UPDATE pgsched.runs SET status = 'succeeded', attempt = 1, started_at = now(), finished_at = now()"
            " WHERE id = %s",
            (parent,),
        )
        outcome: dict[str, Any] = {}

        def enqueue() -> None:
            with psycopg.connect(dsn, autocommit=True) as other:
                outcome["pid"] = other.info.backend_pid
                try:
                    outcome["child"] = enqueue_after(other, [parent])
                except psycopg.Error as error:
                    outcome["error"] = error

        waiter = threading.Thread(target=enqueue)
        waiter.start()
        wait_until(
            lambda: (
                "pid" in outcome
                and scalar(
                    conn, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", (outcome["pid"],)
                )
            ),
            10,
            "the enqueue to wait for the parent's row lock",
        )
        ender.commit()
        waiter.join(10)
    assert "error" not in outcome, outcome.get("error")
    assert where(conn, parent) == ["history"]
    assert (row_of(conn, outcome["child"])["status"], row_of(conn, outcome["child"])["parents_pending"]) == (
        "queued",
        0,
    )


def restored_waiting_child(conn: psycopg.Connection[Any], parents: list[int], condition: str) -> int:
    """A waiting run and its edges written as a restore writes them, triggers off: nothing has
    counted its parents (parents_pending NULL), which is what the leader's repair is for."""
    row = insert_restored(
        conn, "INSERT INTO pgsched.runs (task, status) VALUES ('child', 'waiting') RETURNING id"
    ).fetchone()
    assert row is not None
    child = row[0]
    insert_restored(
        conn,
        "INSERT INTO pgsched.run_edges (child, parent, condition) SELECT %s, p, %s FROM unnest(%s::bigint[]) AS p",
        (child, condition, parents),
    )
    return int(child)


def repair(dsn: str) -> int:
    """One workflow repair as the leader's maintenance makes it, for runs of any age."""

    async def main() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as leader:
            return await repair_workflows(leader, min_age_s=0.0)

    return asyncio.run(main())


def moved_parent_of(conn: psycopg.Connection[Any], child: int) -> int:
    """The parent of ``child`` that is in the history."""
    return int(
        scalar(
            conn,
            "SELECT e.parent FROM pgsched.run_edges AS e JOIN pgsched.runs_history AS h ON h.id = e.parent"
            " WHERE e.child = %s",
            (child,),
        )
    )


def test_the_leaders_repair_releases_or_cancels_a_run_whose_parent_moved_as_the_edge_says(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    open_parent = scalar(conn, "SELECT pgsched.enqueue_v3('open')")
    children: dict[tuple[str, str, bool], int] = {}
    for status in ("succeeded", "failed", "cancelled"):
        moved = ended_and_moved(conn, status)
        for condition in ("succeeded", "failed", "finished"):
            children[status, condition, False] = restored_waiting_child(conn, [moved], condition)
            children[status, condition, True] = restored_waiting_child(conn, [open_parent, moved], condition)

    # 0019's repair (the previous release's leader) reads parents in runs only: all stay waiting,
    # those with an open parent counted as waiting for it alone.
    assert scalar(conn, "SELECT pgsched.workflow_repair(interval '0 s', 100)") == len(children)
    assert {row_of(conn, child)["status"] for child in children.values()} == {"waiting"}

    # Those waiting for the open parent whose moved parent meets its edge are right already.
    right = [
        child for (status, condition, with_open), child in children.items() if with_open and status in HOLDS[condition]
    ]
    assert repair(dsn) == len(children) - len(right) == 14
    for (status, condition, with_open), child in children.items():
        row = row_of(conn, child)
        if status not in HOLDS[condition]:
            assert row["status"] == "cancelled", (status, condition, with_open)
            assert row["errors"][-1]["upstream_run"] == moved_parent_of(conn, child)
        elif with_open:
            assert (row["status"], row["parents_pending"]) == ("waiting", 1), (status, condition)
        else:
            assert (row["status"], row["parents_pending"]) == ("queued", 0), (status, condition)
    # What is left waiting waits for its open parent only: the next round finds nothing to do.
    assert repair(dsn) == 0


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{moved}, {gone}]::bigint[])",
            "depends_on names run {gone}, which does not exist (without a tenant)",
        ),
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{theirs}]::bigint[])",
            "depends_on names run {theirs}, which does not exist (without a tenant)",
        ),
        (
            "SELECT pgsched.enqueue_v3('x', depends_on => ARRAY[{moved}]::bigint[], tenant => 'acme')",
            "depends_on names run {moved}, which does not exist for tenant acme",
        ),
        ("INSERT INTO pgsched.run_edges (child, parent) VALUES ({w}, {theirs})", "belongs to another tenant"),
        ("INSERT INTO pgsched.run_edges (child, parent) VALUES ({w}, {gone})", "no run {gone} (the parent)"),
    ],
)
def test_a_parent_that_is_nowhere_or_another_tenants_moved_run_is_refused_and_nothing_is_written(
    conn: psycopg.Connection[Any], statement: str, message: str
) -> None:
    moved = ended_and_moved(conn, "succeeded")
    theirs = ended_and_moved(conn, "succeeded", tenant="acme")
    gone = ended_and_moved(conn, "succeeded")
    conn.execute("DELETE FROM pgsched.runs_history WHERE id = %s", (gone,))  # as retention does
    open_parent = scalar(conn, "SELECT pgsched.enqueue_v3('open')")
    before = counts(conn)
    names = {"moved": moved, "theirs": theirs, "gone": gone}
    with pytest.raises(psycopg.Error) as raised:
        with conn.transaction():
            w = enqueue_after(conn, [open_parent])
            conn.execute(statement.format(w=w, **names).encode())
    assert message.format(**names) in str(raised.value)
    assert counts(conn) == before
    assert row_of(conn, open_parent)["workflow_id"] is None


def test_the_dashboard_page_and_rest_show_a_workflow_whose_step_waited_on_a_moved_parent(
    api: Api, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    moved = ended_and_moved(conn, "succeeded")
    child = enqueue_after(conn, [moved])
    workflow_id = row_of(conn, child)["workflow_id"]
    shown = api.get(f"/workflows/{workflow_id}").json()
    assert [(s["id"], s["parents"]) for s in shown["steps_shown"]] == [(child, [moved])]
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        page = client.get(f"/ui/workflows/{workflow_id}")
    assert page.status_code == 200, page.text
    assert f'href="/ui/runs/{child}"' in page.text

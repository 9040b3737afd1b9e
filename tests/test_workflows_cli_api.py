"""Workflows as people see them: `pgsched workflows list | show | cancel`, REST /workflows
(tenant-scoped like /runs), the psql view of steps, and bad input at each of them."""

from __future__ import annotations

from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgsched import App, chord
from tests.support.api import Api
from tests.support.cli import assert_one_error_line, run_cli


def build(app: App, tenant: str | None = None) -> Any:
    if "part" not in app.tasks:

        @app.task
        def part(n: int) -> int:
            return n

        @app.task
        def merge(values: list[int]) -> int:
            return sum(values)

    part, merge = app.tasks["part"], app.tasks["merge"]
    return chord([part.s(n=i) for i in range(3)], merge.s()).enqueue(name="merge-parts", tenant=tenant)


def test_cli_lists_shows_the_steps_as_a_tree_and_cancels(app: App, dsn: str) -> None:
    handle = build(app)
    listed = run_cli(dsn, "workflows", "list")
    assert listed.returncode == 0, listed.stderr
    assert "merge-parts" in listed.stdout and "running" in listed.stdout
    shown = run_cli(dsn, "workflows", "show", str(handle.id))
    assert shown.returncode == 0, shown.stderr
    parts, callback = handle.run_ids[:3], handle.run_ids[3]
    assert f"run {parts[0]} part: queued" in shown.stdout
    assert f"└─ run {callback} merge: waiting (also after {parts[1]}, {parts[2]})" in shown.stdout
    cancelled = run_cli(dsn, "workflows", "cancel", str(handle.id))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"workflow {handle.id}: 4 step(s) cancelled or asked to stop" in cancelled.stdout
    shown = run_cli(dsn, "workflows", "show", str(handle.id))
    assert (
        f"run {callback} merge: cancelled (also after {parts[1]}, {parts[2]}) — upstream run {parts[0]} was cancelled"
        in shown.stdout
    )


def test_cli_refuses_bad_input_in_one_line(dsn: str) -> None:
    assert_one_error_line(run_cli(dsn, "workflows", "show", "424242"), "no workflow with id 424242")
    assert_one_error_line(run_cli(dsn, "workflows", "cancel", "0"), "a workflow id is a positive integer")
    assert_one_error_line(run_cli(dsn, "workflows", "list", "--status", "paused"), "status must be one of")


def test_rest_lists_shows_and_cancels_workflows_of_the_keys_tenant_only(
    app: App, api: Api, conn: psycopg.Connection[Any]
) -> None:
    ours = build(app, tenant="acme")
    theirs = build(app, tenant="beta")
    page = api.get("/workflows", as_="acme").json()
    assert [w["id"] for w in page["items"]] == [ours.id]
    assert {w["id"] for w in api.get("/workflows").json()["items"]} == {ours.id, theirs.id}
    assert api.get(f"/workflows/{theirs.id}", as_="acme").status_code == 404
    assert api.post(f"/workflows/{theirs.id}/cancel", as_="acme").status_code == 404
    shown = api.get(f"/workflows/{ours.id}", as_="acme").json()
    assert [s["id"] for s in shown["steps_shown"]] == ours.run_ids
    assert shown["steps_shown"][3]["parents"] == ours.run_ids[:3]
    assert shown["steps_shown"][3]["status"] == "waiting"
    cancelled = api.post(f"/workflows/{ours.id}/cancel", as_="acme")
    assert cancelled.status_code == 200 and cancelled.json() == {"id": ours.id, "cancelled": 4}
    assert api.get(f"/workflows/{ours.id}", as_="acme").json()["status"] == "cancelled"
    assert api.get(f"/workflows/{theirs.id}", as_="beta").json()["status"] == "running"
    # The psql view shows the same.
    rows = conn.execute(
        "SELECT run_id, status, parents FROM pgsched.workflow_steps WHERE workflow_id = %s ORDER BY run_id",
        (theirs.id,),
    ).fetchall()
    assert rows[-1] == (theirs.run_ids[3], "waiting", theirs.run_ids[:3])


def test_rest_refuses_bad_input_with_4xx(api: Api) -> None:
    assert api.get("/workflows/424242").status_code == 404
    assert api.get("/workflows", params={"status": "paused"}).status_code == 400
    assert api.get("/workflows", params={"limit": 0}).status_code == 400
    assert api.get("/workflows", params={"cursor": "x"}).status_code == 422
    assert api.post("/workflows/1/cancel", as_="read").status_code == 403


# ---- the dashboard


def test_the_dashboard_draws_a_workflow_and_links_it_from_each_runs_page(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    from tests.support.api import make_keys
    from tests.support.ui import ui_client

    keys = make_keys(conn)
    ours = build(app, tenant="acme")
    with ui_client(dsn, keys["admin"]) as client:
        run_page = client.get(f"/ui/runs/{ours.run_ids[3]}").text
        assert f'<a href="/ui/workflows/{ours.id}">workflow {ours.id}</a>' in run_page
        page = client.get(f"/ui/workflows/{ours.id}")
        assert page.status_code == 200
        assert page.text.count('<g class="step queued">') == 3 and page.text.count('<g class="step waiting">') == 1
        assert page.text.count('<line class="edge succeeded"') == 3
        assert f'<a href="/ui/runs/{ours.run_ids[0]}">' in page.text
        assert client.get("/ui/workflows/424242").status_code == 404
        assert client.get("/ui/workflows/x").status_code in (400, 422)
    with ui_client(dsn, keys["beta"]) as client:
        assert client.get(f"/ui/workflows/{ours.id}").status_code == 404


def test_the_dashboard_lists_workflows_newest_first_paged_per_tenant_and_links_each(
    app: App, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    import re

    from pgsched.ui.pages import WORKFLOWS_PER_PAGE
    from tests.support.api import make_keys
    from tests.support.ui import ui_client

    keys = make_keys(conn)
    ours = [build(app, tenant="acme") for _ in range(WORKFLOWS_PER_PAGE + 2)]
    theirs = build(app, tenant="beta")
    cancelled = ours[-1]
    conn.execute("SELECT pgsched.workflow_cancel(%s)", (cancelled.id,))

    def listed(page: str) -> list[int]:
        return [int(n) for n in re.findall(r'<th scope="row"><a href="/ui/workflows/(\d+)">', page)]

    with ui_client(dsn, keys["acme"]) as client:
        first = client.get("/ui/workflows")
        assert first.status_code == 200
        assert '<a href="/ui/workflows" aria-current="page">Workflows</a>' in first.text  # in the nav
        newest = [h.id for h in reversed(ours)]
        assert listed(first.text) == newest[:WORKFLOWS_PER_PAGE]  # theirs is beta's: not listed
        row = first.text[first.text.index(f'<a href="/ui/workflows/{cancelled.id}">') :]
        row = row[: row.index("</tr>")]
        assert "merge-parts" in row and '<span class="status cancelled">cancelled</span>' in row
        assert re.search(
            r'<td data-label="Steps" class="n">4</td>\s*<td data-label="Not ended" class="n">0</td>', row
        ), row
        assert '<th scope="col">Tenant</th>' not in first.text  # a tenant's key sees only its own
        older = re.search(r'href="/ui/workflows\?cursor=(\d+)">Older', first.text)
        assert older is not None and int(older[1]) == newest[WORKFLOWS_PER_PAGE - 1]
        second = client.get(f"/ui/workflows?cursor={older[1]}")
        assert listed(second.text) == newest[WORKFLOWS_PER_PAGE:] and "Older" not in second.text
        only = client.get("/ui/workflows?status=cancelled")
        assert listed(only.text) == [cancelled.id]
        assert 'href="/ui/workflows?status=cancelled&amp;cursor=' not in only.text
        for bad in ("status=paused", "cursor=x", "limit=5"):
            refused = client.get(f"/ui/workflows?{bad}")
            assert refused.status_code == 400, (bad, refused.status_code)
        assert client.get(f"/ui/workflows/{theirs.id}").status_code == 404
    with ui_client(dsn, keys["admin"]) as client:
        page = client.get("/ui/workflows").text
        assert (
            listed(page)[0] == theirs.id and '<td data-label="Tenant">beta</td>' in page
        )  # the whole installation, with tenants


# ---- POST /workflows: a workflow described as data


def counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pgsched.runs_all), (SELECT count(*) FROM pgsched.run_edges),"
        " (SELECT count(*) FROM pgsched.workflows)"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_rest_creates_a_workflow_from_steps_in_any_order_for_the_keys_tenant(
    api: Api, conn: psycopg.Connection[Any]
) -> None:
    body = {
        "name": "nightly-etl",
        "steps": [
            {"key": "load", "task": "load", "after": ["b", "a"]},
            {"key": "alert", "task": "alert", "after": ["load"], "when": "failed", "queue": "ops", "priority": 5},
            {"key": "a", "task": "extract", "args": {"file": "1.csv"}},
            {"key": "b", "task": "extract", "args": {"file": "2.csv"}, "max_attempts": 1, "delay": 60},
        ],
    }
    created = api.post("/workflows", json=body, as_="acme")
    assert created.status_code == 201, created.text
    out = created.json()
    ids = out["run_ids"]
    assert list(ids) == ["a", "b", "load", "alert"]  # parents first: each run after its parents
    assert ids["a"] < ids["b"] < ids["load"] < ids["alert"]
    shown = api.get(f"/workflows/{out['id']}", as_="acme").json()
    assert (shown["name"], shown["tenant"], shown["steps"]) == ("nightly-etl", "acme", 4)
    steps = {s["id"]: s for s in shown["steps_shown"]}
    assert steps[ids["load"]]["parents"] == [ids["b"], ids["a"]]  # in after's order
    assert steps[ids["alert"]]["conditions"] == ["failed"]
    rows = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT id, status::text, queue, priority, max_attempts, args, run_at > now() + interval '50 seconds'"
            " FROM pgsched.runs_all"
        )
    }
    assert rows[ids["a"]] == ("queued", "default", 0, 3, {"file": "1.csv"}, False)
    assert rows[ids["b"]] == ("queued", "default", 0, 1, {"file": "2.csv"}, True)
    assert rows[ids["alert"]][:3] == ("waiting", "ops", 5)
    assert api.get(f"/workflows/{out['id']}", as_="beta").status_code == 404
    assert api.post("/workflows", json=body, as_="read").status_code == 403


def _bad_bodies() -> list[tuple[dict[str, Any], str]]:
    step = {"key": "a", "task": "t"}
    return [
        ({"name": "w", "steps": []}, "at least one step"),
        ({"name": "w", "steps": [step, step]}, "step 'a': two steps have this key"),
        ({"name": "w", "steps": [{"key": "a", "task": "t", "after": ["zz"]}]}, "step 'a': after names 'zz'"),
        ({"name": "w", "steps": [{"key": "a", "task": "t", "after": ["a"]}]}, "step 'a': after names the step itself"),
        (
            {"name": "w", "steps": [step, {"key": "b", "task": "t", "after": ["a", "a"]}]},
            "step 'b': after names a step twice",
        ),
        (
            {
                "name": "w",
                "steps": [
                    step,
                    {"key": "b", "task": "t", "after": ["a", "d"]},
                    {"key": "c", "task": "t", "after": ["b"]},
                    {"key": "d", "task": "t", "after": ["c"]},
                ],
            },
            "step 'b': its after= makes a cycle ('b' -> 'd' -> 'c' -> 'b')",
        ),
        ({"name": "w", "steps": [step, {"key": "b", "task": "t", "after": ["a"], "when": "maybe"}]}, "step 'b' (t)"),
        ({"name": "w", "steps": [{"key": "a", "task": " "}]}, "step 'a' ( ): task must be"),
        ({"name": "w", "steps": [{"key": "a", "task": "t", "queue": "no spaces"}]}, "step 'a' (t): queue"),
        ({"name": "w", "steps": [{"key": "a", "task": "t", "priority": 1000}]}, "step 'a' (t): priority"),
        ({"name": " ", "steps": [step]}, "a workflow's name is 1-200 characters"),
    ]


def test_rest_refuses_a_bad_workflow_naming_the_step_and_writes_nothing(
    api: Api, conn: psycopg.Connection[Any]
) -> None:
    for body, message in _bad_bodies():
        refused = api.post("/workflows", json=body, as_="acme")
        assert 400 <= refused.status_code < 500, (body, refused.status_code)
        assert message in refused.json()["detail"], (body, refused.json())
    for body in ({"steps": []}, {"name": "w", "steps": [{"task": "t"}]}, {"name": "w", "steps": [], "x": 1}):
        assert api.post("/workflows", json=body).status_code == 400, body
    assert counts(conn) == (0, 0, 0)


_KEYS = st.sampled_from(["a", "b", "c", "d", "e"])
_STEP = st.fixed_dictionaries(
    {"key": _KEYS, "task": st.sampled_from(["t", "", "x" * 201, "ok"])},
    optional={
        "after": st.lists(_KEYS, max_size=3),
        "when": st.sampled_from(["succeeded", "failed", "finished", "often", ""]),
        "priority": st.integers(-200, 200),
        "max_attempts": st.integers(-2, 3),
        "queue": st.sampled_from(["default", "bad queue", ""]),
        "args": st.sampled_from([{}, {"n": 1}]),
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEP, min_size=1, max_size=6))
def test_rest_any_generated_workflow_is_written_whole_or_refused_with_nothing_written(
    api: Api, conn: psycopg.Connection[Any], steps: list[dict[str, Any]]
) -> None:
    conn.execute("TRUNCATE pgsched.runs, pgsched.run_edges, pgsched.workflows")
    response = api.post("/workflows", json={"name": "generated", "steps": steps})
    if response.status_code == 201:
        assert counts(conn)[0] == len(steps) and counts(conn)[2] == 1
        assert counts(conn)[1] == sum(len(s.get("after", [])) for s in steps)
    else:
        assert response.status_code in (400, 422), response.text
        detail = response.json()["detail"]
        assert detail.startswith(("step ", "steps")) or "Validation failed" in detail, detail
        assert counts(conn) == (0, 0, 0)

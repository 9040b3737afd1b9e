"""Workflows as people see them: `pgsched workflows list | show | cancel`, REST /workflows
(tenant-scoped like /runs), the psql view of steps, and bad input at each of them."""

from __future__ import annotations

from typing import Any

import psycopg

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
        assert re.search(r'<td class="n">4</td>\s*<td class="n">0</td>', row), row  # 4 steps, none open
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
        assert listed(page)[0] == theirs.id and "<td>beta</td>" in page  # the whole installation, with tenants

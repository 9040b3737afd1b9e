"""The dashboard in a real browser: Debian's Chromium driven by Playwright, against a real
`pgsched api` process and real workers on the suite's PostgreSQL. Each test saves a
screenshot under build/screenshots/ (docs/guides/dashboard.md shows some of them)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import psycopg
import pytest

from pgsched.maintenance import refresh_rollup
from tests.support.api import make_keys, serving_api
from tests.support.db import insert_restored, scalar
from tests.support.ui import CHROMIUM, chromium, finished_run, screenshot
from tests.support.waiting import wait_until
from tests.support.workers import Workers, insert_run, status_of

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not __import__("os").path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM} (apt install chromium)"
    ),
]
LIVE_S = 10  # a live page shows a change within 2 s of the database; this much slack for a busy machine


@pytest.fixture
def keys(conn: psycopg.Connection) -> dict[str, str]:
    return make_keys(conn)


@pytest.fixture
def dashboard(dsn: str) -> Iterator[str]:
    """The URL of a real `pgsched api` serving this test's database."""
    with serving_api("--dsn", dsn) as (url, _):
        yield url


@pytest.fixture
def browser() -> Iterator[Any]:
    with chromium() as launched:
        yield launched


def signed_in(browser: Any, url: str, key: str, **context: Any) -> Any:
    """A new tab signed in through the login form, on the queues page."""
    page = browser.new_context(**context).new_page()
    page.set_default_timeout(LIVE_S * 1000)
    page.goto(f"{url}/ui")
    assert page.url.endswith("/ui/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/ui")
    return page


def post_from_the_page(page: Any, path: str, fields: dict[str, str]) -> int:
    """A same-origin POST made by the page's own JavaScript (its cookie goes along): the status."""
    return int(
        page.evaluate(
            "async ([path, fields]) => (await fetch(path, {method: 'POST', body: new URLSearchParams(fields)})).status",
            [path, fields],
        )
    )


def csrf_on(page: Any) -> str:
    return str(page.locator('input[name="csrf_token"]').first.get_attribute("value"))


def test_sign_in_and_a_run_inserted_by_sql_appears_without_a_reload(browser, dashboard, keys, conn):
    page = signed_in(browser, dashboard, keys["admin"])
    assert page.get_by_role("heading", name="Queues").is_visible()
    page.goto(f"{dashboard}/ui/runs")
    run_id = insert_run(conn, "record", {"key": "from-sql"})
    page.get_by_role("link", name=str(run_id), exact=True).wait_for()
    screenshot(page, "runs-live")


def test_the_queues_page_charts_the_last_hour_and_works_on_a_phone_in_dark_mode(browser, dashboard, keys, conn):
    for _ in range(3):
        insert_run(conn, "record", {"key": "q"}, queue="emails")
    # An hour of finished runs (a few failed), counted into the rollup as the beat leader does.
    insert_restored(  # as a restore writes them: 0009 lets SQL insert only queued runs
        conn,
        "INSERT INTO pgsched.runs (task, queue, status, attempt, started_at, finished_at)"
        " SELECT 'send', q, CASE WHEN m % 11 = 0 THEN 'failed' ELSE 'succeeded' END::pgsched.run_status, 1,"
        "        now() - make_interval(mins => m) - interval '2 seconds', now() - make_interval(mins => m)"
        " FROM generate_series(0, 59) AS m, generate_series(1, 1 + (60 - m) / 6) AS n,"
        "      unnest(ARRAY['emails', 'reports']) AS q",
    )
    # In a thread of its own: Playwright's sync API runs an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, rollup(conn.info.dsn)).result()
    page = signed_in(browser, dashboard, keys["admin"], viewport={"width": 1280, "height": 600})
    chart = page.get_by_role("img", name=re.compile(r"emails: \d+ succeeded and \d+ failed in the last hour"))
    assert chart.is_visible()
    screenshot(page, "queues")
    phone = signed_in(browser, dashboard, keys["admin"], viewport={"width": 375, "height": 800}, color_scheme="dark")
    assert phone.get_by_role("row", name=re.compile("emails")).is_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375, "the page itself does not scroll sideways"
    phone_chart = phone.get_by_role("img", name=re.compile(r"emails: \d+ succeeded"))
    box = phone_chart.bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, f"the chart is on screen: {box}"
    assert phone.get_by_text("Oldest due run waits").first.is_visible(), "each figure keeps its words on a phone"
    background = phone.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 23, 29)", "dark colours when the system asks for them"
    screenshot(phone, "queues-phone-dark")


async def rollup(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await refresh_rollup(conn, minutes=60)


def test_filters_narrow_the_runs_list(browser, dashboard, keys, conn):
    wanted = insert_run(conn, "record", {"customer": 42})
    other_task = insert_run(conn, "slow", {"customer": 42})
    other_args = insert_run(conn, "record", {"customer": 7})
    page = signed_in(browser, dashboard, keys["read"])
    page.goto(f"{dashboard}/ui/runs")
    page.get_by_label("Task").fill("record")
    page.get_by_label("Args contain").fill('{"customer": 42}')
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"task=record"))
    assert page.get_by_role("link", name=str(wanted), exact=True).is_visible()
    for hidden in (other_task, other_args):
        assert page.get_by_role("link", name=str(hidden), exact=True).count() == 0
    screenshot(page, "runs-filtered")


def test_a_failed_runs_traceback_then_retry_queues_it_and_a_worker_runs_it(
    browser, dashboard, keys, conn, workers: Workers
):
    workers.start()
    run_id = workers.run_until(
        "fail_first", {"key": "retry-me"}, "failed", 20, "the first attempt to fail", max_attempts=1
    )
    page = signed_in(browser, dashboard, keys["write"])
    page.goto(f"{dashboard}/ui/runs/{run_id}")
    traceback = page.locator("pre.traceback")
    assert "FirstAttemptFails: first attempt for retry-me fails on purpose" in traceback.inner_text()
    assert "Traceback (most recent call last)" in traceback.inner_text()
    screenshot(page, "run-failed")
    page.get_by_role("button", name="Retry").click()
    # Queued (as the retry left it) or already further along: the worker is fast.
    assert status_of(conn, run_id) in ("queued", "running", "succeeded")
    page.locator(".actions .status.succeeded").wait_for()  # the page updates itself
    assert page.get_by_role("button", name="Retry").count() == 0
    screenshot(page, "run-retried")


def test_cancel_a_running_run(browser, dashboard, keys, conn, workers: Workers):
    workers.start()
    run_id = workers.run_until("slow", {"key": "cancel-me", "seconds": 60}, "running", 20, "the slow run to start")
    page = signed_in(browser, dashboard, keys["admin"])
    page.goto(f"{dashboard}/ui/runs/{run_id}")
    page.get_by_role("button", name="Cancel").click()
    page.locator(".actions .status.cancelled").wait_for()
    assert status_of(conn, run_id) == "cancelled"
    screenshot(page, "run-cancelled")


def test_bulk_retry_of_every_failed_run_of_one_task(browser, dashboard, keys, conn, workers: Workers):
    failed = [finished_run(conn, "record", {"key": f"bulk-{i}"}) for i in range(3)]
    untouched = finished_run(conn, "slow", {"key": "other", "seconds": 0})
    page = signed_in(browser, dashboard, keys["write"])
    page.goto(f"{dashboard}/ui/failures")  # the group of record's failures drills down to its runs
    group = page.get_by_role("row", name=re.compile(r"^record "))
    assert group.get_by_role("cell").all_inner_texts()[:2] == ["ValueError", "3"], "error type, last hour"
    screenshot(page, "failures")
    group.get_by_role("link", name="record").click()
    page.wait_for_url(re.compile(r"/ui/runs\?.*task=record"))
    assert re.search(r"status=failed.*error_type=ValueError|error_type=ValueError.*status=failed", page.url)
    page.get_by_role("link", name="Retry all matching…").click()
    assert "3 runs match this filter" in page.locator("p.confirm").inner_text()
    page.get_by_role("button", name="Retry 3 runs").click()
    assert page.get_by_role("status").inner_text() == "Retried 3 runs."
    screenshot(page, "bulk-retried")
    workers.start()
    wait_until(lambda: all(status_of(conn, i) == "succeeded" for i in failed), 30, "the retried runs to succeed")
    assert status_of(conn, untouched) == "failed"


def test_trigger_a_job_and_watch_its_run_succeed(browser, dashboard, keys, conn, workers: Workers):
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, args, every_s, next_run_at)"
        " VALUES ('nightly-report', 'record', '{\"key\": \"triggered\"}', 86400, now() + interval '1 day')"
    )
    workers.start()
    page = signed_in(browser, dashboard, keys["write"])
    page.goto(f"{dashboard}/ui/jobs")
    screenshot(page, "jobs")
    page.get_by_role("button", name="Trigger nightly-report now").click()
    page.wait_for_url(re.compile(r"/ui/runs/\d+$"))
    page.locator(".actions .status.succeeded").wait_for()
    assert "nightly-report" in page.locator("dl.facts").inner_text()
    assert scalar(conn, "SELECT count(*) FROM pgsched.runs_all WHERE job_id IS NOT NULL AND status = 'succeeded'") == 1


def test_a_tenant_key_sees_only_its_tenant(browser, dashboard, keys, conn):
    own = insert_run(conn, "record", {"key": "acme"}, tenant="acme")
    other = insert_run(conn, "record", {"key": "beta"}, tenant="beta")
    page = signed_in(browser, dashboard, keys["acme"])
    page.goto(f"{dashboard}/ui/runs")
    assert page.get_by_role("link", name=str(own), exact=True).is_visible()
    assert page.get_by_role("link", name=str(other), exact=True).count() == 0
    assert page.get_by_role("link", name="Workers").count() == 0
    response = page.goto(f"{dashboard}/ui/runs/{other}")
    assert response.status == 404 and page.get_by_role("alert").inner_text() == f"no run with id {other}"
    screenshot(page, "tenant-404")


def test_a_read_key_sees_no_buttons_and_its_forged_post_is_refused(browser, dashboard, keys, conn):
    run_id = finished_run(conn, "record", {"key": "r"})
    page = signed_in(browser, dashboard, keys["read"])
    page.goto(f"{dashboard}/ui/runs/{run_id}")
    assert [b.strip() for b in page.get_by_role("button").all_inner_texts()] == ["Log out"]
    screenshot(page, "read-key-run")
    assert post_from_the_page(page, f"/ui/runs/{run_id}/retry", {"csrf_token": csrf_on(page)}) == 403
    assert status_of(conn, run_id) == "failed"


def test_a_post_without_the_csrf_token_is_refused_and_log_out_ends_the_session(browser, dashboard, keys, conn):
    run_id = finished_run(conn, "record", {"key": "c"})
    page = signed_in(browser, dashboard, keys["admin"])
    assert post_from_the_page(page, f"/ui/runs/{run_id}/retry", {}) == 403
    assert status_of(conn, run_id) == "failed"
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{dashboard}/ui/login")
    screenshot(page, "login")
    page.goto(f"{dashboard}/ui/runs")
    assert page.url.endswith("/ui/login"), "the session is over"
    assert scalar(conn, "SELECT count(*) FROM pgsched.ui_sessions") == 0


def test_a_workflow_page_shows_its_graph_and_each_step_links_to_its_run(browser, dashboard, keys, conn, dsn):
    from pgsched import App, chord

    app = App(dsn)

    @app.task
    def part(n: int) -> int:
        return n

    @app.task
    def merge(values: list[int]) -> int:
        return sum(values)

    handle = chord([part.s(n=i) for i in range(4)], merge.s()).enqueue(name="merge-parts")
    app.close()
    page = signed_in(browser, dashboard, keys["admin"])
    page.goto(f"{dashboard}/ui/runs/{handle.run_ids[-1]}")
    page.get_by_role("link", name=f"workflow {handle.id}").click()
    page.wait_for_url(f"{dashboard}/ui/workflows/{handle.id}")
    assert page.locator("svg.workflow-graph g.step").count() == 5
    screenshot(page, "workflow")
    page.locator("svg.workflow-graph a").first.click()
    page.wait_for_url(f"{dashboard}/ui/runs/{handle.run_ids[0]}")


def test_the_workflows_list_is_in_the_nav_links_each_workflow_and_fits_a_phone(browser, dashboard, keys, conn, dsn):
    from pgsched import App, chain

    app = App(dsn)

    @app.task
    def step(n: int) -> int:
        return n

    handles = [chain(step.s(n=1), step.si(n=2)).enqueue(name=f"nightly-etl-{i}") for i in range(3)]
    app.close()
    newest = handles[-1]
    page = signed_in(browser, dashboard, keys["admin"])
    page.get_by_role("navigation", name="Pages").get_by_role("link", name="Workflows").click()
    page.wait_for_url(f"{dashboard}/ui/workflows")
    assert page.get_by_role("heading", name="Workflows").is_visible()
    rows = page.locator("table.workflows tbody tr")
    assert rows.count() == 3
    assert rows.first.get_by_role("rowheader").inner_text() == str(newest.id)  # newest first
    assert "nightly-etl-2" in rows.first.inner_text() and "running" in rows.first.inner_text()
    screenshot(page, "workflows")
    rows.first.get_by_role("link", name=str(newest.id)).click()
    page.wait_for_url(f"{dashboard}/ui/workflows/{newest.id}")
    assert page.locator("svg.workflow-graph g.step").count() == 2

    phone = signed_in(browser, dashboard, keys["admin"], viewport={"width": 375, "height": 800})
    phone.goto(f"{dashboard}/ui/workflows")
    assert phone.get_by_role("link", name=str(newest.id), exact=True).is_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375, "the page itself does not scroll sideways"
    # Each workflow is a card whose figures all show, none hidden in a sideways-scrolling box.
    widest = phone.evaluate("Math.max(0, ...[...document.querySelectorAll('table.cards')].map(t => t.scrollWidth))")
    assert widest <= 375, f"a workflow's card is {widest} px wide on a 375 px phone"
    assert phone.get_by_text("Not ended").first.is_visible()
    screenshot(phone, "workflows-phone")


def test_every_page_reads_on_a_phone_without_scrolling_sideways(browser, dashboard, keys, conn, workers: Workers):
    failed = finished_run(conn, "record", {"key": "a-rather-long-argument-value-" * 4})
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, args, every_s, next_run_at)"
        " VALUES ('nightly-report-for-every-customer-region', 'record', '{\"key\": \"j\"}', 86400,"
        "         now() + interval '1 day')"
    )
    workers.start()
    wait_until(lambda: scalar(conn, "SELECT count(*) FROM pgsched.workers") > 0, 20, "a worker to register")
    phone = signed_in(browser, dashboard, keys["admin"], viewport={"width": 375, "height": 800})
    for path, name in (
        ("/ui/runs", "runs"),
        (f"/ui/runs/{failed}", "run-failed"),
        ("/ui/failures", "failures"),
        ("/ui/jobs", "jobs"),
        ("/ui/workers", "workers"),
    ):
        phone.goto(f"{dashboard}{path}")
        phone.get_by_role("heading").first.wait_for()
        width = phone.evaluate("document.documentElement.scrollWidth")
        # Nothing hides off-screen inside a sideways-scrolling box either (a card's values).
        widest = phone.evaluate("Math.max(0, ...[...document.querySelectorAll('table.cards')].map(t => t.scrollWidth))")
        screenshot(phone, f"{name}-phone")
        assert width <= 375, f"{path} scrolls sideways on a 375 px phone: {width} px wide"
        assert widest <= 375, f"{path}: a card is {widest} px wide on a 375 px phone"
    desktop = signed_in(browser, dashboard, keys["admin"], viewport={"width": 1280, "height": 600})
    desktop.goto(f"{dashboard}/ui/workers")
    screenshot(desktop, "workers")

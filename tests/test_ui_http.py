"""The dashboard over HTTP (Litestar's TestClient on the suite's PostgreSQL): where it is
served, sign-in and sessions, CSRF, scopes and tenants, bad input, bulk actions, the rollup."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from datetime import datetime, timedelta, timezone

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from pgsched.api.keys import revoke_key
from pgsched.maintenance import refresh_rollup
from pgsched.runs import ARGS_SCAN_WINDOW
from pgsched.sql import queries
from pgsched.ui.db import page_connection
from pgsched.ui.insights import anomalies, baseline, last_hour, oldest_due_flags
from pgsched.ui.sessions import create_sign_in_token
from tests.support.api import make_keys, ok, serving_api
from tests.support.cli import assert_one_error_line, run_cli
from tests.support.db import insert_restored, scalar
from tests.support.ui import alert_of, buttons_of, csrf_of, finished_run, ui_client


def failed_run(conn: psycopg.Connection, task: str = "send", tenant: str | None = None, **args: object) -> int:
    return finished_run(conn, task, args, tenant=tenant)


def queued_run(conn: psycopg.Connection, task: str = "send", tenant: str | None = None, **args: object) -> int:
    return scalar(
        conn,
        "INSERT INTO pgsched.runs (task, args, tenant) VALUES (%s, %s, %s) RETURNING id",
        (task, Jsonb(args), tenant),
    )


def queue_figures(page: str, queue: str) -> list[int]:
    """The whole-number figures of a queue's row on the queues page, left to right."""
    row = page.split(f'<th scope="row"><a href="/ui/runs?queue={queue}">{queue}</a></th>')[1].split("</tr>")[0]
    figures = re.findall(r'<td class="n"[^>]*>(?:<a [^>]*>)?([\d,]+)(?:</a>)?</td>', row)
    return [int(n.replace(",", "")) for n in figures]


def status_of(conn: psycopg.Connection, run_id: int) -> str:
    return scalar(conn, "SELECT status::text FROM pgsched.runs_all WHERE id = %s", (run_id,))


def test_root_redirects_to_the_dashboard_which_sends_strangers_to_the_login_form(dsn):
    with ui_client(dsn) as client:
        assert client.get("/", follow_redirects=False).headers["location"] == "/ui"
        response = client.get("/ui", follow_redirects=False)
        assert (response.status_code, response.headers["location"]) == (303, "/ui/login")
        login = client.get("/ui/login").text
        assert '<label for="key">API key</label>' in login and buttons_of(login) == ["Log in"]
        # An htmx poll whose session ended takes the whole page to the login form.
        polled = client.get("/ui/runs", headers={"HX-Request": "true"})
        assert polled.headers["HX-Redirect"] == "/ui/login"
        assert client.get("/ui/static/htmx.min.js").status_code == 200, "assets are served without a session"


def test_a_good_key_starts_an_httponly_strict_session_and_a_bad_one_shows_the_form_again(dsn, conn):
    keys = make_keys(conn)
    with ui_client(dsn) as client:
        refused = client.post("/ui/login", data={"key": "pgs_nonsense"})
        assert refused.status_code == 401 and alert_of(refused.text) == "Unknown or revoked API key."
        response = client.post("/ui/login", data={"key": keys["admin"]}, follow_redirects=False)
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert "Secure" not in cookie, "plain http: a Secure cookie would never come back"
        assert client.get("/ui").status_code == 200
    # Only a digest of the session token is stored.
    token = cookie.split(";")[0].split("=", 1)[1]
    assert (
        scalar(conn, "SELECT count(*) FROM pgsched.ui_sessions WHERE token_hash = sha256(%s::bytea)", (token.encode(),))
        == 1
    )


@pytest.mark.parametrize("path", ["/ui", "/ui/runs", "/ui/failures", "/ui/jobs", "/ui/workers", "/ui/runs/{id}"])
def test_every_page_renders_with_words_for_people(dsn, conn, path):
    run_id = failed_run(conn)
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        response = client.get(path.format(id=run_id))
    assert response.status_code == 200, response.text
    assert "<h1>" in response.text and "_last_" not in response.text.replace("last_seen", "")


def test_the_queues_page_shows_each_queues_figures_from_queue_stats(dsn, conn):
    for _ in range(3):
        queued_run(conn)
    failed_run(conn)
    with ui_client(dsn, make_keys(conn)["read"]) as client:
        page = client.get("/ui").text
    assert "Succeeded / min" in page and "Oldest due run waits" in page
    assert queue_figures(page, "default")[:4] == [3, 3, 0, 1], "queued, due, running, failed"


@pytest.mark.parametrize(
    ("path", "says"),
    [
        (
            "/ui/runs?status=lost",
            "status must be one of waiting, queued, running, succeeded, failed, cancelled, got 'lost'",
        ),
        ("/ui/runs?limit=1000000", "limit (the page size) must be one of 25, 50, 100, 200, got '1000000'"),
        ("/ui/runs?cursor=abc", "cursor must be a link's 'Older' position (a run id), got 'abc'"),
        ("/ui/runs?cursor=99999999999999999999", "cursor must be a link's 'Older' position"),
        ("/ui/runs/abc", "a run id is a positive integer, got 'abc'"),
        ("/ui/runs/0", "a run id is a positive integer, got 0"),
        ("/ui/runs/99999999999999999999", "a run id is a positive integer"),
        ("/ui/runs?args=%7Bnope", "args must be a JSON object such as"),
        ("/ui/runs?args=%5B1%5D", "args must be a JSON object such as {\"customer\": 42}, got '[1]'"),
        ("/ui/runs?created_after=yesterday", "created_after must be a date and time such as 2030-01-02T03:04 (UTC)"),
        ("/ui/runs?finished_before=0001-01-01T00:00", "finished_before must be between the years 2 and 9998"),
        ("/ui/runs?tenant=%20x%2F", "tenant 'x/' is not a valid name"),
        ("/ui/runs?staus=failed", "unknown filter 'staus'"),
        ("/ui/runs?task=a%00b", "task must be at most 200 characters without NUL"),
        ("/ui/runs/bulk?action=delete", "action must be one of retry, cancel, got 'delete'"),
    ],
)
def test_bad_input_gets_a_400_page_that_says_what_was_wrong(dsn, conn, path, says):
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        response = client.get(path)
    assert response.status_code == 400, response.text
    assert says in alert_of(response.text)


def test_the_runs_page_filters_by_status_task_error_type_id_and_args_containment(dsn, conn):
    wanted = failed_run(conn, task="send", customer=42, plan="pro")
    failed_run(conn, task="send", customer=7)
    queued_run(conn, task="send", customer=42)
    failed_run(conn, task="bill", customer=42)

    def listed(query: str) -> list[int]:
        page = client.get(f"/ui/runs?{query}")
        assert page.status_code == 200, page.text
        return [int(i) for i in re.findall(r'<a href="/ui/runs/(\d+)">', page.text)]

    with ui_client(dsn, make_keys(conn)["read"]) as client:
        assert listed("status=failed&task=send&args=%7B%22customer%22%3A+42%7D") == [wanted]
        assert wanted in listed("error_type=ValueError") and len(listed("error_type=ValueError")) == 3
        assert listed("error_type=KeyError") == []
        assert listed(f"id={wanted}") == [wanted]


def test_the_runs_list_pages_by_keyset_with_an_older_link(dsn, conn):
    ids = [queued_run(conn) for _ in range(30)]
    with ui_client(dsn, make_keys(conn)["read"]) as client:
        first = client.get("/ui/runs?limit=25").text
        assert f"cursor={ids[5]}" in first, "the Older link starts after the last id shown"
        second = client.get(f"/ui/runs?limit=25&cursor={ids[5]}").text
    assert f'href="/ui/runs/{ids[4]}"' in second and f'href="/ui/runs/{ids[5]}"' not in second
    assert "hx-trigger" not in second, "only the newest page updates live"


def test_an_args_search_reads_a_window_a_page_and_its_bulk_action_reaches_every_match(dsn, conn):
    """No index serves args containment: a page reads ARGS_SCAN_WINDOW ids and offers to search
    older; "all matching" walks every window, so it reaches runs far below the first."""

    def run_with_id(run_id: int, customer: int) -> int:
        sql = "INSERT INTO pgsched.runs (id, task, args) VALUES (%s, 'send', %s) RETURNING id"
        return scalar(conn, sql, (run_id, Jsonb({"customer": customer})))

    old, newest = run_with_id(10, 42), run_with_id(10 + 2 * ARGS_SCAN_WINDOW + 6, 42)
    other = run_with_id(10 + 2 * ARGS_SCAN_WINDOW + 5, 7)
    search = "args=%7B%22customer%22%3A+42%7D"
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        first = client.get(f"/ui/runs?{search}").text
        assert f'href="/ui/runs/{newest}"' in first and "Args searched down to run" in first
        shown, page = [], first
        while (link := re.search(r'href="(/ui/runs\?[^"]*cursor=\d+[^"]*)">Search older', page)) is not None:
            page = client.get(link[1].replace("&amp;", "&")).text
            shown += [int(i) for i in re.findall(r'<a href="/ui/runs/(\d+)">', page)]
        assert shown == [old], "the older pages end at the oldest match, and then offer no more"
        confirm = client.get(f"/ui/runs/bulk?action=cancel&{search}").text
        assert "2 runs match this filter" in confirm
        done = client.post(
            "/ui/runs/bulk",
            data={"csrf_token": csrf_of(confirm), "action": "cancel", "all": "1", "args": '{"customer": 42}'},
        )
        assert "Cancelled 2 runs." in done.text, done.text
    assert [status_of(conn, i) for i in (old, newest, other)] == ["cancelled", "cancelled", "queued"]


def test_a_post_without_the_csrf_token_or_from_another_site_is_refused(dsn, conn):
    run_id = failed_run(conn)
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        csrf = csrf_of(client.get(f"/ui/runs/{run_id}").text)
        missing = client.post(f"/ui/runs/{run_id}/retry")
        wrong = client.post(f"/ui/runs/{run_id}/retry", data={"csrf_token": "0" * 64})
        cross_site = client.post(
            f"/ui/runs/{run_id}/retry", data={"csrf_token": csrf}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert [missing.status_code, wrong.status_code, cross_site.status_code] == [403, 403, 403]
        assert "CSRF token is missing or wrong" in alert_of(missing.text)
        assert status_of(conn, run_id) == "failed", "a refused POST changes nothing"
        by_header = client.post(f"/ui/runs/{run_id}/retry", headers={"X-CSRF-Token": csrf}, follow_redirects=False)
        assert by_header.status_code == 303 and status_of(conn, run_id) == "queued"


def test_a_read_key_sees_no_action_buttons_and_its_forged_post_is_refused(dsn, conn):
    run_id = failed_run(conn)
    conn.execute("INSERT INTO pgsched.jobs (name, task, every_s) VALUES ('nightly', 'send', 60)")
    with ui_client(dsn, make_keys(conn)["read"]) as client:
        page = client.get(f"/ui/runs/{run_id}").text
        jobs = client.get("/ui/jobs").text
        runs = client.get("/ui/runs").text
        assert buttons_of(page) == buttons_of(jobs) == ["Log out"] and buttons_of(runs) == ["Log out", "Filter"]
        csrf = csrf_of(page)  # the Log out form's: a read key's session has one too
        forged = client.post(f"/ui/runs/{run_id}/retry", data={"csrf_token": csrf})
        trigger = client.post("/ui/jobs/nightly/trigger", data={"csrf_token": csrf})
    assert forged.status_code == trigger.status_code == 403
    assert "scope is 'read'" in alert_of(forged.text)
    assert status_of(conn, run_id) == "failed" and scalar(conn, "SELECT count(*) FROM pgsched.runs_all") == 1


def test_a_tenant_key_sees_only_its_tenant_and_another_tenants_run_is_a_404_page(dsn, conn):
    own = failed_run(conn, tenant="acme")
    other = failed_run(conn, tenant="beta", task="beta-only")
    queued_run(conn, tenant="beta", task="beta-only")
    with ui_client(dsn, make_keys(conn)["acme"]) as client:
        runs = client.get("/ui/runs").text
        queues = client.get("/ui").text
        failures = client.get("/ui/failures").text
        missing = client.get(f"/ui/runs/{other}")
        retry = client.post(f"/ui/runs/{other}/retry", headers={"X-CSRF-Token": csrf_of(runs)})
        workers = client.get("/ui/workers")
        tenant_filter = client.get("/ui/runs?tenant=beta").text
    assert f"/ui/runs/{own}" in runs and "beta-only" not in runs and "beta-only" not in failures
    assert "beta-only" not in tenant_filter, "a tenant key's own tenant wins over the filter"
    assert queue_figures(queues, "default")[:4] == [0, 0, 0, 1], "queued, due, running, failed: acme's only"
    assert "Tenant <input" not in runs
    assert missing.status_code == 404 and alert_of(missing.text) == f"no run with id {other}"
    assert retry.status_code == 404 and status_of(conn, other) == "failed"
    assert workers.status_code == 403 and "whole installation" in alert_of(workers.text)
    assert 'href="/ui/workers"' not in runs, "no link to a page the key cannot see"


def test_a_session_is_honoured_by_another_api_process_and_log_out_ends_it_everywhere(dsn, conn):
    keys = make_keys(conn)
    with ui_client(dsn, keys["admin"]) as first, ui_client(dsn) as second:
        second.cookies = first.cookies  # the same browser behind a load balancer
        assert second.get("/ui", follow_redirects=False).status_code == 200
        out = first.post("/ui/logout", data={"csrf_token": csrf_of(first.get("/ui").text)}, follow_redirects=False)
        assert out.headers["location"] == "/ui/login"
        assert second.get("/ui", follow_redirects=False).headers["location"] == "/ui/login"
    assert scalar(conn, "SELECT count(*) FROM pgsched.ui_sessions") == 0


def test_revoking_the_key_ends_its_sessions(dsn, conn):
    keys = make_keys(conn)
    key_id = scalar(conn, "SELECT id FROM pgsched.api_keys WHERE name = 'write'")
    with ui_client(dsn, keys["write"]) as client:
        assert client.get("/ui", follow_redirects=False).status_code == 200
        revoke_key(conn, key_id)
        assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/login"


def test_an_expired_session_is_sent_to_the_login_form(dsn, conn):
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        conn.execute("UPDATE pgsched.ui_sessions SET expires_at = now() - interval '1 second'")
        assert client.get("/ui/runs", follow_redirects=False).headers["location"] == "/ui/login"


def test_a_sign_in_link_starts_a_session_once(dsn, conn):
    make_keys(conn)
    key_id = scalar(conn, "SELECT id FROM pgsched.api_keys WHERE name = 'admin'")
    token = create_sign_in_token(conn, key_id)
    with ui_client(dsn) as client:
        used = client.get(f"/ui/sign-in/{token}", follow_redirects=False)
        assert used.status_code == 303 and "pgsched_session=" in used.headers["set-cookie"]
        assert client.get("/ui", follow_redirects=False).status_code == 200
    with ui_client(dsn) as stranger:
        again = stranger.get(f"/ui/sign-in/{token}")
        assert again.status_code == 401 and "used already or has expired" in alert_of(again.text)


def test_bulk_retry_of_every_failed_run_of_one_task_confirms_the_count_first(dsn, conn):
    failed = [failed_run(conn, task="send") for _ in range(3)]
    other = failed_run(conn, task="bill")
    with ui_client(dsn, make_keys(conn)["write"]) as client:
        confirm = client.get("/ui/runs/bulk?action=retry&status=failed&task=send").text
        assert "3 runs match this filter" in confirm and "Retry 3 runs" in buttons_of(confirm)
        done = client.post(
            "/ui/runs/bulk",
            data={"csrf_token": csrf_of(confirm), "action": "retry", "all": "1", "status": "failed", "task": "send"},
        )
        assert done.status_code == 200 and "Retried 3 runs." in done.text
    assert [status_of(conn, i) for i in failed] == ["queued"] * 3 and status_of(conn, other) == "failed"


def test_bulk_cancel_of_selected_runs_leaves_the_others(dsn, conn):
    picked, kept = queued_run(conn), queued_run(conn)
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        csrf = csrf_of(client.get("/ui/runs").text)
        done = client.post("/ui/runs/bulk", data={"csrf_token": csrf, "action": "cancel", "ids": [str(picked)]})
        none = client.post("/ui/runs/bulk", data={"csrf_token": csrf, "action": "cancel"})
    assert "Cancelled 1 runs." in done.text and none.status_code == 400
    assert (status_of(conn, picked), status_of(conn, kept)) == ("cancelled", "queued")


def test_a_capped_count_says_10000_plus(dsn, conn):
    conn.execute("INSERT INTO pgsched.runs (task) SELECT 'many' FROM generate_series(1, 10001)")
    with ui_client(dsn, make_keys(conn)["admin"]) as client:
        confirm = client.get("/ui/runs/bulk?action=cancel&task=many").text
    assert "10,000+ runs match this filter" in confirm


def test_every_page_query_runs_under_a_statement_timeout(dsn):
    with ConnectionPool(dsn, kwargs={"autocommit": True}, min_size=1) as pool:
        with page_connection(pool) as conn:
            assert scalar(conn, "SHOW statement_timeout") == "2s"
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(3)")
        with pool.connection() as conn:
            assert scalar(conn, "SHOW statement_timeout") == "0", "SET LOCAL: the pooled connection is left as it was"


def test_the_rollup_counts_finished_runs_per_minute_and_flags_what_is_far_above_its_usual(conn):
    now = datetime(2030, 1, 8, 12, 30, tzinfo=timezone.utc)
    rows = []  # (task, status, finished at, seconds waited before the start)
    for days in range(1, 8):  # the usual at this hour: 1 failure in 20 emails; reports wait 1 s
        past = now - timedelta(days=days, minutes=10)
        rows += [("emails", "failed" if i == 0 else "succeeded", past, 0) for i in range(20)]
        rows += [("reports", "succeeded", past, 1) for _ in range(5)]
    # This hour: half the emails fail, and reports wait 20 s.
    rows += [("emails", "failed" if i < 10 else "succeeded", now - timedelta(minutes=5), 0) for i in range(20)]
    rows += [("reports", "succeeded", now - timedelta(minutes=5), 20) for _ in range(5)]
    for task, status, at, wait in rows:  # as a restore writes them: 0009 lets SQL insert only queued runs
        insert_restored(
            conn,
            "INSERT INTO pgsched.runs (task, queue, status, attempt, run_at, created_at, started_at, finished_at)"
            " VALUES (%s, 'mail', %s, 1, %s, %s, %s, %s)",
            (task, status, at, at, at + timedelta(seconds=wait), at + timedelta(seconds=wait + 1)),
        )

    async def refresh() -> None:
        async with await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as aconn:
            for days in range(8):  # the leader's rounds over the last 8 days, replayed
                await refresh_rollup(aconn, minutes=30, now=now - timedelta(days=days))

    asyncio.run(refresh())
    chart = last_hour(conn, None, now=now)["mail"]
    assert sum(m.succeeded for m in chart) == 15 and sum(m.failed for m in chart) == 10
    assert chart[54].failed == 10, "the minute 5 minutes ago holds the runs (oldest minute first)"
    flags = {(a.task, a.what): a for a in anomalies(conn, None, now=now)}
    assert set(flags) == {("emails", "failures"), ("reports", "wait before start")}
    assert round(flags["emails", "failures"].factor) == 10
    assert (round(flags["reports", "wait before start"].factor), flags["reports", "wait before start"].now) == (
        20,
        "20.00s",
    )
    assert anomalies(conn, "acme", now=now) == [], "a tenant's rollup is its own"
    usual = baseline(conn, None, now=now).usual_wait_s
    assert usual == {"mail": pytest.approx(0.2)}, "5 s waited over 25 runs a day, at this hour"
    ages = [{"queue": "mail", "oldest_queued_age_s": age} for age in (20.0, 40.0)]
    assert oldest_due_flags(ages[:1], usual) == [], "younger than 30 s: a burst, not news"
    [stuck] = oldest_due_flags([*ages[1:], {"queue": "other", "oldest_queued_age_s": 900.0}], usual)
    assert (stuck.queue, stuck.what, round(stuck.factor), stuck.span) == ("mail", "oldest due run waits", 200, "now")


def test_the_queues_page_flags_a_queue_whose_oldest_due_run_waits_far_longer_than_usual(dsn, conn):
    """A stuck queue finishes nothing, so no rollup of this hour shows it: its oldest due run's
    age, live, is held against how long its runs usually wait at this hour."""
    conn.execute(
        "INSERT INTO pgsched.run_rollup (minute, queue, task, succeeded, wait_s_sum)"
        " SELECT date_trunc('minute', now()) - make_interval(days => d, mins => 10), 'emails', 'send', 10, 5"
        " FROM generate_series(1, 7) AS d"
    )
    conn.execute(
        "INSERT INTO pgsched.runs (task, queue, run_at) VALUES ('send', 'emails', now() - interval '10 minutes')"
    )
    with ui_client(dsn, make_keys(conn)["read"]) as client:
        page = client.get("/ui").text
    assert re.search(
        r"<strong>emails</strong>: oldest due run waits \d+\u00d7 their usual\s+\(60\d+s now, usually 0.50s", page
    )


def test_pgsched_api_serves_https_itself_and_the_session_cookie_is_secure_there(dsn, conn, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    keys = make_keys(conn)
    with serving_api("--dsn", dsn, "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)) as (url, _):
        assert url.startswith("https://")
        with httpx.Client(base_url=url, verify=ssl.create_default_context(cafile=str(cert))) as client:
            response = client.post("/ui/login", data={"key": keys["admin"]}, follow_redirects=False)
            assert response.status_code == 303 and "Secure" in response.headers["set-cookie"]
            assert client.get("/ui").status_code == 200, "the Secure cookie comes back over https"


def test_pgsched_api_wants_both_tls_files_or_neither(dsn, tmp_path):
    result = run_cli(dsn, "api", "--ssl-certfile", str(tmp_path / "cert.pem"))
    assert_one_error_line(result, "--ssl-certfile and --ssl-keyfile go together")
    result = run_cli(dsn, "api", "--ssl-certfile", str(tmp_path / "no.pem"), "--ssl-keyfile", str(tmp_path / "no.key"))
    assert_one_error_line(result, "--ssl-certfile: no such file")


# ---- what the REST API gained with the dashboard: failure groups, the rollup, bulk actions


def test_the_rest_api_lists_failure_groups_and_the_last_hour_per_minute(api, conn):
    failed_run(conn, task="send")
    failed_run(conn, task="send")
    failed_run(conn, task="bill", tenant="acme")
    conn.execute(queries["rollup_refresh"], {"minutes": 5, "now": None})
    groups = ok(api.get("/runs/failures"))["items"]
    assert sorted((g["task"], g["error_type"], g["last_hour"], g["last_day"], g["last_week"]) for g in groups) == [
        ("bill", "ValueError", 1, 1, 1),
        ("send", "ValueError", 2, 2, 2),
    ]
    assert [g["task"] for g in ok(api.get("/runs/failures", as_="acme"))["items"]] == ["bill"]
    minutes = ok(api.get("/queues/-/throughput"))["items"]
    assert sum(m["failed"] for m in minutes) == 3 and {m["queue"] for m in minutes} == {"default"}
    assert sum(m["failed"] for m in ok(api.get("/queues/-/throughput", as_="acme"))["items"]) == 1
    # The path hides no queue: one named "throughput" has its own settings.
    assert ok(api.get("/queues/throughput"))["name"] == "throughput"


def test_the_rest_api_retries_and_cancels_runs_in_bulk_within_the_keys_tenant(api, conn):
    failed = [failed_run(conn) for _ in range(2)]
    queued = queued_run(conn)
    other_tenant = failed_run(conn, tenant="beta")
    assert ok(api.post("/runs/bulk-retry", json={"ids": [*failed, queued, other_tenant]}, as_="acme")) == {"ids": []}
    assert sorted(ok(api.post("/runs/bulk-retry", json={"ids": [*failed, queued]}, as_="write"))["ids"]) == failed
    cancelled = ok(api.post("/runs/bulk-cancel", json={"ids": [queued, *failed, other_tenant]}, as_="write"))["ids"]
    assert sorted(cancelled) == sorted([queued, *failed]), "the beta run is failed: nothing to cancel"
    assert {status_of(conn, i) for i in [*failed, queued]} == {"cancelled"}
    assert api.post("/runs/bulk-retry", json={"ids": []}).status_code == 400
    assert api.post("/runs/bulk-retry", json={"ids": [1]}, as_="read").status_code == 403


def test_a_key_without_a_tenant_acts_on_the_tenants_job_its_button_names(dsn, conn):
    conn.execute(
        "INSERT INTO pgsched.jobs (name, task, every_s, tenant) VALUES ('nightly', 'send', 60, 'acme'),"
        " ('nightly', 'send', 60, 'beta')"
    )
    keys = make_keys(conn)
    with ui_client(dsn, keys["admin"]) as client:
        jobs = client.get("/ui/jobs").text
        assert 'action="/ui/jobs/nightly/pause?tenant=beta"' in jobs
        paused = client.post("/ui/jobs/nightly/pause?tenant=beta", headers={"X-CSRF-Token": csrf_of(jobs)})
        assert paused.status_code == 200, paused.text  # the redirect to the jobs page, followed
        trigger = client.post("/ui/jobs/nightly/trigger?tenant=acme", headers={"X-CSRF-Token": csrf_of(jobs)})
        assert trigger.status_code == 200 and "nightly" in trigger.text
        bad = client.post("/ui/jobs/nightly/pause?tenant=a%2Fb", headers={"X-CSRF-Token": csrf_of(jobs)})
        assert bad.status_code == 400 and "is not a valid name" in alert_of(bad.text)
        runs = client.get("/ui/runs?job=nightly")
        assert runs.status_code == 200, "two tenants' jobs of one name: the runs of each"
    states = conn.execute("SELECT tenant, enabled FROM pgsched.jobs ORDER BY tenant").fetchall()
    assert states == [("acme", True), ("beta", False)]
    assert scalar(conn, "SELECT tenant FROM pgsched.runs_all") == "acme"
    with ui_client(dsn, keys["acme"]) as client:  # a tenant key's own tenant wins over the URL's
        csrf = csrf_of(client.get("/ui/jobs").text)
        assert client.post("/ui/jobs/nightly/resume?tenant=beta", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert conn.execute("SELECT tenant, enabled FROM pgsched.jobs ORDER BY tenant").fetchall() == states

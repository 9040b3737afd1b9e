"""The dashboard's pages (GET): queues, runs, one run, failures, jobs, workers, and the
confirmation of a bulk action. Thin: each reads through pgsched's own functions inside
``page_connection`` (a statement_timeout) and renders a template. The lists (queues, runs,
failures, jobs) read through ``read_page``: from the read replica when there is one; one run,
a bulk action's count and the workers with the beat's leader (a lock only the primary holds)
from the primary."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import Template

from pgsched import jobs as job_store
from pgsched.api import store
from pgsched.api.deps import Pool, Reads, Tenant
from pgsched.beat import leader_status
from pgsched.errors import InvalidInput
from pgsched.queues import list_queues
from pgsched.runs import COUNT_CAP, count_runs, get_run, page_runs
from pgsched.ui import insights
from pgsched.ui import reads as ui_reads
from pgsched.ui.access import require_session
from pgsched.ui.db import page_connection, read_page
from pgsched.ui.filters import parse_cursor, parse_run_filter, parse_run_id
from pgsched.ui.render import page
from pgsched.workflows import WORKFLOW_STATUSES, get_workflow, list_workflows, step_graph, step_tree, workflow_of_run

BULK_ACTIONS = ("retry", "cancel")
JOBS_SHOWN = 500
WORKFLOWS_PER_PAGE = 50


class PageController(Controller):
    path = "/ui"
    guards = [require_session]
    include_in_schema = False

    @get("/", sync_to_thread=True)
    def queues(self, request: Request[Any, Any, Any], reads: Reads, tenant: Tenant) -> Template:
        """The landing page: per queue its figures, its last hour as a chart, and anomalies."""
        kept: insights.Insights = request.app.state.insights

        def figures(conn: Any) -> tuple[Any, Any, Any]:
            # Without the last hour's finished runs (7 ms of a 2 s poll on 10^6 runs): the chart
            # has the hour, from the rollup, and lists the queues only it knows of.
            live = list_queues(conn, tenant=tenant, last_hour=False)
            return live, kept.charts(conn, tenant), kept.anomalies(conn, tenant, live)

        live, charts, anomalies = read_page(reads, figures)
        queues = insights.with_charted_queues(live, charts)
        peak = max((m.succeeded + m.failed for minutes in charts.values() for m in minutes), default=0)
        return page(
            request, "queues.html", live="_queues.html", queues=queues, charts=charts, peak=peak, anomalies=anomalies
        )

    @get("/runs", sync_to_thread=True)
    def runs(self, request: Request[Any, Any, Any], reads: Reads, tenant: Tenant) -> Template:
        """Runs newest first, filtered, a keyset page at a time."""
        params = dict(request.query_params)
        chosen = parse_run_filter(params)
        cursor = parse_cursor(params.get("cursor"))
        found = read_page(
            reads, lambda conn: page_runs(conn, **chosen.list_runs_kwargs(tenant), limit=chosen.limit, before_id=cursor)
        )
        older = None if found.older is None else str(found.older)
        return page(
            request,
            "runs.html",
            live="_runs.html",
            runs=found.runs,
            filter=chosen,
            cursor=cursor,
            older=older,
            searched_from=found.searched_from if len(found.runs) < chosen.limit else None,
        )

    @get("/runs/bulk", sync_to_thread=True)
    def confirm_bulk(self, request: Request[Any, Any, Any], pool: Pool, tenant: Tenant) -> Template:
        """How many runs a bulk action on every run matching the filter would touch, and a button."""
        params = dict(request.query_params)
        action = bulk_action(params.get("action"))
        chosen = parse_run_filter(params, extra=frozenset({"action"}))
        with page_connection(pool) as conn:
            matching = count_runs(conn, **chosen.list_runs_kwargs(tenant), cap=COUNT_CAP)
        return page(request, "bulk_confirm.html", action=action, filter=chosen, matching=matching, cap=COUNT_CAP)

    @get("/runs/{run_id:str}", sync_to_thread=True)
    def run(self, request: Request[Any, Any, Any], run_id: FromPath[str], pool: Pool, tenant: Tenant) -> Template:
        """One run: args, result, every attempt's error, its timeline, worker and job."""
        with page_connection(pool) as conn:
            run = get_run(conn, parse_run_id(run_id), tenant=tenant)
            worker = ui_reads.worker(conn, run["worker_id"])
            job = ui_reads.job_name(conn, run["job_id"])
            workflow_id = workflow_of_run(conn, run["id"], tenant=tenant)
        return page(
            request,
            "run.html",
            live="_run.html",
            run=run,
            worker=worker,
            job=job,
            workflow_id=workflow_id,
            timeline=timeline(run),
        )

    @get("/workflows", sync_to_thread=True)
    def workflows(self, request: Request[Any, Any, Any], reads: Reads, tenant: Tenant) -> Template:
        """Workflows newest first (optionally of one status), a keyset page at a time, each with
        its step counts and linked to its page."""
        params = dict(request.query_params)
        unknown = sorted(set(params) - {"status", "cursor"})
        if unknown:
            raise InvalidInput(f"unknown parameter(s) {', '.join(unknown)}; known: cursor, status")
        status = params.get("status") or None
        cursor = parse_cursor(params.get("cursor"))
        rows = read_page(
            reads,
            lambda conn: list_workflows(conn, status=status, limit=WORKFLOWS_PER_PAGE, before_id=cursor, tenant=tenant),
        )
        older = str(rows[-1]["id"]) if len(rows) == WORKFLOWS_PER_PAGE else None
        return page(
            request,
            "workflows.html",
            live="_workflows.html",
            workflows=rows,
            status=status,
            statuses=WORKFLOW_STATUSES,
            cursor=cursor,
            older=older,
        )

    @get("/workflows/{workflow_id:str}", sync_to_thread=True)
    def workflow(
        self, request: Request[Any, Any, Any], workflow_id: FromPath[str], pool: Pool, tenant: Tenant
    ) -> Template:
        """A workflow: its status, its steps as a graph (up to 400) and as a tree, each linked to its run."""
        with page_connection(pool) as conn:
            workflow = get_workflow(conn, parse_run_id(workflow_id, "workflow id"), tenant=tenant)
        steps = workflow["steps_shown"]
        return page(
            request,
            "workflow.html",
            live="_workflow.html",
            workflow=workflow,
            graph=step_graph(steps),
            tree=step_tree(steps),
        )

    @get("/failures", sync_to_thread=True)
    def failures(self, request: Request[Any, Any, Any], reads: Reads, tenant: Tenant) -> Template:
        """Failed runs of the last week by task and error type."""
        kept: insights.Insights = request.app.state.insights
        groups = read_page(reads, lambda conn: kept.failure_groups(conn, tenant))
        return page(request, "failures.html", live="_failures.html", groups=groups)

    @get("/jobs", sync_to_thread=True)
    def jobs(self, request: Request[Any, Any, Any], reads: Reads, tenant: Tenant) -> Template:
        """Every scheduled job (the first 500 by name) with its next fire times and last run."""

        def jobs_and_last_runs(conn: Any) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
            rows = job_store.list_jobs(conn, tenant=tenant, limit=JOBS_SHOWN)
            return rows, ui_reads.last_runs(conn, [row["id"] for row in rows])

        rows, last = read_page(reads, jobs_and_last_runs)
        for row in rows:
            row["upcoming"] = job_store.upcoming(row)
            row["last_run"] = last.get(row["id"])
        return page(request, "jobs.html", live="_jobs.html", jobs=rows, more=len(rows) == JOBS_SHOWN)

    @get("/workers", sync_to_thread=True, opt={"cluster_wide": True})
    def workers(self, request: Request[Any, Any, Any], pool: Pool) -> Template:
        """Live workers and the beat's leader (the whole installation: keys without a tenant)."""
        with page_connection(pool) as conn:
            rows = store.list_workers(conn)
            leader = leader_status(conn)
        return page(request, "workers.html", live="_workers.html", workers=rows, leader=leader)


def timeline(run: dict[str, Any]) -> list[tuple[datetime, str]]:
    """A run's life in order: created, each failed attempt's start and end (from its error;
    errors written before this release record only the end), the last attempt's start and
    how it ended."""
    events = [(run["created_at"], "created")]
    for error in run["errors"]:
        attempt = error.get("attempt", "?")
        started, at = _instant_of(error.get("started_at")), _instant_of(error.get("at"))
        if started is not None and attempt != run["attempt"]:
            events.append((started, f"attempt {attempt} started"))
        if at is not None:
            events.append((at, f"attempt {attempt} failed: {error.get('type', 'error')}"))
    if run["started_at"] is not None:
        events.append((run["started_at"], f"attempt {run['attempt']} started"))
    if run["finished_at"] is not None:
        events.append((run["finished_at"], run["status"]))
    return sorted(events, key=lambda event: event[0])


def _instant_of(text: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return at if at is None or at.utcoffset() is not None else at.replace(tzinfo=timezone.utc)


def bulk_action(text: str | None) -> str:
    if text not in BULK_ACTIONS:
        raise InvalidInput(f"action must be one of {', '.join(BULK_ACTIONS)}, got {text!r}")
    return text

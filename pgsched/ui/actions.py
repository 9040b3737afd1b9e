"""The dashboard's actions (POST): retry and cancel a run, bulk retry/cancel (selected runs or
every run matching a filter, carried out in batches), pause, resume and trigger a job. Each
is guarded like a page and needs a write key and the session's CSRF token (see access.py),
and calls the same library functions as the REST API."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import anyio.to_thread
from litestar import Controller, Request, post
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from pgsched import jobs as job_store
from pgsched.api.deps import Pool, Tenant
from pgsched.errors import InvalidInput
from pgsched.runs import cancel_run, cancel_runs, page_runs, retry_run, retry_runs
from pgsched.tenants import check_tenant
from pgsched.ui.access import CSRF_FIELD, require_session
from pgsched.ui.db import page_connection
from pgsched.ui.filters import RunFilter, parse_run_filter, parse_run_id
from pgsched.ui.pages import bulk_action
from pgsched.ui.render import page

# ?tenant= on a job's action: which tenant's job of that name a key without a tenant means.
JobTenant = Annotated[Optional[str], QueryParameter(name="tenant", required=False)]
BULK_BATCH = 500  # runs per statement (and per transaction) of a bulk action
MAX_SELECTED = 1000
_BULK_FIELDS = frozenset({"action", "all", "ids", CSRF_FIELD})


class ActionController(Controller):
    path = "/ui"
    guards = [require_session]
    include_in_schema = False

    @post("/runs/{run_id:str}/retry", sync_to_thread=True)
    def retry(self, run_id: FromPath[str], pool: Pool, tenant: Tenant) -> Redirect:
        with page_connection(pool) as conn:
            retry_run(conn, parse_run_id(run_id), tenant=tenant)
        return Redirect(f"/ui/runs/{run_id}", status_code=303)

    @post("/runs/{run_id:str}/cancel", sync_to_thread=True)
    def cancel(self, run_id: FromPath[str], pool: Pool, tenant: Tenant) -> Redirect:
        with page_connection(pool) as conn:
            cancel_run(conn, parse_run_id(run_id), tenant=tenant)
        return Redirect(f"/ui/runs/{run_id}", status_code=303)

    @post("/runs/bulk")
    async def bulk(self, request: Request[Any, Any, Any], pool: Pool, tenant: Tenant) -> Template:
        """Retry or cancel the selected runs (``ids``), or every run matching the filter (``all``)."""
        form = await request.form()
        action = bulk_action(form.get("action"))
        fields = {name: value for name, value in form.items() if isinstance(value, str)}
        if form.get("all") == "1":
            chosen = parse_run_filter(fields, extra=_BULK_FIELDS)
            done = await _in_thread(_apply_to_matching, pool, action, chosen, tenant)
        else:
            ids = [parse_run_id(value) for value in form.getall("ids", []) if isinstance(value, str)]
            if not ids or len(ids) > MAX_SELECTED:
                raise InvalidInput(f"select between 1 and {MAX_SELECTED} runs, got {len(ids)}")
            done = await _in_thread(_apply, pool, action, ids, tenant)
        return page(request, "bulk_done.html", action=action, done=done)

    @post("/jobs/{name:str}/pause", sync_to_thread=True)
    def pause(self, name: FromPath[str], pool: Pool, tenant: Tenant, of: JobTenant = None) -> Redirect:
        with page_connection(pool) as conn:
            job_store.set_enabled(conn, name, False, tenant=_job_tenant(tenant, of))
        return Redirect("/ui/jobs", status_code=303)

    @post("/jobs/{name:str}/resume", sync_to_thread=True)
    def resume(self, name: FromPath[str], pool: Pool, tenant: Tenant, of: JobTenant = None) -> Redirect:
        with page_connection(pool) as conn:
            job_store.set_enabled(conn, name, True, tenant=_job_tenant(tenant, of))
        return Redirect("/ui/jobs", status_code=303)

    @post("/jobs/{name:str}/trigger", sync_to_thread=True)
    def trigger(self, name: FromPath[str], pool: Pool, tenant: Tenant, of: JobTenant = None) -> Redirect:
        with page_connection(pool) as conn:
            run_id = job_store.trigger_job(conn, name, tenant=_job_tenant(tenant, of))
        return Redirect(f"/ui/runs/{run_id}", status_code=303)


def _job_tenant(key_tenant: str | None, chosen: str | None) -> str | None:
    """Whose job a name means: a tenant key's own, whatever the form says; for a key without a
    tenant, the tenant its button names (job names are unique per tenant)."""
    return key_tenant if key_tenant is not None else check_tenant(chosen or None)


async def _in_thread(fn: Any, *args: Any) -> int:
    return int(await anyio.to_thread.run_sync(fn, *args))


def _apply(pool: Pool, action: str, ids: list[int], tenant: str | None) -> int:
    with page_connection(pool) as conn:
        changed = retry_runs(conn, ids, tenant=tenant) if action == "retry" else cancel_runs(conn, ids, tenant=tenant)
    return len(changed)


def _apply_to_matching(pool: Pool, action: str, chosen: RunFilter, tenant: str | None) -> int:
    """Every matching run, newest first, a batch per transaction (each under the page's
    statement_timeout), walking the keyset so a batch never reads what an earlier one did."""
    done, before_id = 0, None
    while True:
        with page_connection(pool) as conn:
            found = page_runs(conn, **chosen.list_runs_kwargs(tenant), limit=BULK_BATCH, before_id=before_id)
        if found.runs:
            done += _apply(pool, action, [row["id"] for row in found.runs], tenant)
        if found.older is None:
            return done
        before_id = found.older

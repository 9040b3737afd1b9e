"""``/jobs``: scheduled job definitions: create or replace, list, show, change, delete,
pause, resume, and trigger one run now."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any, Optional

from litestar import Controller, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter
from msgspec import UNSET, structs

from pgsched import jobs as job_store
from pgsched.api.cache import Cache
from pgsched.api.deps import Pool, Reads, Tenant
from pgsched.api.schemas import (
    NO_NUL,
    JobCreate,
    JobOut,
    JobPage,
    JobPatch,
    JobSummary,
    RunOut,
    error_responses,
    from_row,
)
from pgsched.errors import InvalidInput
from pgsched.jobs import JobNotFound, JobSpec
from pgsched.runs import MAX_LIST_LIMIT, get_run
from pgsched.schedule import Schedule
from pgsched.tenants import TENANT_PATTERN

JobName = Annotated[str, PathParameter(pattern=NO_NUL)]
# Whose job a name means: the key's tenant; for a key without one, ?tenant= (else the job
# without a tenant, or the only tenant's job of that name: pgsched.jobs.find_job).
Owner = NamedDependency[Optional[str]]


def provide_owner(
    tenant: Tenant,
    of_tenant: Annotated[
        Optional[str],
        QueryParameter(
            name="tenant",
            pattern=TENANT_PATTERN,
            description="For a key without a tenant: the tenant whose job this is (job names are unique per tenant)",
        ),
    ] = None,
) -> Optional[str]:
    if tenant is not None and of_tenant is not None and of_tenant != tenant:
        raise JobNotFound("no job of that name in this key's tenant")
    return tenant if tenant is not None else of_tenant


def _spec(name: str, fields: dict[str, Any]) -> JobSpec:
    """A JobSpec from wire fields (``every`` is the library's ``every_s``); the library validates."""
    schedule = Schedule(
        cron=fields.get("cron"), every_s=fields.get("every"), at=fields.get("at"), tz=fields.get("tz", Schedule.tz)
    )
    known = {f.name for f in dataclasses.fields(JobSpec)} - {"name", "schedule"}
    return JobSpec(name=name, schedule=schedule, **{key: value for key, value in fields.items() if key in known})


def _patched(current: dict[str, Any], patch: JobPatch) -> JobSpec:
    """The current definition with the patch's fields applied. Giving any of cron, every or at
    replaces the schedule; tz alone re-reads the current one in the new timezone."""
    changes = {key: value for key, value in structs.asdict(patch).items() if value is not UNSET}
    fields = {
        key: current[key]
        for key in (
            "task",
            "args",
            "queue",
            "priority",
            "max_attempts",
            "misfire",
            "max_catchup",
            "enabled",
            "cron",
            "at",
            "tz",
        )
    }
    fields["every"] = current["every_s"]
    if changes.keys() & {"cron", "every", "at"}:
        fields.update(cron=None, every=None, at=None)
    fields.update(changes)
    return _spec(current["name"], fields)


class JobController(Controller):
    path = "/jobs"
    tags = ["jobs"]
    dependencies = {"owner": Provide(provide_owner, sync_to_thread=False)}

    @post(
        "/",
        operation_id="createJob",
        sync_to_thread=True,
        status_code=201,
        responses=error_responses(
            400, 409, 413, 422, _200=ResponseSpec(JobOut, description="A job with this name existed: it was replaced")
        ),
    )
    def create(self, data: JSONBody[JobCreate], pool: Pool, tenant: Tenant, cache: Cache) -> Response[JobOut]:
        """Create a job (201), or replace the definition of the job with this name (200); with its next 5 fire times."""
        spec = _spec(data.name, structs.asdict(data))
        with pool.connection() as conn, conn.transaction():
            created = job_store.upsert_job(conn, spec, tenant=tenant)
            job = job_store.get_job(conn, data.name, tenant=tenant)
        if not created:
            cache.forget_job(tenant, data.name)  # it replaced a definition that may be cached
        return Response(from_row(JobOut, job), status_code=201 if created else 200)

    @get("/", operation_id="listJobs", sync_to_thread=True, responses=error_responses(400, 422))
    def list_jobs(
        self,
        reads: Reads,
        tenant: Tenant,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(pattern=NO_NUL, description="The `next` of the previous page")
        ] = None,
    ) -> JobPage:
        """Jobs by name (then tenant), a page at a time: follow ``next`` until it is null."""
        after = _after(cursor)
        rows = reads(lambda conn: job_store.list_jobs(conn, tenant=tenant, limit=limit, after=after))
        return JobPage(
            items=[from_row(JobSummary, row) for row in rows],
            next=_cursor(rows[-1]) if len(rows) == limit else None,
        )

    @get("/{name:str}", operation_id="getJob", sync_to_thread=True, responses=error_responses(400, 404))
    def show(self, name: JobName, pool: Pool, owner: Owner, cache: Cache) -> JobOut:
        """One job and its next 5 fire times."""
        cached = cache.job(name, owner)
        if cached is not None:
            return cached
        with pool.connection() as conn:
            job = from_row(JobOut, job_store.get_job(conn, name, tenant=owner))
        cache.keep_job(job)
        return job

    @patch(
        "/{name:str}", operation_id="updateJob", sync_to_thread=True, responses=error_responses(400, 404, 409, 413, 422)
    )
    def update(self, name: JobName, data: JSONBody[JobPatch], pool: Pool, owner: Owner, cache: Cache) -> JobOut:
        """Change some fields of a job; the others keep their values."""
        with pool.connection() as conn, conn.transaction():
            current = job_store.get_job(conn, name, tenant=owner)
            job_store.upsert_job(conn, _patched(current, data), tenant=current["tenant"])
            job = from_row(JobOut, job_store.get_job(conn, name, tenant=current["tenant"]))
        cache.forget_job(job.tenant, name)  # after the commit: a read in between cannot re-cache the old row
        return job

    @delete("/{name:str}", operation_id="deleteJob", sync_to_thread=True, responses=error_responses(400, 404))
    def remove(self, name: JobName, pool: Pool, owner: Owner, cache: Cache) -> None:
        """Delete a job; its past runs stay."""
        with pool.connection() as conn:
            cache.forget_job(job_store.delete_job(conn, name, tenant=owner), name)

    @post(
        "/{name:str}/pause",
        operation_id="pauseJob",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 404),
    )
    def pause(self, name: JobName, pool: Pool, owner: Owner, cache: Cache) -> JobOut:
        """Stop firing a job; on resume, its misfire policy decides what happens to the fire times it missed."""
        return self._set_enabled(pool, cache, name, False, owner)

    @post(
        "/{name:str}/resume",
        operation_id="resumeJob",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 404),
    )
    def resume(self, name: JobName, pool: Pool, owner: Owner, cache: Cache) -> JobOut:
        """Fire a paused job again."""
        return self._set_enabled(pool, cache, name, True, owner)

    @post(
        "/{name:str}/trigger",
        operation_id="triggerJob",
        sync_to_thread=True,
        status_code=201,
        responses=error_responses(400, 404),
    )
    def trigger(self, name: JobName, pool: Pool, owner: Owner, tenant: Tenant) -> RunOut:
        """Queue one run of the job now, outside its schedule; returns the run."""
        with pool.connection() as conn, conn.transaction():
            run_id = job_store.trigger_job(conn, name, tenant=owner)
            return from_row(RunOut, get_run(conn, run_id, tenant=tenant))

    @staticmethod
    def _set_enabled(pool: Pool, cache: Cache, name: str, enabled: bool, owner: str | None) -> JobOut:
        with pool.connection() as conn, conn.transaction():
            job_tenant = job_store.set_enabled(conn, name, enabled, tenant=owner)
            cache.forget_job(job_tenant, name)
            return from_row(JobOut, job_store.get_job(conn, name, tenant=job_tenant))


def _cursor(last: dict[str, Any]) -> str:
    """The ``next`` of a page: its last job's name and tenant (JSON, so any name round-trips)."""
    return json.dumps([last["name"], last["tenant"]])


def _after(cursor: str | None) -> tuple[str, str | None] | None:
    """The job a page starts after. A bare name is a cursor of the previous release's API
    (names were unique then): it pages on from that name."""
    if cursor is None:
        return None
    try:
        name, tenant = json.loads(cursor)
    except (ValueError, TypeError):
        return cursor, None
    if not isinstance(name, str) or not (tenant is None or isinstance(tenant, str)):
        raise InvalidInput("cursor is not a `next` this API returned")
    return name, tenant

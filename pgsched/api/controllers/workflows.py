"""``/workflows``: list, show (with every step and its edges) and cancel workflows, tenant-scoped
like ``/runs``: a key of one tenant sees only its tenant's workflows, another's is not found."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from pgsched.api.auth import require_scope
from pgsched.api.deps import Pool, Tenant, provide_tenant
from pgsched.api.schemas import (
    WorkflowCancelOut,
    WorkflowCreate,
    WorkflowCreatedOut,
    WorkflowOut,
    WorkflowPage,
    WorkflowStatus,
    WorkflowSummary,
    error_responses,
    from_row,
)
from pgsched.errors import InvalidInput
from pgsched.workflows import (
    MAX_LIST_LIMIT,
    StepDescription,
    cancel_workflow,
    get_workflow,
    insert_workflow,
    list_workflows,
    workflow_from_description,
)


def _cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isascii() or not cursor.isdigit() or not 0 < int(cursor) < 2**63:
        raise InvalidInput(f"cursor must be a `next` value this API returned, got {cursor!r}")
    return int(cursor)


class WorkflowController(Controller):
    path = "/workflows"
    tags = ["workflows"]
    guards = [require_scope]

    @post(
        "/",
        operation_id="createWorkflow",
        sync_to_thread=True,
        status_code=201,
        responses=error_responses(400, 413, 422),
    )
    def create(
        self, data: JSONBody[WorkflowCreate], state: State, request: Request[Any, Any, Any]
    ) -> WorkflowCreatedOut:
        """Enqueue a workflow described as data: steps with their task, args, options, ``after``
        (keys of other steps) and ``when``. Checked whole first (a cycle, an unknown key, a bad
        option or args: 422 naming the step); then written in one transaction, or not at all."""
        steps = [
            StepDescription(
                key=s.key,
                task=s.task,
                args=s.args,
                after=s.after,
                when=s.when,
                queue=s.queue,
                priority=s.priority,
                max_attempts=s.max_attempts,
                delay=s.delay,
            )
            for s in data.steps
        ]
        workflow, keys = workflow_from_description(state.pgsched, data.name, steps, tenant=provide_tenant(request))
        with state.pool.connection() as conn:
            handle = insert_workflow(conn, workflow)
        return WorkflowCreatedOut(id=handle.id, run_ids=dict(zip(keys, handle.run_ids)))

    @get("/", operation_id="listWorkflows", sync_to_thread=True, responses=error_responses(400, 422))
    def list_workflows(
        self,
        pool: Pool,
        tenant: Tenant,
        status: FromQuery[WorkflowStatus | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
        cursor: Annotated[str | None, QueryParameter(description="The `next` of the previous page")] = None,
    ) -> WorkflowPage:
        """Workflows, newest first, a page at a time: follow ``next`` until it is null."""
        before_id = _cursor(cursor)
        with pool.connection() as conn:
            rows = list_workflows(conn, status=status, limit=limit, before_id=before_id, tenant=tenant)
        return WorkflowPage(
            items=[from_row(WorkflowSummary, row) for row in rows],
            next=str(rows[-1]["id"]) if len(rows) == limit else None,
        )

    @get(
        "/{workflow_id:int}", operation_id="getWorkflow", sync_to_thread=True, responses=error_responses(400, 404, 422)
    )
    def show(self, workflow_id: FromPath[int], pool: Pool, tenant: Tenant) -> WorkflowOut:
        """One workflow with its steps: each step's state, parents and conditions, and why it
        was cancelled (a failed or cancelled upstream run, a condition not met)."""
        with pool.connection() as conn:
            return from_row(WorkflowOut, get_workflow(conn, workflow_id, tenant=tenant))

    @post(
        "/{workflow_id:int}/cancel",
        operation_id="cancelWorkflow",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 404, 422),
    )
    def cancel(self, workflow_id: FromPath[int], pool: Pool, tenant: Tenant) -> WorkflowCancelOut:
        """Cancel every step not yet ended: waiting and queued ones at once, running ones by
        asking their workers to stop them. The workflow ends 'cancelled' once they all have."""
        with pool.connection() as conn, conn.transaction():
            count = cancel_workflow(conn, workflow_id, tenant=tenant)
        return WorkflowCancelOut(id=workflow_id, cancelled=count)

"""``/runs``: enqueue (one, or a batch with COPY), list, show, cancel and retry runs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Callable, TypeVar

import anyio.to_thread
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from psycopg_pool import ConnectionPool

from pgsched.api import store
from pgsched.api.cache import Cache
from pgsched.api.deps import Pool, Reads, Tenant, provide_tenant
from pgsched.api.schemas import (
    NO_NUL,
    FailureGroup,
    FailureGroupList,
    RunBatchCreate,
    RunBatchOut,
    RunCreate,
    RunIds,
    RunIdsOut,
    RunOut,
    RunPage,
    RunStatus,
    RunSummary,
    error_responses,
    from_row,
)
from pgsched.app import App
from pgsched.errors import InvalidInput
from pgsched.runs import (
    MAX_LIST_LIMIT,
    cancel_run,
    cancel_runs,
    failure_groups,
    get_run,
    page_runs,
    parse_args_filter,
    parse_instant,
    retry_run,
    retry_runs,
)

T = TypeVar("T")

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        pattern=NO_NUL,
        max_length=200,
        description="Makes the request safe to repeat: a repeat returns the first run (200) and queues nothing",
    ),
]
TextQuery = Annotated[str | None, QueryParameter(pattern=NO_NUL)]
# A string, parsed by _instant: Litestar would also take a number (seconds since 1970) for a datetime.
InstantQuery = Annotated[
    str | None,
    QueryParameter(
        format=OpenAPIFormat.DATE_TIME,
        description="ISO 8601 with a timezone, e.g. 2030-01-02T03:04:05Z (URL-encode a '+' offset as %2B)",
    ),
]


def _run_request(data: RunCreate | RunBatchCreate) -> store.RunRequest:
    if data.run_at is not None and data.delay is not None:
        raise InvalidInput("run_at and delay cannot both be given: run_at is an instant, delay seconds from now")
    return store.RunRequest(
        task=data.task,
        queue=data.queue,
        priority=data.priority,
        max_attempts=data.max_attempts,
        run_at=data.run_at,
        delay=data.delay,
        concurrency_key=data.concurrency_key,
    )


HttpRequest = Request[Any, Any, Any]


def _enqueue_idempotent(
    pool: ConnectionPool,
    pgsched: App,
    request: store.RunRequest,
    args: dict[str, Any],
    idempotency_key: str,
    tenant: str | None,
) -> tuple[dict[str, Any], bool]:
    # One transaction for the write and the read-back: a failure after the insert rolls it
    # back, so an error status never answers a committed run (a retry would duplicate it).
    with pool.connection() as conn, conn.transaction():
        return store.enqueue_one(conn, pgsched, request, args, idempotency_key=idempotency_key, tenant=tenant)


def _instant(name: str, text: str | None) -> datetime | None:
    """A time filter's value: ISO 8601 with a timezone; anything else is a 400 naming the
    parameter (unparseable and naive alike)."""
    return None if text is None else _query_value(name, parse_instant, name, text)


def _contained_args(text: str | None) -> dict[str, Any] | None:
    """The args filter: a JSON object, or a 400 naming the parameter."""
    return None if text is None else _query_value("args", parse_args_filter, text)


def _query_value(name: str, parse: Callable[..., T], *given: str) -> T:
    """A query parameter parsed by a library function whose InvalidInput becomes a 400 (as a
    malformed value Litestar itself refuses), not the 422 of a well-formed but refused one."""
    try:
        return parse(*given)
    except InvalidInput as exc:
        raise ValidationException(
            detail="Validation failed for GET /runs", extra=[{"key": name, "message": str(exc), "source": "query"}]
        ) from None


def _cursor(cursor: str | None) -> int | None:
    """The keyset position a ``next`` cursor encodes (the last id of the previous page)."""
    if cursor is None:
        return None
    if not cursor.isascii() or not cursor.isdigit() or not 0 < int(cursor) < 2**63:
        raise InvalidInput(f"cursor must be a `next` value this API returned, got {cursor!r}")
    return int(cursor)


class RunController(Controller):
    path = "/runs"
    tags = ["runs"]

    @post(
        "/",
        operation_id="createRun",
        status_code=201,
        responses=error_responses(
            400,
            409,
            413,
            422,
            _200=ResponseSpec(RunOut, description="A repeat: the run that holds this Idempotency-Key"),
        ),
    )
    async def create(
        self, data: JSONBody[RunCreate], state: State, request: HttpRequest, idempotency_key: IdempotencyKey = None
    ) -> Response[RunOut]:
        """Queue one run (201), or return the run an earlier request with the same Idempotency-Key queued (200)."""
        # The pools, the App and the tenant are read here, not injected: Litestar resolves a
        # handler's several dependencies in an anyio task group, a task each, on every request.
        wanted, tenant = _run_request(data), provide_tenant(request)
        if idempotency_key is not None:
            run, created = await anyio.to_thread.run_sync(
                _enqueue_idempotent, state.pool, state.pgsched, wanted, data.args, idempotency_key, tenant
            )
            return Response(from_row(RunOut, run), status_code=201 if created else 200)
        # One statement inserts the run and returns it (autocommit): the answer is the committed
        # row, which every reader can read (the schema's rules), so no error can follow the write.
        async with state.async_pool.connection() as conn:
            run = await store.enqueue_returning(conn, state.pgsched, wanted, data.args, tenant=tenant)
        return Response(from_row(RunOut, run), status_code=201)

    @post(
        "/batch",
        operation_id="createRuns",
        status_code=201,
        responses=error_responses(400, 413, 422),
    )
    async def create_many(self, data: JSONBody[RunBatchCreate], state: State, request: HttpRequest) -> RunBatchOut:
        """Queue one run of ``task`` per object in ``args`` (up to 10,000), all or none; returns their ids in order."""
        if len(data.args) > state.settings.max_batch:
            raise InvalidInput(f"args has {len(data.args)} objects; a batch holds at most {state.settings.max_batch}")
        wanted, tenant = _run_request(data), provide_tenant(request)  # read, not injected: see create
        async with state.async_pool.connection() as conn:
            ids = await store.enqueue_batch_async(conn, state.pgsched, wanted, data.args, tenant=tenant)
        return RunBatchOut(ids=ids)

    @get("/", operation_id="listRuns", sync_to_thread=True, responses=error_responses(400, 422))
    def list_runs(
        self,
        reads: Reads,
        tenant: Tenant,
        status: FromQuery[RunStatus | None] = None,
        queue: TextQuery = None,
        task: TextQuery = None,
        job: Annotated[
            str | None, QueryParameter(pattern=NO_NUL, description="The name of the scheduled job the runs belong to")
        ] = None,
        created_after: InstantQuery = None,
        created_before: InstantQuery = None,
        finished_after: InstantQuery = None,
        finished_before: InstantQuery = None,
        error_type: Annotated[
            str | None,
            QueryParameter(pattern=NO_NUL, description="The type of the run's last error, e.g. TimeoutError"),
        ] = None,
        args: Annotated[
            str | None,
            QueryParameter(
                description='A JSON object the runs\' args contain, e.g. {"customer": 42}. Such a search reads '
                "100,000 runs a page, so a page can be short, or empty, and still have a `next`",
            ),
        ] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIST_LIMIT)] = 50,
        cursor: Annotated[str | None, QueryParameter(description="The `next` of the previous page")] = None,
    ) -> RunPage:
        """Runs, newest first, a page at a time: follow ``next`` until it is null (the filters
        stay the same from page to page). Time filters are half-open windows: ``*_after``
        includes its instant, ``*_before`` excludes it."""
        created = _instant("created_after", created_after), _instant("created_before", created_before)
        finished = _instant("finished_after", finished_after), _instant("finished_before", finished_before)
        before_id = _cursor(cursor)
        contained = _contained_args(args)
        found = reads(
            lambda conn: page_runs(
                conn,
                status=status,
                queue=queue,
                task=task,
                job=job,
                limit=limit,
                before_id=before_id,
                tenant=tenant,
                created_after=created[0],
                created_before=created[1],
                finished_after=finished[0],
                finished_before=finished[1],
                error_type=error_type,
                args=contained,
            )
        )
        return RunPage(
            items=[from_row(RunSummary, row) for row in found.runs],
            next=None if found.older is None else str(found.older),
        )

    @get("/failures", operation_id="listFailureGroups", sync_to_thread=True, responses=error_responses())
    def failure_groups(self, reads: Reads, tenant: Tenant) -> FailureGroupList:
        """Runs that ended failed in the last week, grouped by task and the type of their last
        error, with counts for the last hour, day and week (the 200 most recently seen groups)."""
        rows = reads(lambda conn: failure_groups(conn, tenant=tenant))
        return FailureGroupList(items=[from_row(FailureGroup, row) for row in rows])

    @post(
        "/bulk-retry",
        operation_id="retryRuns",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 422),
    )
    def retry_many(self, data: JSONBody[RunIds], pool: Pool, tenant: Tenant, cache: Cache) -> RunIdsOut:
        """Queue the failed and cancelled runs among ``ids`` again, due now; returns those it queued."""
        with pool.connection() as conn, conn.transaction():
            ids = retry_runs(conn, data.ids, tenant=tenant)
        for run_id in ids:
            cache.forget_run(run_id)
        return RunIdsOut(ids=ids)

    @post(
        "/bulk-cancel",
        operation_id="cancelRuns",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 422),
    )
    def cancel_many(self, data: JSONBody[RunIds], pool: Pool, tenant: Tenant) -> RunIdsOut:
        """Cancel the queued runs among ``ids`` and ask the workers of the running ones to stop
        them; returns the runs it cancelled or asked to stop."""
        with pool.connection() as conn, conn.transaction():
            return RunIdsOut(ids=cancel_runs(conn, data.ids, tenant=tenant))

    @get("/{run_id:int}", operation_id="getRun", sync_to_thread=True, responses=error_responses(400, 404, 422))
    def show(self, run_id: FromPath[int], pool: Pool, tenant: Tenant, cache: Cache) -> RunOut:
        """One run with its result and the error of every failed attempt."""
        cached = cache.run(run_id, tenant)
        if cached is not None:
            return cached
        with pool.connection() as conn:
            run = from_row(RunOut, get_run(conn, run_id, tenant=tenant))
        cache.keep_run(run)  # finished runs only
        return run

    @post(
        "/{run_id:int}/cancel",
        operation_id="cancelRun",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(
            400,
            404,
            409,
            422,
            _202=ResponseSpec(RunOut, description="The run is running: its worker was asked to stop it"),
        ),
    )
    def cancel(self, run_id: FromPath[int], pool: Pool, tenant: Tenant) -> Response[RunOut]:
        """Cancel a queued run (200), or ask the worker of a running one to stop it (202); 409 for finished runs."""
        with pool.connection() as conn, conn.transaction():
            outcome = cancel_run(conn, run_id, tenant=tenant)
            run = get_run(conn, run_id, tenant=tenant)
        return Response(from_row(RunOut, run), status_code=202 if outcome == "running" else 200)

    @post(
        "/{run_id:int}/retry",
        operation_id="retryRun",
        sync_to_thread=True,
        status_code=200,
        responses=error_responses(400, 404, 409, 422),
    )
    def retry(self, run_id: FromPath[int], pool: Pool, tenant: Tenant, cache: Cache) -> RunOut:
        """Queue a failed or cancelled run again, due now; 409 for other runs."""
        with pool.connection() as conn, conn.transaction():
            retry_run(conn, run_id, tenant=tenant)
            cache.forget_run(run_id)
            return from_row(RunOut, get_run(conn, run_id, tenant=tenant))

"""The API's wire models: msgspec Structs, one per direction (``…Create``/``…Patch`` in,
``…Out``/``…Page`` out). Requests refuse unknown fields, so a misspelt field is an error that
names it instead of a silently ignored option. Value rules (queue names, priority range, cron,
timezone) are the library's: these models check only shapes and types.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal, Mapping, TypeVar

import msgspec
from litestar.openapi.datastructures import ResponseSpec
from msgspec import UNSET, Meta, Struct, UnsetType

from pgsched.jobs import MISFIRE_POLICIES, JobSpec
from pgsched.runs import RUN_STATUSES
from pgsched.schedule import Schedule

# Literal[("a", "b")] is Literal["a", "b"]: the allowed values keep one home, in the library.
RunStatus = Literal[RUN_STATUSES]  # type: ignore[valid-type]
Misfire = Literal[MISFIRE_POLICIES]  # type: ignore[valid-type]
Args = Annotated[dict[str, Any], Meta(description="The task's keyword arguments: a JSON object")]
# PostgreSQL text cannot hold a NUL character: refused here, where the error can name the field.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str, Meta(pattern=NO_NUL)]
# Jobs are addressed by name in the URL (/jobs/{name}/pause): no '/' in a name the API creates.
JOB_NAME = r"^[^\x00/]*$"
# The integer columns' range: a larger number is refused here, not by the database.
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]


class Request(Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of request bodies."""


# ---- runs


# Checked by the library (422 naming the rule: 1-200 characters, not only blanks).
CONCURRENCY_KEY = Meta(
    description="With the queue's key_max_running, runs of one key never run more at once than that, anywhere"
)


class RunCreate(Request):
    """One run to queue. Unset options take the task's defaults (queue 'default', priority 0, 3 attempts)."""

    task: Text
    args: Args = {}
    queue: Text | None = None
    priority: int | None = None
    max_attempts: Int32 | None = None
    run_at: Annotated[datetime | None, Meta(description="When it is due, with a timezone (default: now)")] = None
    delay: Annotated[float | None, Meta(description="Seconds from now (instead of run_at)")] = None
    concurrency_key: Annotated[str | None, CONCURRENCY_KEY] = None


class RunBatchCreate(Request):
    """Many runs of one task, queued all or none (one args object per run)."""

    task: Text
    args: list[Args]
    queue: Text | None = None
    priority: int | None = None
    max_attempts: Int32 | None = None
    run_at: datetime | None = None
    delay: float | None = None
    concurrency_key: Annotated[str | None, CONCURRENCY_KEY] = None


class RunOut(Struct, kw_only=True):
    id: int
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    status: RunStatus
    attempt: int
    max_attempts: int
    run_at: datetime
    job_id: int | None
    scheduled_for: datetime | None
    worker_id: int | None
    started_at: datetime | None
    finished_at: datetime | None
    lease_expires_at: datetime | None
    result: Any
    errors: list[dict[str, Any]]
    unique_key: str | None
    tenant: str | None
    created_at: datetime
    expires_at: Annotated[
        datetime | None,
        Meta(description="Not started by then, the run never starts: it ends cancelled, its last error 'Expired'"),
    ] = None
    trace_context: Annotated[
        str | None,
        Meta(description="The W3C traceparent of the code that queued the run: the worker's span continues it"),
    ] = None
    request_id: Annotated[str | None, Meta(description="The X-Request-ID of the API request that queued the run")] = (
        None
    )
    concurrency_key: Annotated[str | None, CONCURRENCY_KEY] = None


class RunSummary(Struct, kw_only=True):
    id: int
    task: str
    queue: str
    priority: int
    status: RunStatus
    attempt: int
    max_attempts: int
    run_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_at: datetime


class RunPage(Struct, kw_only=True):
    items: list[RunSummary]
    next: Annotated[str | None, Meta(description="Pass as ?cursor= for the next page; null on the last page")]


class RunBatchOut(Struct, kw_only=True):
    ids: list[int]


# ---- jobs


class JobCreate(Request):
    """A scheduled job: exactly one of cron, every (seconds) or at (a one-off instant)."""

    # The defaults are the library's, read from its dataclasses (JobSpec, Schedule) so the two
    # cannot drift: an option left out of the request body is what a JobSpec left it at. They
    # are still plain values here, so the OpenAPI document shows each one.
    name: Annotated[str, Meta(pattern=JOB_NAME)]
    task: Text
    cron: Annotated[Text | None, Meta(description="5 fields, or 6 with seconds first")] = None
    every: Annotated[float | None, Meta(description="Interval in seconds")] = None
    at: datetime | None = None
    tz: Annotated[Text, Meta(description="IANA timezone the cron is read in")] = Schedule.tz
    args: Args = {}
    queue: Text = JobSpec.queue
    priority: int = JobSpec.priority
    max_attempts: Int32 = JobSpec.max_attempts
    misfire: Misfire = JobSpec.misfire
    max_catchup: Int32 = JobSpec.max_catchup
    enabled: bool = JobSpec.enabled


class JobPatch(Request):
    """Fields to change; the rest stay. Setting one of cron, every or at replaces the schedule."""

    task: Text | UnsetType = UNSET
    cron: Text | UnsetType = UNSET
    every: float | UnsetType = UNSET
    at: datetime | UnsetType = UNSET
    tz: Text | UnsetType = UNSET
    args: Args | UnsetType = UNSET
    queue: Text | UnsetType = UNSET
    priority: int | UnsetType = UNSET
    max_attempts: Int32 | UnsetType = UNSET
    misfire: Misfire | UnsetType = UNSET
    max_catchup: Int32 | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class JobOut(Struct, kw_only=True):
    id: int
    name: str
    task: str
    args: dict[str, Any]
    queue: str
    priority: int
    cron: str | None
    every_s: float | None
    at: datetime | None
    tz: str
    misfire: str
    max_catchup: int
    max_attempts: int
    enabled: bool
    next_run_at: datetime | None
    last_scheduled_for: datetime | None
    last_error: str | None
    tenant: str | None
    created_at: datetime
    updated_at: datetime
    upcoming: Annotated[list[datetime], Meta(description="The next 5 fire times")]


class JobSummary(Struct, kw_only=True):
    id: int
    name: str
    task: str
    queue: str
    cron: str | None
    every_s: float | None
    at: datetime | None
    tz: str
    misfire: str
    enabled: bool
    next_run_at: datetime | None
    last_scheduled_for: datetime | None
    last_error: str | None
    # Names are unique per tenant: with a key that sees every tenant, two jobs may share one.
    tenant: str | None


class JobPage(Struct, kw_only=True):
    items: list[JobSummary]
    next: Annotated[str | None, Meta(description="Pass as ?cursor= for the next page; null on the last page")]


# ---- queues, workers, health


class QueueOut(Struct, kw_only=True):
    queue: str
    queued: int
    due: int
    running: int
    failed: int
    succeeded_last_hour: int
    succeeded_last_minute: Annotated[int, Meta(description="Runs that succeeded in the last 60 seconds")]
    failed_last_minute: Annotated[
        int, Meta(description="Runs that failed for good (attempts used up) in the last 60 seconds")
    ]
    oldest_queued_age_s: Annotated[float | None, Meta(description="Age of the oldest due run, in seconds")]
    paused: Annotated[bool, Meta(description="Workers claim none of its runs; enqueueing still works")] = False
    max_running: Annotated[int | None, Meta(description="At most this many running at once, over all workers")] = None
    rate: Annotated[str | None, Meta(description="At most this many run starts per s, m or h (a token bucket)")] = None
    burst: Annotated[int | None, Meta(description="How many may start at once after a quiet spell")] = None
    key_max_running: Annotated[int | None, Meta(description="At most this many runs of one key at once")] = None
    fair: Annotated[
        bool, Meta(description="Its runs are claimed in turns per tenant (or concurrency key) within a priority")
    ] = False
    held_back: Annotated[int, Meta(description="Due runs its limits do not let start now (all while paused)")] = 0


class QueueList(Struct, kw_only=True):
    items: list[QueueOut]


# A queue's max_running: the column's integer range, 1 at least (NULL clears the limit).
MaxRunning = Annotated[int, Meta(ge=1, le=2**31 - 1, description="At most this many of its runs running at once")]


# A rate as the database keeps it ("100/m"); the library refuses any other shape with a 422
# naming the rule (a pattern here would give a 400 that does not say what a rate looks like).
Rate = Annotated[str, Meta(description="Run starts per second, minute or hour: N/s, N/m or N/h (e.g. 100/m)")]
Burst = Annotated[int, Meta(ge=1, le=1_000_000, description="How many may start at once after a quiet spell")]
RATE_OUT = Meta(description="At most this many run starts per s, m or h, over all workers (a token bucket)")
BURST_OUT = Meta(description="How many may start at once after a quiet spell (null with a rate: 1)")


class QueueSettingsOut(Struct, kw_only=True):
    """A queue's settings (a queue never set has the defaults, and updated_at null)."""

    name: str
    paused: Annotated[bool, Meta(description="Workers claim none of its runs; enqueueing still works")]
    max_running: Annotated[int | None, Meta(description="At most this many running at once, over all workers")]
    rate: Annotated[str | None, RATE_OUT] = None
    burst: Annotated[int | None, BURST_OUT] = None
    key_max_running: Annotated[
        int | None, Meta(description="At most this many runs of one concurrency key running at once")
    ] = None
    fair: Annotated[
        bool, Meta(description="Its runs are claimed in turns per tenant (or concurrency key) within a priority")
    ] = False
    updated_at: datetime | None


class QueueSettingsPatch(Request):
    """Settings to change; the others stay. null clears a limit (a null rate clears the burst too)."""

    paused: bool | UnsetType = UNSET
    max_running: MaxRunning | UnsetType | None = UNSET
    rate: Rate | UnsetType | None = UNSET
    burst: Burst | UnsetType | None = UNSET
    key_max_running: MaxRunning | UnsetType | None = UNSET
    fair: (
        Annotated[
            bool, Meta(description="Its runs are claimed in turns per tenant (or concurrency key) within a priority")
        ]
        | UnsetType
    ) = UNSET


class TaskSettingsOut(Struct, kw_only=True):
    """A task's settings, over every queue its runs are in (a task never set: the defaults)."""

    name: Annotated[str, Meta(description="The task")]
    paused: Annotated[bool, Meta(description="Workers claim none of its runs; enqueueing still works")]
    max_running: Annotated[int | None, Meta(description="At most this many running at once, over all workers")]
    rate: Annotated[str | None, RATE_OUT] = None
    burst: Annotated[int | None, BURST_OUT] = None
    updated_at: datetime | None


HELD_BACK = Meta(description="Due runs its limits do not let start now (all of them while paused)")


class TaskSettingsListed(TaskSettingsOut, kw_only=True):
    queued: int
    running: int
    held_back: Annotated[int, HELD_BACK]


class TaskSettingsList(Struct, kw_only=True):
    items: list[TaskSettingsListed]


class TaskSettingsPatch(Request):
    """Settings to change; the others stay. null clears a limit (a null rate clears the burst too)."""

    paused: bool | UnsetType = UNSET
    max_running: MaxRunning | UnsetType | None = UNSET
    rate: Rate | UnsetType | None = UNSET
    burst: Burst | UnsetType | None = UNSET


# ---- tenants

Quota = Annotated[int, Meta(ge=0, le=2**31 - 1, description="The quota (0: none admitted)")]


class TenantOut(Struct, kw_only=True):
    """A tenant's quotas (null: no quota; a tenant never set has none, and updated_at null)."""

    name: str
    max_queued: Annotated[int | None, Meta(description="At most this many of its runs queued at once")]
    runs_per_day: Annotated[int | None, Meta(description="At most this many runs created per UTC day")]
    max_running: Annotated[
        int | None, Meta(description="At most this many of its runs running at once, over all queues and workers")
    ]
    updated_at: datetime | None
    queued: Annotated[int, Meta(description="Its runs queued now")]
    running: Annotated[int, Meta(description="Its runs running now")]
    created_today: Annotated[int, Meta(description="Runs it created today (UTC), as runs_per_day counts them")]


class TenantList(Struct, kw_only=True):
    items: list[TenantOut]


class TenantPatch(Request):
    """Quotas to change; the others stay. null clears a quota."""

    max_queued: Quota | UnsetType | None = UNSET
    runs_per_day: Quota | UnsetType | None = UNSET
    max_running: MaxRunning | UnsetType | None = UNSET


class UsageDay(Struct, kw_only=True):
    """One tenant's usage on one UTC day (see the tenant quotas guide for each figure)."""

    tenant: str
    day: date
    created: Annotated[int, Meta(description="Runs inserted that day")]
    started: Annotated[int, Meta(description="Attempts started by the runs that finished that day")]
    succeeded: Annotated[int, Meta(description="Runs that finished succeeded that day")]
    failed: Annotated[int, Meta(description="Runs that failed for good that day")]
    cancelled: Annotated[int, Meta(description="Runs cancelled (or expired) that day")]
    task_s: Annotated[float, Meta(description="Seconds of all attempts of the runs that finished that day")]


class UsageList(Struct, kw_only=True):
    items: list[UsageDay]


class QueueMinute(Struct, kw_only=True):
    queue: str
    minute: Annotated[datetime, Meta(description="The minute's start")]
    succeeded: int
    failed: Annotated[int, Meta(description="Runs that failed for good (attempts used up) in that minute")]


class QueueThroughput(Struct, kw_only=True):
    items: list[QueueMinute]


class FailureGroup(Struct, kw_only=True):
    task: str
    error_type: Annotated[str, Meta(description="The type of the last attempt's error ('' when it has none)")]
    last_hour: int
    last_day: int
    last_week: int
    last_seen: datetime


class FailureGroupList(Struct, kw_only=True):
    items: list[FailureGroup]


RunId = Annotated[int, Meta(ge=1, le=2**63 - 1)]


class RunIds(Request):
    ids: Annotated[list[RunId], Meta(min_length=1, max_length=1000, description="Run ids, at most 1,000")]


class RunIdsOut(Struct, kw_only=True):
    ids: Annotated[list[int], Meta(description="The runs the request changed (the others were left as they are)")]


class WorkerOut(Struct, kw_only=True):
    id: int
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    started_at: datetime
    last_seen_at: datetime


class WorkerList(Struct, kw_only=True):
    items: list[WorkerOut]


class Health(Struct, kw_only=True):
    status: Literal["ok"]


class Readiness(Struct, kw_only=True):
    status: Literal["ready", "unavailable"]
    reason: str | None = None
    pending_migrations: list[str] = []


class FieldError(Struct, kw_only=True):
    field: Annotated[str | None, Meta(description="The field, query parameter, path parameter or header at fault")]
    message: str
    source: Literal["body", "query", "path", "header"] | None = None


class ErrorOut(Struct, kw_only=True):
    status_code: int
    detail: str
    errors: list[FieldError] = []


_ERROR_DESCRIPTIONS = {
    400: "Malformed request: the errors name the field, query or path parameter, or header",
    401: "Missing, unknown or revoked API key",
    403: "The API key's scope (or its tenant) does not allow this",
    404: "No such run or job (for a tenant key: none of its tenant's)",
    409: "The run or job is not in a state (or the name not free) for this",
    413: "The body is larger than this API accepts",
    422: "A value pgsched refuses: the errors name the field",
    429: "Too many requests: over the API key's rate limit, too many unknown keys from this client "
    "address, or (enqueue) the tenant over a quota, named as the error's field; Retry-After says when "
    "to try again",
    503: "The database is unreachable or its schema needs `pgsched migrate`",
}
# The errors every protected route can answer; add the ones a route adds.
PROTECTED = (401, 403, 429, 503)


def error_responses(*codes: int, **extra: ResponseSpec) -> dict[int, ResponseSpec]:
    """OpenAPI responses: ``ErrorOut`` for each code (an ``extra`` keyword ``_200=...`` adds a success)."""
    responses = {
        code: ResponseSpec(ErrorOut, description=_ERROR_DESCRIPTIONS[code], generate_examples=False)
        for code in sorted({*PROTECTED, *codes})
    }
    responses.update({int(key.lstrip("_")): spec for key, spec in extra.items()})
    return responses


Out = TypeVar("Out", bound=Struct)


def from_row(model: type[Out], row: Mapping[str, Any]) -> Out:
    """A response model from a library row (columns the model does not name are left out)."""
    return msgspec.convert(row, model)


# ---- workflows

WorkflowStatus = Literal["running", "succeeded", "failed", "cancelled"]


class WorkflowSummary(Struct, kw_only=True):
    id: int
    name: str
    tenant: str | None
    status: WorkflowStatus
    steps: int
    unfinished: int
    created_at: datetime
    finished_at: datetime | None
    cancel_requested_at: datetime | None


class WorkflowPage(Struct, kw_only=True):
    items: list[WorkflowSummary]
    next: Annotated[str | None, Meta(description="Pass as ?cursor= for the next page; null on the last page")]


class WorkflowStep(Struct, kw_only=True):
    id: Annotated[int, Meta(description="The step's run id")]
    task: str
    status: RunStatus
    attempt: int
    max_attempts: int
    parents: Annotated[list[int], Meta(description="Its parents' run ids, in the order of its after=")]
    conditions: Annotated[list[str], Meta(description="Each parent's condition: succeeded, failed or finished")]
    parents_pending: int | None
    started_at: datetime | None
    finished_at: datetime | None
    cancel_reason: str | None


class WorkflowOut(WorkflowSummary, kw_only=True):
    steps_shown: Annotated[list[WorkflowStep], Meta(description="Its steps in id order (parents first), up to 10,000")]


class WorkflowCancelOut(Struct, kw_only=True):
    id: int
    cancelled: Annotated[int, Meta(description="Steps cancelled, or running ones whose workers were asked to stop")]


class WorkflowStepIn(Request):
    """One step: ``key`` names it in this request (``after`` of other steps names it)."""

    key: Annotated[
        str, Meta(pattern=NO_NUL, min_length=1, max_length=200, description="The step's name in this request")
    ]
    task: Text
    args: Args = {}
    after: Annotated[
        list[str], Meta(description="Keys of the steps it waits for (in the order of parent_results)")
    ] = []
    when: Annotated[str, Meta(description="succeeded (default), failed or finished: how its parents must end")] = (
        "succeeded"
    )
    queue: Text | None = None
    priority: int | None = None
    max_attempts: Int32 | None = None
    delay: Annotated[float | None, Meta(description="Seconds after its release at the earliest")] = None


class WorkflowCreate(Request):
    """A workflow: its steps in any order (they are written parents first), checked whole
    before anything is written."""

    name: Text
    steps: list[WorkflowStepIn]


class WorkflowCreatedOut(Struct, kw_only=True):
    id: int
    run_ids: Annotated[dict[str, int], Meta(description="Each step's run id, by its key")]

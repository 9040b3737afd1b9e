"""Every error pgsched raises, and the exceptions tasks raise to steer their own run.

Each class's docstring is its default message. User-facing entry points (CLI, API) catch
``PgschedError`` and show its message; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PgschedError(Exception):
    """pgsched failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(PgschedError):
    """pgsched is not configured correctly."""


class DatabaseUnavailable(PgschedError):
    """The database cannot be reached."""


class SchemaNotReady(PgschedError):
    """The pgsched schema is missing or out of date: run `pgsched migrate`."""


class TaskNotFound(PgschedError):
    """No task with that name is registered."""


class DuplicateTask(PgschedError):
    """A task with that name is already registered."""


class InvalidInput(PgschedError):
    """The input is not valid."""


class InvalidArgs(InvalidInput):
    """The arguments do not fit the task's signature."""


class QuotaExceeded(PgschedError):
    """The tenant is over a quota: nothing was inserted."""

    def __init__(self, message: str, *, tenant: str, quota: str, limit: int, count: int, adding: int) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.quota = quota  # "max_queued" or "runs_per_day"
        self.limit = limit
        self.count = count  # queued (max_queued) or created today (runs_per_day), without the refused runs
        self.adding = adding  # runs the refused statement held for this tenant


class RunNotFound(PgschedError):
    """No run with that id."""


class WorkflowNotFound(PgschedError):
    """No workflow with that id."""


class RunStateConflict(PgschedError):
    """The run is not in a state that allows this."""


class AppLoadError(PgschedError):
    """The app could not be loaded."""


class WaitInsideTask(PgschedError):
    """A task cannot wait for another run: its slot stays taken while it waits, and with every
    slot waiting nothing runs (the deadlock Celery warns about). Chain the work instead."""


class RunFailed(PgschedError):
    """The run failed."""

    def __init__(
        self, run_id: int, error_type: str, message: str, remote_traceback: str | None = None, *, status: str = "failed"
    ) -> None:
        super().__init__(f"run {run_id} {status}: {error_type}: {message}")
        self.run_id = run_id
        self.error_type = error_type
        self.error_message = message
        # The traceback as the worker formatted it (None when nothing raised, e.g. an expiry).
        self.remote_traceback = remote_traceback
        self.status = status


class RunCancelled(RunFailed):
    """The run was cancelled."""

    def __init__(self, run_id: int, error_type: str, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(run_id, error_type, message, remote_traceback, status="cancelled")

    @property
    def reason(self) -> str:
        """'expired', 'cancelled by the task' or 'cancel requested' (as pgsched.recent_cancellations says)."""
        return {"Expired": "expired", "Cancel": "cancelled by the task"}.get(self.error_type, "cancel requested")


# Raised by tasks to steer their run; never by pgsched itself.


class Retry(Exception):
    """Raise from a task to run it again later (counts as an attempt)."""

    def __init__(self, after: float | None = None, reason: str = "retry requested by the task") -> None:
        super().__init__(reason)
        self.after = after


class Cancel(Exception):
    """Raise from a task to end its run as cancelled, without retries."""

    def __init__(self, reason: str = "cancelled by the task") -> None:
        super().__init__(reason)

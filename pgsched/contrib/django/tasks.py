"""A backend for Django's Tasks framework: ``django.tasks`` from Django 6, or the ``django-tasks``
backport it comes from on Django 4.2 to 5.2 (the one this backend is tested with).

    TASKS = {
        "default": {
            "BACKEND": "pgsched.contrib.django.tasks.PgschedBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"APP": "shop.tasks:app"},   # a DjangoApp; it runs the tasks too
        }
    }

A Django task's call becomes one run of the App's ``pgsched.contrib.django.run_task`` task, with
the task's import path, args and kwargs; inside ``transaction.atomic()`` it is written in that
transaction (a :class:`~pgsched.contrib.django.DjangoApp` on Django's connection). Django runs
**higher** priorities first and pgsched lower ones, so a task's priority is stored negated
(both span -100..100). ``run_after`` is the run's ``run_at``, ``queue_name`` its queue; the
result id is the run id. The framework has no retries, so a run gets one attempt. Tasks that take
a context are refused: pgsched does not pass one yet.
"""

from __future__ import annotations

import builtins
from typing import Any

from django.utils import timezone

from pgsched.contrib.django import DJANGO_TASK, DjangoApp
from pgsched.errors import InvalidInput, RunNotFound
from pgsched.loader import load_app
from pgsched.runs import get_run

try:  # Django 6
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import Task, TaskError, TaskResult, TaskResultStatus
    from django.tasks.exceptions import InvalidTask as InvalidTaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:  # the backport, before Django 6
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import Task, TaskError, TaskResult, TaskResultStatus
    from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist

# pgsched's run status -> Django's task result status ('cancelled' has no counterpart: failed).
STATUSES = {
    "queued": TaskResultStatus.READY,
    "running": TaskResultStatus.RUNNING,
    "succeeded": TaskResultStatus.SUCCESSFUL,
    "failed": TaskResultStatus.FAILED,
    "cancelled": TaskResultStatus.FAILED,
}


class PgschedBackend(BaseTaskBackend):  # type: ignore[misc]  # Django ships no types: its base is Any
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        path = self.options.get("APP")
        self.app = load_app(path) if path else DjangoApp()

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if task.takes_context:
            raise InvalidTaskError("pgsched does not pass a task context yet: use takes_context=False")

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        try:
            run_id = self.app.enqueue(
                DJANGO_TASK,
                {"path": task.module_path, "args": list(args), "kwargs": dict(kwargs)},
                queue=task.queue_name,
                priority=-task.priority,  # Django runs higher first, pgsched lower first
                run_at=task.run_after,
                max_attempts=1,  # the Tasks framework has no retries: a failure is the result
            )
        except InvalidInput as exc:
            raise InvalidTaskError(str(exc)) from None
        # Built, not read back: inside an atomic block the run is not visible to other connections yet.
        queued = {"id": run_id, "status": "queued", "created_at": timezone.now(), "started_at": None}
        fields: dict[str, Any] = {"finished_at": None, "errors": [], "worker_id": None, "attempt": 0, "result": None}
        return self._result(task, {**queued, **fields, "args": {"args": list(args), "kwargs": dict(kwargs)}})

    def get_result(self, result_id: str) -> TaskResult:
        if not result_id.isdigit():
            raise TaskResultDoesNotExist(result_id)
        try:
            with self.app.pool.connection() as conn:
                run = get_run(conn, int(result_id))
        except (RunNotFound, InvalidInput):
            raise TaskResultDoesNotExist(result_id) from None
        if run["task"] != DJANGO_TASK:
            raise TaskResultDoesNotExist(result_id)
        from django.utils.module_loading import import_string

        return self._result(import_string(run["args"]["path"]), run)

    def _result(self, task: Task, run: dict[str, Any]) -> TaskResult:
        """A TaskResult from a run's columns (get_run's names)."""
        result = TaskResult(
            task=task,
            id=str(run["id"]),
            status=STATUSES[run["status"]],
            enqueued_at=run["created_at"],
            started_at=run["started_at"],
            last_attempted_at=run["started_at"],
            finished_at=run["finished_at"],
            args=run["args"]["args"],
            kwargs=run["args"]["kwargs"],
            backend=self.alias,
            errors=[
                TaskError(
                    exception_class_path=_class_path(error.get("type")), traceback=str(error.get("traceback") or "")
                )
                for error in run["errors"]
            ],
            # Django counts attempts as worker ids; a run keeps only its last worker's.
            worker_ids=[str(run["worker_id"])] * run["attempt"] if run["worker_id"] else [],
        )
        object.__setattr__(result, "_return_value", run["result"])  # a frozen dataclass, as the backport's own
        return result


def _class_path(kind: Any) -> str:
    """An errors entry names the exception's class; Django wants an import path (builtins' too)."""
    name = str(kind)
    return f"builtins.{name}" if isinstance(getattr(builtins, name, None), type) else name

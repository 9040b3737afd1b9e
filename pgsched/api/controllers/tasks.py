"""``/tasks/{name}``: a task's settings over every queue its runs are in (paused, max_running,
rate and burst), as ``pgsched tasks …`` reads and changes them; ``/tasks`` lists the tasks that
have settings, with their runs queued, running and held back by a limit.

Tasks are shared by every tenant, as queues are: any key may read their settings, only a key
without a tenant (scope write or admin) may change them.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, patch, post
from litestar.params import JSONBody, PathParameter
from msgspec import UNSET

from pgsched import queue_settings
from pgsched.api.controllers.queues import SHARED_SETTING
from pgsched.api.deps import Pool
from pgsched.api.schemas import (
    TaskSettingsList,
    TaskSettingsListed,
    TaskSettingsOut,
    TaskSettingsPatch,
    error_responses,
    from_row,
)

# Checked by queue_settings (422 naming the rule), as a task name is everywhere.
TaskName = Annotated[str, PathParameter(description="The task")]
SETTINGS = ("paused", "max_running", "rate", "burst")


def _changed(pool: Pool, name: str, **changes: Any) -> TaskSettingsOut:
    with pool.connection() as conn:
        return from_row(TaskSettingsOut, queue_settings.set_task_settings(conn, name, **changes))


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]

    @get("/", operation_id="listTaskSettings", sync_to_thread=True, responses=error_responses())
    def list_settings(self, pool: Pool) -> TaskSettingsList:
        """Every task with settings: its limits, and its runs queued, running and held back."""
        with pool.connection() as conn:
            rows = queue_settings.list_task_settings(conn)
        return TaskSettingsList(items=[from_row(TaskSettingsListed, row) for row in rows])

    @get("/{name:str}", operation_id="getTaskSettings", sync_to_thread=True, responses=error_responses(400, 422))
    def get_settings(self, name: TaskName, pool: Pool) -> TaskSettingsOut:
        """A task's settings (a task never set: not paused, no limit)."""
        with pool.connection() as conn:
            return from_row(TaskSettingsOut, queue_settings.get_task_settings(conn, name))

    @patch(
        "/{name:str}",
        operation_id="updateTaskSettings",
        sync_to_thread=True,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def update_settings(self, name: TaskName, data: JSONBody[TaskSettingsPatch], pool: Pool) -> TaskSettingsOut:
        """Change some settings of a task; the others stay. Workers apply them within a second."""
        changes = {key: getattr(data, key) for key in SETTINGS if getattr(data, key) is not UNSET}
        return _changed(pool, name, **changes)

    @post(
        "/{name:str}/pause",
        operation_id="pauseTask",
        sync_to_thread=True,
        status_code=200,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def pause(self, name: TaskName, pool: Pool) -> TaskSettingsOut:
        """Workers claim none of the task's runs, in any queue, until it is resumed."""
        return _changed(pool, name, paused=True)

    @post(
        "/{name:str}/resume",
        operation_id="resumeTask",
        sync_to_thread=True,
        status_code=200,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def resume(self, name: TaskName, pool: Pool) -> TaskSettingsOut:
        """Workers claim the task's runs again."""
        return _changed(pool, name, paused=False)

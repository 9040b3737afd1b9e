"""``/queues``: depth, running and failed runs, recent throughput and the oldest wait, per
queue; ``/queues/-/throughput``: the last hour per minute (the dashboard's charts); and each
queue's settings (``/queues/{name}``: paused, max_running, rate and burst, key_max_running, fair).

Queues are shared by every tenant, so their settings describe the whole installation: any key
may read them, only a key without a tenant (scope write or admin) may change them.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, patch, post
from litestar.params import JSONBody, PathParameter
from msgspec import UNSET

from pgsched import queue_settings
from pgsched.api.cache import Cache
from pgsched.api.deps import Pool, Reads, Tenant
from pgsched.api.schemas import (
    QueueList,
    QueueMinute,
    QueueOut,
    QueueSettingsOut,
    QueueSettingsPatch,
    QueueThroughput,
    error_responses,
    from_row,
)
from pgsched.queues import list_queues, queue_throughput

# Checked by queue_settings (422 naming the rule), as a queue name is everywhere.
QueueName = Annotated[str, PathParameter(description="The queue")]
# Changing a queue's settings changes every tenant's runs: keys without a tenant only.
SHARED_SETTING = {"cluster_wide": True}
SETTINGS = ("paused", "max_running", "rate", "burst", "key_max_running", "fair")


def _changed(pool: Pool, name: str, **changes: Any) -> QueueSettingsOut:
    with pool.connection() as conn:
        return from_row(QueueSettingsOut, queue_settings.set_queue_settings(conn, name, **changes))


class QueueController(Controller):
    path = "/queues"
    tags = ["queues"]

    @get("/", operation_id="listQueues", sync_to_thread=True, responses=error_responses())
    def list_queues(self, reads: Reads, tenant: Tenant, cache: Cache) -> QueueList:
        """Every queue that holds runs (a tenant key: its own runs only)."""
        cached = cache.queues(tenant)
        if cached is not None:
            return cached
        rows = reads(lambda conn: list_queues(conn, tenant=tenant))
        queues = QueueList(items=[from_row(QueueOut, row) for row in rows])
        cache.keep_queues(tenant, queues)
        return queues

    # "-" starts no queue's name, so this path never hides a queue's own (/queues/{name}).
    @get("/-/throughput", operation_id="queueThroughput", sync_to_thread=True, responses=error_responses())
    def throughput(self, reads: Reads, tenant: Tenant) -> QueueThroughput:
        """Succeeded and failed runs per queue and minute over the last hour, from the per-minute
        rollup the beat leader keeps (empty without a beat); minutes without runs are left out."""
        rows = reads(lambda conn: queue_throughput(conn, tenant=tenant))
        return QueueThroughput(items=[from_row(QueueMinute, row) for row in rows])

    @get("/{name:str}", operation_id="getQueueSettings", sync_to_thread=True, responses=error_responses(400, 422))
    def get_settings(self, name: QueueName, pool: Pool) -> QueueSettingsOut:
        """A queue's settings (a queue never set: not paused, no limit)."""
        with pool.connection() as conn:
            return from_row(QueueSettingsOut, queue_settings.get_queue_settings(conn, name))

    @patch(
        "/{name:str}",
        operation_id="updateQueueSettings",
        sync_to_thread=True,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def update_settings(self, name: QueueName, data: JSONBody[QueueSettingsPatch], pool: Pool) -> QueueSettingsOut:
        """Change some settings of a queue; the others stay. Workers apply them within a second."""
        changes = {key: getattr(data, key) for key in SETTINGS if getattr(data, key) is not UNSET}
        return _changed(pool, name, **changes)

    @post(
        "/{name:str}/pause",
        operation_id="pauseQueue",
        sync_to_thread=True,
        status_code=200,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def pause(self, name: QueueName, pool: Pool) -> QueueSettingsOut:
        """Workers claim none of the queue's runs until it is resumed; enqueueing still works."""
        return _changed(pool, name, paused=True)

    @post(
        "/{name:str}/resume",
        operation_id="resumeQueue",
        sync_to_thread=True,
        status_code=200,
        opt=SHARED_SETTING,
        responses=error_responses(400, 403, 422),
    )
    def resume(self, name: QueueName, pool: Pool) -> QueueSettingsOut:
        """Workers claim the queue's runs again."""
        return _changed(pool, name, paused=False)

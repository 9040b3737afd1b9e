"""``/queues``: depth, running and failed runs, recent throughput and the oldest wait, per
queue; ``/queues/throughput``: the last hour per minute (the dashboard's charts)."""

from __future__ import annotations

from litestar import Controller, get

from pgsched.api.auth import require_scope
from pgsched.api.cache import Cache
from pgsched.api.deps import Pool, Tenant
from pgsched.api.schemas import QueueList, QueueMinute, QueueOut, QueueThroughput, error_responses, from_row
from pgsched.queues import list_queues, queue_throughput


class QueueController(Controller):
    path = "/queues"
    tags = ["queues"]
    guards = [require_scope]

    @get("/", operation_id="listQueues", sync_to_thread=True, responses=error_responses())
    def list_queues(self, pool: Pool, tenant: Tenant, cache: Cache) -> QueueList:
        """Every queue that holds runs (a tenant key: its own runs only)."""
        cached = cache.queues(tenant)
        if cached is not None:
            return cached
        with pool.connection() as conn:
            rows = list_queues(conn, tenant=tenant)
        queues = QueueList(items=[from_row(QueueOut, row) for row in rows])
        cache.keep_queues(tenant, queues)
        return queues

    @get("/throughput", operation_id="queueThroughput", sync_to_thread=True, responses=error_responses())
    def throughput(self, pool: Pool, tenant: Tenant) -> QueueThroughput:
        """Succeeded and failed runs per queue and minute over the last hour, from the per-minute
        rollup the beat leader keeps (empty without a beat); minutes without runs are left out."""
        with pool.connection() as conn:
            rows = queue_throughput(conn, tenant=tenant)
        return QueueThroughput(items=[from_row(QueueMinute, row) for row in rows])

"""``/workers``: the live workers, their queues, slots and the runs they hold."""

from __future__ import annotations

from litestar import Controller, get

from pgsched.api import store
from pgsched.api.deps import Reads
from pgsched.api.schemas import WorkerList, WorkerOut, error_responses, from_row


class WorkerController(Controller):
    path = "/workers"
    tags = ["workers"]

    @get("/", operation_id="listWorkers", sync_to_thread=True, opt={"cluster_wide": True}, responses=error_responses())
    def list_workers(self, reads: Reads) -> WorkerList:
        """Live workers, oldest first (shared by every tenant: needs a key without a tenant)."""
        rows = reads(store.list_workers)
        return WorkerList(items=[from_row(WorkerOut, row) for row in rows])

"""The read cache in Redis: ``GET /queues``, ``GET /jobs/{name}`` and ``GET /runs/{id}`` of
finished runs, each kept a few seconds. Without Redis (or while it is down) every method is a
miss or a no-op and PostgreSQL answers, so no handler depends on it.

What is kept, and why the TTLs are short:

- a finished run (succeeded, failed, cancelled): only a retry changes it, and the API's retry
  forgets it; a retry from elsewhere (the CLI, SQL) or a prune shows within ``RUN_TTL_S``.
  Queued and running runs change under the workers' hands: never cached.
- a job: the API's writes (create/replace, PATCH, DELETE, pause, resume) forget it; the beat
  advances its next fire time, which shows within ``JOB_TTL_S``.
- the queue list, per tenant scope: workers change it all the time without the API seeing it,
  so it lives on its TTL alone (forgetting it on every enqueue would put Redis on the enqueue path).

Tenants: runs and jobs are cached once, by id or name (job names are unique across tenants), and
a hit is served only to a key of the row's tenant or a key without a tenant; anyone else falls
through to PostgreSQL, which answers 404. The queue list is an aggregate, so its key names the
tenant scope. Forgetting writes a short-lived tombstone rather than deleting: a read that began
before the write cannot put the old row back (``SET NX``) until the tombstone expires.

One Redis database (the ``/N`` of the URL) per pgsched installation: keys carry run ids.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import msgspec
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from pgsched.api.redis_tier import KEY_PREFIX, RedisTier, RedisUnavailable
from pgsched.api.schemas import JobOut, QueueList, RunOut

logger = logging.getLogger("pgsched.api")

RUN_TTL_S = 30
JOB_TTL_S = 5
QUEUES_TTL_S = 2
# Longer than a read takes between its database query and its SET NX.
TOMBSTONE_S = 5
FINISHED = frozenset({"succeeded", "failed", "cancelled"})
_TOMBSTONE = b"-"

Row = TypeVar("Row", RunOut, JobOut)
Value = TypeVar("Value", RunOut, JobOut, QueueList)


def run_key(run_id: int) -> str:
    return f"{KEY_PREFIX}run:{run_id}"


def job_key(tenant: str | None, name: str) -> str:
    # Names are unique per tenant. '*' and '/' are in no tenant's name: no two jobs share a key.
    return f"{KEY_PREFIX}job:{'*' if tenant is None else tenant}/{name}"


def queues_key(tenant: str | None) -> str:
    # Tenant names never contain '*': the two scopes cannot collide.
    return f"{KEY_PREFIX}queues:{'*' if tenant is None else tenant}"


class ResponseCache:
    """Cached response bodies of one API process (``redis=None``: nothing is cached)."""

    def __init__(self, redis: RedisTier | None) -> None:
        self.redis = redis

    def run(self, run_id: int, tenant: str | None) -> RunOut | None:
        return self._visible(self._get(run_key(run_id), RunOut), tenant)

    def keep_run(self, run: RunOut) -> None:
        if run.status in FINISHED:
            self._set(run_key(run.id), run, RUN_TTL_S)

    def forget_run(self, run_id: int) -> None:
        self._forget(run_key(run_id))

    def job(self, name: str, tenant: str | None) -> JobOut | None:
        """The job ``name`` of ``tenant`` (None: the job without a tenant), if cached."""
        return self._visible(self._get(job_key(tenant, name), JobOut), tenant)

    def keep_job(self, job: JobOut) -> None:
        self._set(job_key(job.tenant, job.name), job, JOB_TTL_S)

    def forget_job(self, tenant: str | None, name: str) -> None:
        self._forget(job_key(tenant, name))

    def queues(self, tenant: str | None) -> QueueList | None:
        return self._get(queues_key(tenant), QueueList)

    def keep_queues(self, tenant: str | None, queues: QueueList) -> None:
        self._set(queues_key(tenant), queues, QUEUES_TTL_S)

    @staticmethod
    def _visible(row: Row | None, tenant: str | None) -> Row | None:
        """The cached row if this caller may see it (else a miss: PostgreSQL decides)."""
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        return row

    def _get(self, key: str, model: type[Value]) -> Value | None:
        if self.redis is None:
            return None
        try:
            data: Any = self.redis.call(lambda client: client.get(key))
        except RedisUnavailable:
            return None
        if not data or data == _TOMBSTONE:
            return None
        try:
            return msgspec.json.decode(data, type=model)
        except msgspec.DecodeError:  # a value another version of pgsched wrote: a miss
            logger.debug("ignoring an undecodable cache entry %s", key)
            return None

    def _set(self, key: str, value: Value, ttl_s: int) -> None:
        if self.redis is None:
            return
        data = msgspec.json.encode(value)
        try:
            self.redis.call(lambda client: client.set(key, data, ex=ttl_s, nx=True))
        except RedisUnavailable:
            pass  # best effort: the next read asks PostgreSQL again

    def _forget(self, key: str) -> None:
        if self.redis is None:
            return
        try:
            self.redis.call(lambda client: client.set(key, _TOMBSTONE, ex=TOMBSTONE_S))
        except RedisUnavailable:
            # A down Redis serves nothing now; when it comes back, what it holds expires within its TTL.
            pass


Cache = NamedDependency[ResponseCache]


def provide_cache(state: State) -> ResponseCache:
    return state.cache  # type: ignore[no-any-return]


CACHE_DEPENDENCY = {"cache": Provide(provide_cache, sync_to_thread=False)}

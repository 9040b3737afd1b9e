"""Operations: ``/health`` (the process is up), ``/ready`` (the database is reachable and its
schema current: else 503, so a load balancer stops sending traffic) and ``/metrics``."""

from __future__ import annotations

import psycopg
from litestar import Controller, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE

from pgsched.api import metrics
from pgsched.api.deps import Pool, Settings
from pgsched.api.schemas import Health, Readiness, error_responses
from pgsched.migrate import pending

READY_TIMEOUT_S = 2.0
# The document's way to say "no key needed": one empty requirement. (Litestar drops an empty
# list, and the operation would inherit the document's Bearer requirement.)
NO_KEY: list[dict[str, list[str]]] = [{}]


class HealthController(Controller):
    path = "/"
    tags = ["operations"]

    @get("/health", operation_id="health", sync_to_thread=False, opt={"exclude_from_auth": True}, security=NO_KEY)
    def health(self) -> Health:
        """The process is up (nothing else is checked: see /ready)."""
        return Health(status="ok")

    @get(
        "/ready",
        operation_id="ready",
        sync_to_thread=True,
        opt={"exclude_from_auth": True},
        security=NO_KEY,
        responses={503: ResponseSpec(Readiness, description="The database is unreachable or needs `pgsched migrate`")},
    )
    def ready(self, pool: Pool, settings: Settings) -> Response[Readiness]:
        """Ready to serve: the database answers and no migration is pending."""
        try:
            with pool.connection(timeout=min(READY_TIMEOUT_S, settings.pool_timeout_s)) as conn:
                todo = pending(conn)
        except psycopg.Error as exc:
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return Response(
                Readiness(status="unavailable", reason=f"database unavailable: {first_line}"),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        if todo:
            return Response(
                Readiness(
                    status="unavailable",
                    reason="the schema needs `pgsched migrate`",
                    pending_migrations=[f"{m.version}_{m.name}" for m in todo],
                ),
                status_code=HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(Readiness(status="ready"))

    @get(
        "/metrics",
        operation_id="metrics",
        sync_to_thread=True,
        media_type=metrics.CONTENT_TYPE,
        opt={"cluster_wide": True},
        responses=error_responses(),
    )
    def prometheus_metrics(self, pool: Pool) -> str:
        """Prometheus text format: runs by queue and status, queue waits, workers, and histograms of the
        queue wait and run time of the runs that finished in the last 5 minutes."""
        with pool.connection() as conn:
            return metrics.render(conn)

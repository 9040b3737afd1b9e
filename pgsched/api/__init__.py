"""pgsched's REST API (Litestar): ``create_app(ApiSettings(dsn=...))`` returns the ASGI app.

Handlers are thin: they call the same library functions as the CLI (``pgsched.runs``,
``pgsched.jobs``, ``App.enqueue``). Serve it with ``pgsched api`` (uvicorn); the OpenAPI
document is at ``/schema/openapi.json``.

    pgsched/api/app.py          the factory: assembles the parts below
    pgsched/api/settings.py     ApiSettings
    pgsched/api/controllers/    one module per noun: runs, jobs, queues, workers, health
    pgsched/api/schemas.py      wire models, one per direction
    pgsched/api/auth.py         Bearer keys, scopes, tenants
    pgsched/api/keys.py         the api_keys store (shared with `pgsched keys`)
    pgsched/api/errors.py       every error as a JSON response, in one place
    pgsched/api/contract.py     strict bodies and query parameters, as the OpenAPI document says
    pgsched/api/store.py        tenant-aware enqueue, workers and counts
    pgsched/api/metrics.py      the Prometheus text document
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgsched.api.settings import ApiSettings

if TYPE_CHECKING:
    from pgsched.api.app import create_app

__all__ = ["ApiSettings", "create_app"]


def __getattr__(name: str) -> Any:
    # Litestar loads on first use of create_app, not with pgsched.api.keys (which `pgsched keys` imports).
    if name == "create_app":
        from pgsched.api.app import create_app

        return create_app
    raise AttributeError(f"module 'pgsched.api' has no attribute {name!r}")

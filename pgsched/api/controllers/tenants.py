"""``/tenants``: each tenant's quotas (max_queued, runs_per_day), and ``/usage``: its usage per
UTC day, the figures a bill is made from.

A key without a tenant and with scope admin reads and changes every tenant's quotas and reads
all usage; a tenant key reads its own tenant's quotas and usage, nothing else.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

from litestar import Controller, Request, get, patch
from litestar.exceptions import PermissionDeniedException
from litestar.params import JSONBody, PathParameter, QueryParameter
from msgspec import UNSET

from pgsched import quotas
from pgsched.api.deps import Pool, Tenant
from pgsched.api.schemas import TenantList, TenantOut, TenantPatch, UsageDay, UsageList, error_responses, from_row

TenantName = Annotated[str, PathParameter(description="The tenant")]
# Every tenant's quotas, or changing one: keys without a tenant, scope admin.
ADMIN_ONLY = {"cluster_wide": True, "scope": "admin"}


def _own_only(tenant: str | None, name: str | None) -> None:
    """A tenant key names no other tenant."""
    if tenant is not None and name is not None and name != tenant:
        raise PermissionDeniedException(f"this API key belongs to tenant {tenant!r}: it reads that tenant only")


def _is_admin(request: Request[Any, Any, Any]) -> bool:
    """A key of scope admin (or no authentication configured)."""
    key = request.scope.get("auth")
    return key is None or key.allows("admin")


class TenantController(Controller):
    path = "/tenants"
    tags = ["tenants"]

    @get("/", operation_id="listTenants", sync_to_thread=True, opt=ADMIN_ONLY, responses=error_responses())
    def list_tenants(self, pool: Pool) -> TenantList:
        """Every tenant with quotas set: its quotas, queued runs and runs created today."""
        with pool.connection() as conn:
            rows = quotas.list_tenants(conn)
        return TenantList(items=[from_row(TenantOut, row) for row in rows])

    @get("/{name:str}", operation_id="getTenant", sync_to_thread=True, responses=error_responses(400, 422))
    def get_tenant(self, name: TenantName, pool: Pool, tenant: Tenant) -> TenantOut:
        """A tenant's quotas (a tenant never set: none); a tenant key reads its own only."""
        _own_only(tenant, name)
        with pool.connection() as conn:
            return from_row(TenantOut, quotas.get_tenant(conn, name))

    @patch(
        "/{name:str}",
        operation_id="updateTenant",
        sync_to_thread=True,
        opt=ADMIN_ONLY,
        responses=error_responses(400, 422),
    )
    def update_tenant(self, name: TenantName, data: JSONBody[TenantPatch], pool: Pool) -> TenantOut:
        """Change some quotas of a tenant; the others stay. The next enqueue meets them."""
        changes = {key: getattr(data, key) for key in quotas.QUOTAS if getattr(data, key) is not UNSET}
        with pool.connection() as conn:
            return from_row(TenantOut, quotas.set_tenant(conn, name, **changes))


class UsageController(Controller):
    path = "/usage"
    tags = ["tenants"]

    @get("/", operation_id="getUsage", sync_to_thread=True, responses=error_responses(400, 422))
    def usage(
        self,
        request: Request[Any, Any, Any],
        pool: Pool,
        tenant: Tenant,
        for_tenant: Annotated[
            Optional[str], QueryParameter(name="tenant", description="One tenant (a tenant key: its own)")
        ] = None,
        since: Annotated[
            Optional[str],
            QueryParameter(name="since", description="First UTC day, YYYY-MM-DD (default: this month's 1st)"),
        ] = None,
    ) -> UsageList:
        """Usage per tenant and UTC day: runs created, started, succeeded, failed, cancelled and
        task seconds (an admin key: every tenant; a tenant key: its own)."""
        _own_only(tenant, for_tenant)
        if tenant is None and not _is_admin(request):
            raise PermissionDeniedException("usage of every tenant needs a key of scope admin")
        first_day = quotas.parse_since(since)
        with pool.connection() as conn:
            rows = quotas.list_usage(conn, tenant=tenant or for_tenant, since=first_day)
        return UsageList(items=[from_row(UsageDay, row) for row in rows])

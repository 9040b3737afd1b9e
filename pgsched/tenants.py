"""Tenant names: what an API key's tenant, and so a run's or a job's, may be called. The same
rule is pgsched.valid_tenant() in SQL (schema 0009), for rows written by plain SQL."""

from __future__ import annotations

import re
from typing import Any

from pgsched.errors import InvalidInput

TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$"
_TENANT = re.compile(TENANT_PATTERN)


def check_tenant(tenant: Any) -> str | None:
    """``tenant`` if it is None or a valid tenant name; else InvalidInput naming the rule."""
    if tenant is not None and (not isinstance(tenant, str) or not _TENANT.match(tenant)):
        raise InvalidInput(
            f"tenant {tenant!r} is not a valid name: 1-63 characters of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return tenant

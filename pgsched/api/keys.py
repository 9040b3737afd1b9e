"""API keys (``pgsched.api_keys``): create, list, revoke, and authenticate a presented key.

A key is ``pgs_`` plus 43 random URL-safe characters (256 bits). Only its SHA-256 digest is
stored, with its first characters so people can tell keys apart; the key itself is returned
once, by :func:`create_key`. The CLI's ``keys`` commands and the API's authentication call
these functions.

Scopes nest: ``read`` (GET requests) < ``write`` (enqueue, cancel, retry, job changes) <
``admin`` (everything). A key with a tenant sees and changes only that tenant's rows.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import psycopg
from psycopg.rows import dict_row

from pgsched.errors import InvalidInput, PgschedError
from pgsched.sql import queries
from pgsched.tenants import check_tenant

Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
KEY_PREFIX = "pgs_"
SHOWN_CHARACTERS = 12  # "pgs_" and 8 random characters: enough to tell keys apart, useless to guess


class ApiKeyNotFound(PgschedError):
    """No API key with that id."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Who is calling: a live key's id, scope and tenant (None: every tenant)."""

    id: int
    scope: Scope
    tenant: str | None

    def allows(self, needed: Scope) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(needed)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def check_scope(scope: Any) -> Scope:
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
    return cast(Scope, scope)


def create_key(
    conn: psycopg.Connection, scope: Scope, *, tenant: str | None = None, name: str = ""
) -> tuple[str, dict[str, Any]]:
    """A new key: ``(key, row)``. The key is shown here and never again."""
    check_scope(scope)
    check_tenant(tenant)
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidInput(f"name must be a string of at most 200 characters, got {name!r}")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            queries["api_key_insert"],
            {"name": name, "key_hash": digest(key), "prefix": key[:SHOWN_CHARACTERS], "scope": scope, "tenant": tenant},
        ).fetchone()
    assert row is not None
    return key, row


def list_keys(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every key, revoked ones included, oldest first (never the key itself)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(queries["api_key_list"]).fetchall()


def revoke_key(conn: psycopg.Connection, key_id: int) -> dict[str, Any]:
    """Revoke a key (idempotent); requests with it are refused from then on."""
    if isinstance(key_id, bool) or not isinstance(key_id, int) or not 0 < key_id < 2**63:
        raise InvalidInput(f"a key id is a positive integer, got {key_id!r}")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(queries["api_key_revoke"], {"id": key_id}).fetchone()
    if row is None:
        raise ApiKeyNotFound(f"no API key with id {key_id}")
    return row


def authenticate(conn: psycopg.Connection, key: str) -> ApiKey | None:
    """The live key ``key`` is, or None (unknown, malformed or revoked)."""
    if not key.startswith(KEY_PREFIX) or len(key) > 100:
        return None
    row = conn.execute(queries["api_key_authenticate"], {"key_hash": digest(key)}).fetchone()
    return None if row is None else ApiKey(id=row[0], scope=row[1], tenant=row[2])

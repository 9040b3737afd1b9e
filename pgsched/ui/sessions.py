"""Dashboard sessions and one-time sign-in links, kept in PostgreSQL (``pgsched.ui_sessions``,
``pgsched.ui_sign_in_tokens``) so every API process honours them and revoking a key ends them.

The browser holds an opaque 256-bit random token; the database holds only its SHA-256, looked
up like an API key's digest. The token is not signed: it carries nothing to trust, and an
unknown token matches no row, so there is no secret to share between API processes. The CSRF
token of a session is derived from its token (an HMAC), so it needs no column and no
lookup, and no one without the session token can compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

import psycopg

from pgsched.api.keys import ApiKey, digest
from pgsched.sql import queries

SESSION_TTL_S = 8 * 3600.0  # a working day; then sign in again
SIGN_IN_TTL_S = 24 * 3600.0  # the `pgsched dev` link: valid for its session's day, used once


def new_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(session_token: str) -> str:
    """The CSRF token of the session whose token is ``session_token``."""
    return hmac.new(session_token.encode(), b"pgsched-ui-csrf", hashlib.sha256).hexdigest()


def start_session(conn: psycopg.Connection, key_id: int, *, ttl_s: float = SESSION_TTL_S) -> str:
    """A new session for the key ``key_id``: its token (for the cookie), shown here only."""
    token = new_token()
    conn.execute(
        queries["ui_session_insert"], {"token_hash": digest(token), "key_id": key_id, "ttl_s": ttl_s, "now": None}
    )
    return token


def session_key(conn: psycopg.Connection, token: str, *, now: datetime | None = None) -> ApiKey | None:
    """The live key a session token stands for; None when the session is unknown, expired or
    ended, or its key revoked."""
    if len(token) > 100:
        return None
    row = conn.execute(queries["ui_session_key"], {"token_hash": digest(token), "now": now}).fetchone()
    return None if row is None else ApiKey(id=row[0], scope=row[1], tenant=row[2])


def end_session(conn: psycopg.Connection, token: str) -> None:
    conn.execute(queries["ui_session_delete"], {"token_hash": digest(token)})


def create_sign_in_token(conn: psycopg.Connection, key_id: int, *, ttl_s: float = SIGN_IN_TTL_S) -> str:
    """A one-time sign-in token for the key ``key_id`` (for a link to ``/ui/sign-in/<token>``)."""
    token = new_token()
    conn.execute(queries["ui_sign_in_insert"], {"token_hash": digest(token), "key_id": key_id, "ttl_s": ttl_s})
    return token


def consume_sign_in_token(conn: psycopg.Connection, token: str) -> int | None:
    """The key id a sign-in token stands for, using the token up; None when it is unknown,
    used, expired, or its key revoked."""
    if len(token) > 100:
        return None
    row = conn.execute(queries["ui_sign_in_consume"], {"token_hash": digest(token)}).fetchone()
    return None if row is None else int(row[0])

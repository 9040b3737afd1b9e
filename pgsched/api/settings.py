"""What an API process is configured with: one frozen object, built in code or from the environment.

The API keeps no state of its own beyond its connection pool and a few seconds of key cache,
so any number of processes with the same settings can serve behind a load balancer.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass

from pgsched.errors import ConfigError

_RATE_LIMIT = re.compile(r"^\s*(\d{1,12})\s*/\s*(\d{1,12})\s*$")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class RateLimit:
    """At most ``requests`` requests per ``window_s`` seconds, per API key (per client address
    without authentication)."""

    requests: int
    window_s: int

    def __post_init__(self) -> None:
        if not 1 <= self.requests <= 10**9 or not 1 <= self.window_s <= 86_400:
            raise ConfigError(
                f"a rate limit allows 1 to 10^9 requests per 1 to 86400 seconds, got {self.requests}/{self.window_s}"
            )

    @classmethod
    def parse(cls, text: str, *, source: str = "the rate limit") -> RateLimit:
        """``"600/60"``: 600 requests per 60 seconds. Errors name ``source`` (an option or variable)."""
        match = _RATE_LIMIT.match(text)
        if match is None:
            raise ConfigError(
                f"{source} must be REQUESTS/SECONDS, e.g. '600/60' for 600 requests a minute; got {text!r}"
            )
        try:
            return cls(int(match[1]), int(match[2]))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.requests}/{self.window_s}"


@dataclass(frozen=True, kw_only=True)
class ApiSettings:
    """Settings of one API process.

    ``auth=False`` serves every request without a key (local development only). A revoked key
    keeps working for at most ``key_cache_s`` seconds in a process that has just seen it.
    """

    dsn: str
    auth: bool = True
    pool_min_size: int = 1
    pool_max_size: int = 10
    # How long a request waits for a free connection before it gets a 503.
    pool_timeout_s: float = 10.0
    key_cache_s: float = 5.0
    # 10,000 runs of ~1.5 kB of args each fit; larger bodies get a 413.
    max_body_bytes: int = 16 * 1024 * 1024
    max_batch: int = 10_000
    # Optional Redis (redis://, rediss:// or unix:// URL): a short-lived cache of reads and rate
    # limit counters shared by every API process. None: PostgreSQL and in-process counters only.
    redis_url: str | None = None
    # A Redis call gives up after redis_timeout_s; after a failure the API leaves Redis alone for
    # redis_retry_s, then tries one call (see pgsched.api.redis_tier).
    redis_timeout_s: float = 0.25
    redis_retry_s: float = 5.0
    # Requests per API key per window (per client address without auth); None: no limit.
    rate_limit: RateLimit | None = None
    # Requests with an unknown or revoked key per client address per window. Past it the address
    # gets 429 without a database lookup, so a flood of made-up keys cannot load PostgreSQL.
    auth_failure_limit: RateLimit = RateLimit(30, 60)
    # A streaming replica for the lists and statistics (pgsched.api.replica); None: the primary.
    # Past read_max_lag_s seconds behind, or down, reads go to the primary.
    read_dsn: str | None = None
    read_max_lag_s: float = 5.0
    # A line per request on standard output, uvicorn's access line (pgsched.api.access): `pgsched
    # api` turns it on at --log-level info or debug, in place of uvicorn's own.
    access_log: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigError("the API needs a database DSN")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ConfigError(
                f"pool sizes must satisfy 0 <= min <= max, max >= 1; got {self.pool_min_size}..{self.pool_max_size}"
            )
        for name in ("pool_timeout_s", "key_cache_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ConfigError("max_body_bytes must be >= 1024 and max_batch >= 1")
        self._check_redis()
        if self.read_dsn is not None and (not isinstance(self.read_dsn, str) or not self.read_dsn.strip()):
            raise ConfigError("the read replica's DSN (PGSCHED_READ_DSN, --read-dsn) is empty")
        if not self.read_max_lag_s > 0:
            raise ConfigError(
                f"read_max_lag_s (PGSCHED_READ_MAX_LAG_S, --read-max-lag-s) must be > 0, got {self.read_max_lag_s!r}"
            )

    def _check_redis(self) -> None:
        if self.redis_url is not None:
            if not isinstance(self.redis_url, str) or not self.redis_url.startswith(_REDIS_SCHEMES):
                raise ConfigError(
                    f"the Redis URL (PGSCHED_REDIS_URL, --redis-url) must start with redis://, "
                    f"rediss:// or unix://, got {self.redis_url!r}"
                )
            if importlib.util.find_spec("redis") is None:
                raise ConfigError(
                    "a Redis URL is set but the redis package is not installed: pip install 'pgsched[redis]'"
                )
        for name in ("redis_timeout_s", "redis_retry_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls) -> ApiSettings:
        """Settings from ``PGSCHED_DSN`` and ``PGSCHED_API_*`` variables (how `pgsched api`
        hands its options to each uvicorn worker process)."""
        from pgsched.config import resolve_dsn

        env = os.environ
        try:
            return cls(
                dsn=resolve_dsn(None),
                auth=env.get("PGSCHED_API_AUTH", "1") not in ("0", "false", "no", "off"),
                pool_max_size=int(env.get("PGSCHED_API_POOL_MAX_SIZE", cls.pool_max_size)),
                key_cache_s=float(env.get("PGSCHED_API_KEY_CACHE_S", cls.key_cache_s)),
                max_body_bytes=int(env.get("PGSCHED_API_MAX_BODY_BYTES", cls.max_body_bytes)),
                redis_url=env.get("PGSCHED_REDIS_URL") or None,
                rate_limit=RateLimit.parse(env["PGSCHED_API_RATE_LIMIT"], source="PGSCHED_API_RATE_LIMIT")
                if env.get("PGSCHED_API_RATE_LIMIT")
                else None,
                auth_failure_limit=RateLimit.parse(
                    env.get("PGSCHED_API_AUTH_FAILURE_LIMIT", str(cls.auth_failure_limit)),
                    source="PGSCHED_API_AUTH_FAILURE_LIMIT",
                ),
                read_dsn=env.get("PGSCHED_READ_DSN") or None,
                read_max_lag_s=float(env.get("PGSCHED_READ_MAX_LAG_S", cls.read_max_lag_s)),
                access_log=env.get("PGSCHED_API_ACCESS_LOG", "0") not in ("0", "false", "no", "off"),
            )
        except ValueError as exc:
            raise ConfigError(f"a PGSCHED_API_* variable is not a number: {exc}") from None

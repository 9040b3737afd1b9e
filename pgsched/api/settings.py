"""What an API process is configured with: one frozen object, built in code or from the environment.

The API keeps no state of its own beyond its connection pool and a few seconds of key cache,
so any number of processes with the same settings can serve behind a load balancer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pgsched.errors import ConfigError


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

    def __post_init__(self) -> None:
        if not isinstance(self.dsn, str) or not self.dsn.strip():
            raise ConfigError("the API needs a database DSN")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise ConfigError(f"pool sizes must satisfy 0 <= min <= max, max >= 1; got "
                              f"{self.pool_min_size}..{self.pool_max_size}")
        for name in ("pool_timeout_s", "key_cache_s"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.max_body_bytes < 1024 or self.max_batch < 1:
            raise ConfigError("max_body_bytes must be >= 1024 and max_batch >= 1")

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
            )
        except ValueError as exc:
            raise ConfigError(f"a PGSCHED_API_* variable is not a number: {exc}") from None

"""Per-caller rate limiting: at most ``RateLimit.requests`` per ``RateLimit.window_s`` seconds for
each API key (each client address when authentication is off), counted in fixed windows aligned
on the epoch, so every process agrees on where a window starts.

With Redis the count is shared by every API process (``INCR`` + ``EXPIRE`` on one key per caller
and window); without Redis, or while it is down, each process counts on its own, so N processes
let up to N times the limit through. A fixed window lets a caller spend up to twice the limit
across a window boundary: the price of one round trip per request.

Over the limit: 429 with ``Retry-After`` (the seconds until the window ends) and the usual JSON
error body. ``/health`` and ``/ready`` are never limited. Requests refused with a 401 never reach
this limiter: authentication runs first, and counts them on a limiter of its own, per client
address (``ApiSettings.auth_failure_limit``; see pgsched.api.auth).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Callable

from litestar import Litestar
from litestar.enums import ScopeType
from litestar.exceptions import TooManyRequestsException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from pgsched.api.keys import ApiKey
from pgsched.api.redis_tier import KEY_PREFIX, RedisTier, RedisUnavailable
from pgsched.api.settings import RateLimit

# Forget the callers of past windows once this many are counted (keeps memory bounded).
_MAX_MEMORY_CALLERS = 100_000


class MemoryCounters:
    """Requests per caller in the current window, in this process. Used from the event loop
    only (the middleware's thread), so it needs no lock."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}  # caller: (window, requests)

    def count(self, caller: str, window: int) -> int:
        seen_window, requests = self._counts.get(caller, (window, 0))
        return requests if seen_window == window else 0

    def hit(self, caller: str, window: int) -> int:
        requests = self.count(caller, window) + 1
        if len(self._counts) >= _MAX_MEMORY_CALLERS and caller not in self._counts:
            self._counts = {key: value for key, value in self._counts.items() if value[0] == window}
            if len(self._counts) >= _MAX_MEMORY_CALLERS:
                # All of them in this window: forget the earliest tenth (their counts restart),
                # so memory stays bounded and the next callers do not each pay this sweep.
                for key in list(itertools.islice(self._counts, _MAX_MEMORY_CALLERS // 10)):
                    del self._counts[key]
        self._counts[caller] = (window, requests)
        return requests


class RateLimiter:
    """Counts requests per caller and says when one is over the limit."""

    def __init__(self, limit: RateLimit, redis: RedisTier | None, *, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.redis = redis
        self._memory = MemoryCounters()
        self.clock = clock  # wall-clock time: windows must line up across processes and hosts

    async def hit(self, caller: str) -> int | None:
        """Count one request: None if it is allowed, else the seconds until the window ends."""
        return await self._over(caller, count=True)

    async def exceeded(self, caller: str) -> int | None:
        """Whether ``caller`` is over the limit already, without counting a request: None if
        not, else the seconds until the window ends."""
        return await self._over(caller, count=False)

    async def _over(self, caller: str, *, count: bool) -> int | None:
        now = self.clock()
        window = int(now // self.limit.window_s)
        seen = await self._requests(caller, window, count)
        # Counted, this request is one of them and may be the last allowed; peeked, none is left.
        if seen < self.limit.requests + int(count):
            return None
        return max(1, math.ceil((window + 1) * self.limit.window_s - now))

    async def _requests(self, caller: str, window: int, count: bool) -> int:
        """The caller's requests in this window, after counting one more when ``count``."""
        if self.redis is not None:
            try:
                return await self.redis.acall(lambda client: self._redis_requests(client, caller, window, count))
            except RedisUnavailable:
                pass  # the breaker logged it: count in this process until Redis is back
        return self._memory.hit(caller, window) if count else self._memory.count(caller, window)

    async def _redis_requests(self, client: Any, caller: str, window: int, count: bool) -> int:
        key = f"{KEY_PREFIX}rate:{caller}:{window}"
        if not count:
            return int(await client.get(key) or 0)
        async with client.pipeline(transaction=True) as pipe:
            # The key outlives its window by a second: clocks of different hosts disagree a little.
            pipe.incr(key).expire(key, self.limit.window_s + 1)
            requests, _ = await pipe.execute()
        return int(requests)


def caller_of(scope: Scope) -> str:
    """Whom a request counts against: its API key, else its client address."""
    key = scope.get("auth")
    if isinstance(key, ApiKey):
        return f"key:{key.id}"
    client = scope.get("client")
    return f"addr:{client[0] if client else 'unknown'}"


class RateLimitMiddleware(ASGIMiddleware):
    """Answers 429 to callers over the limit; runs after authentication (it counts per key)."""

    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = ("^/health$", "^/ready$")

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        limiter: RateLimiter = Litestar.from_scope(scope).state.rate_limiter
        retry_after = await limiter.hit(caller_of(scope))
        if retry_after is not None:
            raise too_many_requests(limiter, scope, retry_after)
        await next_app(scope, receive, send)


def too_many_requests(limiter: RateLimiter, scope: Scope, retry_after: int) -> TooManyRequestsException:
    """The 429 of a caller over the limit (here and on the fast POST /runs: pgsched.api.fast)."""
    limit = limiter.limit
    return TooManyRequestsException(
        f"rate limit exceeded: at most {limit.requests} requests per {limit.window_s}s for this "
        f"{'API key' if isinstance(scope.get('auth'), ApiKey) else 'client address'}; "
        f"retry in {retry_after}s",
        headers={"Retry-After": str(retry_after)},
    )

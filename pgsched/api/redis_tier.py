"""The API's optional Redis: one process's connections to it (a sync client for handlers, which
run in threads, and an asyncio client for middleware, which runs in the event loop) behind one
circuit breaker.

Redis is never needed for a correct answer: the cache falls back to PostgreSQL and the rate
limiter to in-process counters. The breaker keeps a dead or hanging Redis from costing every
request a socket timeout:

    closed ──a call fails──▶ open ──retry_s later, one trial call──▶ closed (it succeeded)
                               ▲                                  │
                               └─────────the trial failed─────────┘

While open, calls are refused at once (:class:`RedisUnavailable`) without touching the network.
Opening logs one warning and closing one info line, however many requests pass meanwhile.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis
    import redis.asyncio

logger = logging.getLogger("pgsched.api")

T = TypeVar("T")
# Every key the API writes starts with this; v1 is the shape of the cached values.
KEY_PREFIX = "pgsched:v1:"


class RedisUnavailable(Exception):
    """Redis is down, too slow, or the breaker is open: use the fallback."""


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class Pass(enum.Enum):
    """What :meth:`CircuitBreaker.allow` granted: an ordinary call, or the trial of an open breaker."""

    CALL = "call"
    TRIAL = "trial"


class CircuitBreaker:
    """Whether to call Redis now: thread-safe, shared by the sync and the asyncio client."""

    def __init__(self, name: str, *, retry_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._open_until: float | None = None  # None: closed
        self._trial_running = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> Pass | None:
        """A pass to make the call (when open and due, the one trial's), or None: do not."""
        if self._open_until is None:  # the common case, without the lock
            return Pass.CALL
        with self._lock:
            if self._open_until is None:
                return Pass.CALL
            if self._trial_running or self._clock() < self._open_until:
                return None
            self._trial_running = True
            return Pass.TRIAL

    def succeeded(self, granted: Pass) -> None:
        # Only the trial closes the breaker: a call that began before it opened and succeeds
        # late says nothing about Redis now.
        if granted is not Pass.TRIAL:
            return
        with self._lock:
            if not self._trial_running:  # a failure of another call reopened it meanwhile
                return
            self._open_until, self._trial_running = None, False
        logger.info("Redis at %s answers again: using it again", self.name)

    def abandoned(self, granted: Pass) -> None:
        """The trial ended without an answer either way (cancelled): let another caller make it."""
        if granted is Pass.TRIAL:
            with self._lock:
                self._trial_running = False

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            was_closed = self._open_until is None
            self._open_until, self._trial_running = self._clock() + self.retry_s, False
        if was_closed:
            logger.warning(
                "Redis at %s failed (%s: %s): serving without it (reads from PostgreSQL, rate limits "
                "counted in this process); trying again every %gs",
                self.name,
                type(exc).__name__,
                exc,
                self.retry_s,
            )


class RedisTier:
    """The process's Redis clients, called through :attr:`breaker`."""

    def __init__(self, url: str, *, timeout_s: float, retry_s: float) -> None:
        import redis
        import redis.asyncio
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No client-side retries and short timeouts: the breaker decides when to try again.
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "client_name": "pgsched-api",
        }
        self.breaker = CircuitBreaker(redacted(url), retry_s=retry_s)
        self._errors = (redis.RedisError, OSError)
        self._sync: redis.Redis = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
        self._async: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0), **options
        )

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """``operation(client)``, or :class:`RedisUnavailable` (breaker open, or the call failed)."""
        with self._through_breaker():
            return operation(self._sync)

    async def acall(self, operation: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
        """The asyncio twin of :meth:`call`, for code running in the event loop."""
        with self._through_breaker():
            return await operation(self._async)

    @contextmanager
    def _through_breaker(self) -> Iterator[None]:
        granted = self.breaker.allow()
        if granted is None:
            raise RedisUnavailable(f"Redis at {self.breaker.name} is unavailable")
        try:
            yield
        except self._errors as exc:
            self.breaker.failed(exc)
            raise RedisUnavailable(str(exc)) from exc
        except BaseException:
            self.breaker.abandoned(granted)
            raise
        self.breaker.succeeded(granted)

    async def announce(self) -> None:
        """Ping once at start: log where Redis is, or (through the breaker) that it is down."""
        try:
            await self.acall(lambda client: client.ping())
        except RedisUnavailable:
            return
        logger.info("Redis at %s: caching reads there (and counting rate limits, if set)", self.breaker.name)

    async def aclose(self) -> None:
        self._sync.close()
        await self._async.aclose()

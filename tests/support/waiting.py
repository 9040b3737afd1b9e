"""The suite's one deadline loop: poll a condition until it holds, or fail naming what was
awaited and the last value seen. Tests wait on events this way, never on a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

T = TypeVar("T")
POLL_S = 0.03  # short against the waits (tenths of a second up to a minute), cheap for the database


def _timed_out(what: str, timeout: float, last: object, diagnose: Callable[[], str] | None) -> AssertionError:
    shown = repr(last)
    if len(shown) > 500:
        shown = shown[:500] + "..."
    message = f"timed out after {timeout:g}s waiting for {what}; last seen: {shown}"
    return AssertionError(f"{message}\n{diagnose()}" if diagnose is not None else message)


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    *,
    poll: float = POLL_S,
    check: Callable[[], None] | None = None,
    diagnose: Callable[[], str] | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``condition`` until it returns something truthy, and return that.

    ``check`` runs after every miss and may raise at once (a process the test needs has died);
    an exception of a type in ``ignoring`` counts as a miss (a server still starting). At the
    deadline: AssertionError naming ``what`` and the last value seen, plus ``diagnose()``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            last: object = condition()
        except ignoring as error:
            last = error
        else:
            if last:
                return last  # type: ignore[return-value]
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last, diagnose)
        time.sleep(poll)


async def wait_until_async(
    condition: Callable[[], Awaitable[T]],
    timeout: float,
    what: str,
    *,
    poll: float = POLL_S,
    check: Callable[[], None] | None = None,
) -> T:
    """``wait_until`` for a condition that is awaited, sleeping without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        last = await condition()
        if last:
            return last
        if check is not None:
            check()
        if time.monotonic() > deadline:
            raise _timed_out(what, timeout, last, None)
        await asyncio.sleep(poll)

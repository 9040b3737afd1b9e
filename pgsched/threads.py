"""The worker's threads for sync tasks.

Like ``loop.run_in_executor`` on a ThreadPoolExecutor, with one difference that matters at
thousands of short runs a second: finished calls reach the event loop in batches. The
executor wakes the loop once per call (``call_soon_threadsafe``: a write to its self-pipe, a
wake-up, a callback); here a thread wakes it only when no delivery is pending already, and
one callback sets every result that has piled up since. Threads start on demand, up to
``max_threads``, and stay for the next call.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

# A finished call: its future, and (True, result) or (False, exception).
_Finished = tuple["asyncio.Future[Any]", tuple[bool, Any]]


class TaskThreads:
    def __init__(self, max_threads: int, name_prefix: str = "pgsched-task") -> None:
        self._max_threads = max_threads
        self._name_prefix = name_prefix
        self._loop: asyncio.AbstractEventLoop | None = None
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        # Guards the three below. The idle count was a threading.Semaphore, whose acquire and
        # release are Python (a Condition around a lock): ~2 µs of a sync no-op run's CPU.
        self._lock = threading.Lock()
        self._idle = 0  # threads that have finished a call and not been counted on since
        self._finished: list[_Finished] = []
        self._delivery_pending = False
        self._closed = False

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in one of the threads; its result or its exception here. Cancelling the
        caller does not stop the thread (nothing can): its result is dropped."""
        if self._closed:
            raise RuntimeError("the task threads are shut down")
        self._loop = self._loop or asyncio.get_running_loop()
        future = self._loop.create_future()
        self._calls.put((fn, future))
        self._start_thread_unless_one_is_idle()
        return await future

    def shutdown(self) -> None:
        """Stop the idle threads; a thread still in a call ends after it (nobody waits for it)."""
        self._closed = True
        for _ in self._threads:
            self._calls.put(None)

    def _start_thread_unless_one_is_idle(self) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1
                return
        if len(self._threads) >= self._max_threads:
            return
        thread = threading.Thread(target=self._serve, name=f"{self._name_prefix}-{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        # A new thread was started for a call waiting in the queue: it counts as idle only
        # once it has finished a call (counted earlier, the next call would wait for it).
        while True:
            call = self._calls.get()
            if call is None:
                return
            fn, future = call
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - the caller decides; SystemExit must not end this thread silently
                outcome = (False, exc)
            del call, fn  # no reference to the task while idle
            self._finish(future, outcome)
            del future, outcome

    def _finish(self, future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
        """Hand the outcome to the loop, and count this thread idle (it takes the next call next)."""
        with self._lock:
            self._idle += 1
            self._finished.append((future, outcome))
            if self._delivery_pending:
                return
            self._delivery_pending = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: the worker has gone, nobody waits for this
            pass

    def _deliver(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
            self._delivery_pending = False
        for future, (ok, value) in finished:
            if future.cancelled():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

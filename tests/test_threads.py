"""The worker's threads for sync tasks (pgsched.threads): results and exceptions reach the
awaiting coroutine, calls run side by side up to the thread limit, a cancelled caller does
not stop or break anything, and idle threads end at shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pgsched.threads import TaskThreads
from tests.support.waiting import wait_until


def test_results_and_exceptions_reach_the_caller_from_another_thread() -> None:
    threads = TaskThreads(max_threads=4)

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> list[object]:
        outcomes: list[object] = [await threads.run(threading.current_thread)]
        with pytest.raises(ValueError, match="boom"):
            await threads.run(boom)
        with pytest.raises(SystemExit):  # a task's sys.exit() is the task's error, not the thread's end
            await threads.run(lambda: exec("raise SystemExit(3)"))
        outcomes.append(await asyncio.gather(*(threads.run(lambda n=n: n * n) for n in range(200))))
        return outcomes

    ran_in, squares = asyncio.run(main())
    assert ran_in is not threading.main_thread() and ran_in.name.startswith("pgsched-task")
    assert squares == [n * n for n in range(200)]
    threads.shutdown()


def test_calls_run_side_by_side_up_to_the_limit_and_queue_beyond_it() -> None:
    threads = TaskThreads(max_threads=3)
    lock = threading.Lock()
    running = most = 0

    def hold() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(threads.run(hold) for _ in range(12)))

    asyncio.run(main())
    assert most == 3
    threads.shutdown()


def test_a_cancelled_caller_leaves_the_thread_to_finish_and_the_pool_usable() -> None:
    threads = TaskThreads(max_threads=1)
    started, release = threading.Event(), threading.Event()

    def block() -> None:
        started.set()
        release.wait()

    async def main() -> int:
        blocked = asyncio.ensure_future(threads.run(block))
        assert await asyncio.to_thread(started.wait, 10), "the call never started in its thread"
        blocked.cancel()
        release.set()  # the thread ends its call; the result has nobody to go to
        with pytest.raises(asyncio.CancelledError):
            await blocked
        return await threads.run(lambda: 42)  # the same single thread serves the next call

    assert asyncio.run(main()) == 42
    threads.shutdown()


def test_shutdown_ends_the_idle_threads_and_refuses_new_calls() -> None:
    threads = TaskThreads(max_threads=2)

    async def main() -> None:
        await asyncio.gather(threads.run(lambda: time.sleep(0.02)), threads.run(lambda: time.sleep(0.02)))
        threads.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await threads.run(lambda: None)

    asyncio.run(main())
    wait_until(lambda: not any(t.is_alive() for t in threads._threads), 5, "the idle task threads to end", poll=0.01)

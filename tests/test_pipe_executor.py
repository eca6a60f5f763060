"""service.pipe_executor: one worker process fed through a pipe the event loop watches.

The calls are standard-library functions, so each spawned worker starts in a fraction of a
second (it imports no torch).
"""

from __future__ import annotations

import asyncio
import math
import operator
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

from service.pipe_executor import PipeExecutor


def test_results_errors_and_order() -> None:
    async def scenario() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        # Sent before the worker is ready (it sleeps 0.3 s first): they wait, then run in order.
        executor = PipeExecutor(time.sleep, (0.3,), name="test-worker")
        try:
            calls = [
                loop.run_in_executor(executor, operator.add, 2, 3),
                loop.run_in_executor(executor, math.sqrt, -1.0),
                loop.run_in_executor(executor, operator.mul, [1], 3),
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            pid = await loop.run_in_executor(executor, os.getpid)
        finally:
            executor.shutdown()
        return results, pid

    results, pid = asyncio.run(scenario())
    assert results[0] == 5 and results[2] == [1, 1, 1]
    assert isinstance(results[1], ValueError) and "math domain error" in str(results[1])
    assert pid != os.getpid()


def test_a_dead_worker_fails_its_calls_and_later_ones() -> None:
    async def scenario() -> tuple[BaseException | None, BaseException | None]:
        loop = asyncio.get_running_loop()
        executor = PipeExecutor(time.sleep, (0.0,), name="test-worker")
        try:
            pid = await loop.run_in_executor(executor, os.getpid)
            running = loop.run_in_executor(executor, time.sleep, 30.0)
            await asyncio.sleep(0.2)
            os.kill(pid, signal.SIGKILL)
            lost = None
            try:
                await asyncio.wait_for(running, 10)
            except BrokenProcessPool as exc:
                lost = exc
            later = None
            try:
                executor.submit(operator.add, 1, 1)
            except BrokenProcessPool as exc:
                later = exc
            return lost, later
        finally:
            executor.shutdown()

    lost, later = asyncio.run(scenario())
    assert isinstance(lost, BrokenProcessPool) and "exited" in str(lost)
    assert isinstance(later, BrokenProcessPool)


def test_an_initializer_that_fails_is_reported() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        executor = PipeExecutor(math.sqrt, (-1.0,), name="test-worker")
        try:
            await asyncio.wait_for(loop.run_in_executor(executor, operator.add, 1, 1), 30)
        finally:
            executor.shutdown()

    with pytest.raises(BrokenProcessPool, match="failed to start: ValueError: math domain"):
        asyncio.run(scenario())


def test_shutdown_finishes_what_was_sent() -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        executor = PipeExecutor(time.sleep, (0.0,), name="test-worker")
        await loop.run_in_executor(executor, os.getpid)
        call = loop.run_in_executor(executor, operator.add, 1, 2)
        executor.shutdown(wait=True)
        return list(await asyncio.gather(call, return_exceptions=True))

    # A call already sent is answered before the worker stops, as a thread pool's would be.
    assert asyncio.run(scenario()) == [3]

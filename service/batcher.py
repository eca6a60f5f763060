"""Micro-batching: requests that arrive together are adapted together in one vmapped call.

One collector task on the event loop takes the first waiting job, gives others ``max_wait`` to
join it if none are waiting, and hands up to ``max_size`` of them to a single worker (a thread,
or a process: see service/worker.py). One worker means torch calls never overlap (they would
only fight over the same cores) and the event loop stays free to parse and answer other
requests meanwhile. While the worker is busy new jobs queue up, so under load batches fill by
themselves and the wait only matters when the server is idle.

With ``max_size=1`` the same path processes every request alone.

Overload is refused early rather than queued without end: at most ``max_queue`` jobs wait or
run at once (more raise :class:`QueueFullError` at once, which the service answers with 503 and
``Retry-After``). A job carries a deadline; the collector drops jobs whose deadline has passed
or whose caller stopped waiting (a cancelled future: the client left) before computing them,
so abandoned work costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")
T = TypeVar("T")


class BatcherClosedError(RuntimeError):
    """The service is shutting down; the job was not processed."""


class QueueFullError(RuntimeError):
    """``max_queue`` jobs are already waiting or running; the job was refused unprocessed."""


class DeadlineError(RuntimeError):
    """The job's deadline passed before its result was ready."""


class WorkerLostError(RuntimeError):
    """The worker process died (killed, out of memory) while computing the job's batch; a new
    one was started for the jobs after it."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(DeadlineError("the request did not finish before its deadline"))


@dataclass(frozen=True)
class _Entry(Generic[J, R]):
    job: J
    future: asyncio.Future[R]
    deadline: float | None


class MicroBatcher(Generic[J, R]):
    def __init__(
        self,
        process: Callable[[Sequence[J]], list[R]],
        max_size: int = 32,
        max_wait_s: float = 0.002,
        thread_name: str = "melu-torch",
        max_queue: int | None = None,
        on_idle: Callable[[], None] | None = None,
        executor: Callable[[], Executor] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        if max_queue is not None and max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._process = process
        self.max_size = max_size
        self.max_wait_s = max(0.0, max_wait_s)
        self.max_queue = max_queue
        self._on_idle = on_idle
        self._new_executor = executor or (
            lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        )
        self._queue: asyncio.Queue[_Entry[J, R]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: Executor | None = None
        self.jobs = 0
        self.batches = 0
        self.largest = 0
        self.refused = 0  # QueueFullError: over max_queue
        self.dropped = 0  # deadline passed or caller gone before the job was computed
        # Jobs whose caller still waits (queued or on the worker); a finished or cancelled
        # future frees its place at once, even while the entry still sits in the queue.
        self.outstanding = 0
        self._idle_at = 0.0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = self._new_executor()
        self._task = asyncio.create_task(self._collect(), name="melu-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                future = self._queue.get_nowait().future
                if not future.done():
                    future.set_exception(BatcherClosedError("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def refuse_if_full(self) -> bool:
        """Whether a new job would be refused now; a refusal is counted here, so a caller
        that refuses before submitting (to skip parsing the body) is counted like one that
        submits."""
        if self.max_queue is not None and self.outstanding >= self.max_queue:
            self.refused += 1
            return True
        return False

    def _release(self, _: asyncio.Future[R]) -> None:
        self.outstanding -= 1

    def enqueue(self, job: J, deadline: float | None = None) -> asyncio.Future[R]:
        """Queue ``job``; its future gets the result, the exception its batch raised, or
        :class:`DeadlineError` at ``deadline`` (``loop.time()`` seconds) if the result is not
        ready by then. Cancelling the future drops the job (a client that left).

        No task and no ``wait_for``: on an event loop kept busy by other requests, every task
        start and every wake-up is one more turn of the loop that the request waits for.
        """
        if self._queue is None or self._task is None or self._task.done():
            raise BatcherClosedError("the batcher is not running")
        if self.max_queue is not None and self.outstanding >= self.max_queue:
            self.refused += 1
            raise QueueFullError(f"{self.outstanding} requests are already waiting")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.outstanding += 1
        future.add_done_callback(self._release)
        if deadline is not None:
            timer = loop.call_at(deadline, _expire, future)
            future.add_done_callback(lambda _: timer.cancel())
        self._queue.put_nowait(_Entry(job, future, deadline))
        return future

    async def submit(self, job: J, deadline: float | None = None) -> R:
        """:meth:`enqueue` and wait for the result."""
        return await self.enqueue(job, deadline)

    def _offload(self, fn: Callable[..., T], *args: object) -> Awaitable[T]:
        # A PipeExecutor answers on the loop itself (one wake-up fewer than run_in_executor).
        assert self._executor is not None
        submit_async = getattr(self._executor, "submit_async", None)
        if submit_async is not None:
            future: Awaitable[T] = submit_async(fn, *args)
            return future
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker, between batches (for other torch work). In a worker
        process ``fn`` must be picklable: a module-level function."""
        executor = self._executor
        if executor is None:
            raise BatcherClosedError("the batcher is not running")
        try:
            return await self._offload(fn)
        except BrokenProcessPool:
            self._replace(executor)
            raise WorkerLostError("the model worker was restarted") from None

    def _replace(self, broken: Executor) -> None:
        """A fresh executor for one whose process died (once, if a batch and a call both saw
        it die), rather than a service that fails every request from now on."""
        if self._executor is broken:
            log.error("the model worker process died; starting a new one")
            broken.shutdown(wait=False)
            self._executor = self._new_executor()

    async def _gather(self, queue: asyncio.Queue[_Entry[J, R]]) -> list[_Entry[J, R]]:
        batch = [await queue.get()]
        if queue.empty() and self.max_size > 1 and self.max_wait_s > 0:
            # One timer for companions to arrive (not a task per wait): under load the queue
            # is not empty and nobody waits.
            await asyncio.sleep(self.max_wait_s)
        while len(batch) < self.max_size and not queue.empty():
            batch.append(queue.get_nowait())
        return batch

    async def _collect(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather(self._queue)
            # A client that went away leaves a cancelled future, one whose deadline passed a
            # future about to time out: skip their work.
            now = loop.time()
            live: list[tuple[J, asyncio.Future[R]]] = []
            for entry in batch:
                if entry.future.done() or (entry.deadline is not None and entry.deadline <= now):
                    self.dropped += 1
                    if not entry.future.done():
                        entry.future.set_exception(DeadlineError("the deadline passed"))
                    continue
                live.append((entry.job, entry.future))
            if not live:
                continue
            jobs = [job for job, _ in live]
            executor = self._executor
            try:
                results = await self._offload(self._process, jobs)
            except asyncio.CancelledError:
                for _, future in live:
                    if not future.done():
                        future.set_exception(BatcherClosedError("the service is shutting down"))
                raise
            except BrokenProcessPool:
                self._replace(executor)  # its callers get 503 worker_lost, the next batch runs
                for _, future in live:
                    if not future.done():
                        future.set_exception(WorkerLostError("the model worker was restarted"))
                continue
            except Exception as exc:  # the batch failed: every caller gets the error
                log.exception("batch of %d jobs failed", len(jobs))
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.jobs += len(jobs)
            self.batches += 1
            self.largest = max(self.largest, len(jobs))
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
            if self._on_idle is not None and self._queue.empty():
                # Between bursts, on the worker (it is free now): housekeeping such as
                # returning freed memory. At most once a second.
                now = loop.time()
                if now - self._idle_at >= 1.0:
                    self._idle_at = now
                    await self._offload(self._on_idle)

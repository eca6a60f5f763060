"""An executor with one worker process, fed through a pipe that the event loop watches.

``concurrent.futures.ProcessPoolExecutor`` moves every call and result through two helper
threads of the calling process (a queue feeder and a result manager). In the server those
threads need the GIL that a busy event loop holds: under a flood of cheap requests a batch's
round trip to the worker took 155 ms on average for 11 ms of computing, and ``/recommend`` fell
to a sixth of its throughput. Here the loop itself writes each call to the pipe and reads the
results when the pipe becomes readable (``loop.add_reader``), so the round trip costs two
callbacks on the loop and no thread has to win the GIL.

Use it from the event loop's thread only (``loop.run_in_executor`` does). A large call is only
written while the worker is idle, reading (the batcher sends one batch at a time), so a call
and a result never both wait on a full pipe. Calls made while the process is still starting
wait in a list until it says it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import signal
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_READY = -1  # the id of the worker's first message: initialised (or the error it raised)
STOP_TIMEOUT_S = 30.0


class PipeExecutor(Executor):
    def __init__(
        self, initializer: Callable[..., None], initargs: tuple[Any, ...], name: str
    ) -> None:
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # fork after torch can deadlock
        self._conn, child = context.Pipe(duplex=True)
        self._process = context.Process(
            target=_serve, args=(child, initializer, initargs), name=name, daemon=True
        )
        self._process.start()
        child.close()  # the child's end lives in the child: EOF here means it died
        self._ids = itertools.count()
        self._pending: dict[int, Future[Any] | asyncio.Future[Any]] = {}
        self._unsent: list[tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._ready = False
        self._broken: str | None = None
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Send ``fn(*args, **kwargs)`` (``fn`` by reference: a module-level function)."""
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()  # a call sent cannot be taken back
        self._call(future, fn, args, kwargs)
        return future

    def submit_async(self, fn: Callable[..., T], /, *args: Any) -> asyncio.Future[T]:
        """:meth:`submit` with an asyncio future, resolved directly by the loop's reader (no
        cross-thread wake-up). Cancelling it only discards the answer."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._call(future, fn, args, {})
        return future

    def _call(
        self,
        future: Future[Any] | asyncio.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if self._broken is not None:
            raise BrokenProcessPool(self._broken)
        key = next(self._ids)
        self._pending[key] = future
        call = (key, fn, args, kwargs)
        if self._ready:
            self._send(call)
        else:
            self._unsent.append(call)

    def _send(self, call: tuple[int, Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> None:
        try:
            self._conn.send(call)
        except (OSError, ValueError):  # the other end is gone
            self._break("the worker process exited")

    def _on_readable(self) -> None:
        try:
            while self._broken is None and self._conn.poll():
                self._receive()
        except (EOFError, OSError):
            self._break(f"the worker process exited (code {self._process.exitcode})")

    def _receive(self) -> None:
        key, ok, value = self._conn.recv()
        if key == _READY:
            if not ok:
                self._break(f"the worker process failed to start: {value}")
                return
            self._ready = True
            unsent, self._unsent = self._unsent, []
            for call in unsent:
                self._send(call)
            return
        future = self._pending.pop(key)
        if future.done():  # an asyncio future whose caller stopped waiting
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _break(self, why: str) -> None:
        if self._broken is not None:
            return
        self._broken = why
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._conn.fileno())
        pending, self._pending, self._unsent = self._pending, {}, []
        for future in pending.values():
            if not future.done():
                future.set_exception(BrokenProcessPool(why))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the worker. With ``wait``, the calls already sent are finished and answered
        first (blocking, at most ``STOP_TIMEOUT_S``); the others fail."""
        if self._broken is None:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(self._conn.fileno())
            if wait and not cancel_futures:
                self._unsent = []  # never sent: fail below
                with contextlib.suppress(OSError, ValueError):
                    self._conn.send(None)  # after the calls already in the pipe
                with contextlib.suppress(EOFError, OSError):
                    while self._pending and self._conn.poll(STOP_TIMEOUT_S):
                        self._receive()
            self._break("the executor was shut down")
        if wait:
            self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


# --- in the worker process -------------------------------------------------------------------


def _serve(conn: Connection, initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    # The server process decides when to stop: Ctrl-C in a terminal reaches the whole process
    # group, and a worker that died of it would fail the requests the server is still draining.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        initializer(*initargs)
    except Exception as exc:
        conn.send((_READY, False, f"{type(exc).__name__}: {exc}"))
        return
    conn.send((_READY, True, None))
    while True:
        try:
            call = conn.recv()
        except EOFError:  # the server is gone
            return
        if call is None:
            return
        key, fn, args, kwargs = call
        try:
            result = (key, True, fn(*args, **kwargs))
        except Exception as exc:
            result = (key, False, exc)
        try:
            conn.send(result)
        except Exception as exc:  # an unpicklable result or exception: say what it was
            conn.send((key, False, RuntimeError(f"{type(exc).__name__}: {exc}")))

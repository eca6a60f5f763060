"""Where the model computes: a worker thread in the server's process, or a process of its own.

The batcher hands each batch of jobs to one executor with a single worker. In a thread the
worker shares the server's GIL with the event loop: torch releases it inside every op and has to
win it back after each, so a loop kept busy by cheap requests (``/items`` or ``/health`` floods)
slowed ``/recommend`` to a sixth of its throughput (docs/benchmarks.md, "Service robustness").
A worker process has its own interpreter and GIL: the loop and the model then only share cores,
which the operating system schedules fairly. That is the default; ``MELU_MODEL_PROCESS=false``
keeps the thread (one process, half the memory, for tiny deployments and debugging).

The process (service/pipe_executor.py) is started with ``spawn``, loads the same checkpoint, and
runs the module-level functions below on its own copy of the model. Jobs and outcomes are small
tuples of numbers, cheap to pickle.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import torch

from melu.checkpoint import Checkpoint, load
from melu.train import resolve_device
from service.pipe_executor import PipeExecutor
from service.recommender import Job, Outcome, Recommender, TopK, parameters_sha256
from service.settings import Settings

log = logging.getLogger(__name__)

THREAD_NAME = "melu-torch"


def build(
    settings: Settings, checkpoint: Checkpoint | None = None, *, compute: bool = True
) -> Recommender:
    """Load, check and warm up the model (blocking). Raises a ``MeluError`` for a checkpoint
    that cannot be served (missing, wrong shapes, NaN weights). ``compute=False``: the
    server's copy beside a worker process, on the CPU, without per-item caches or warm-up."""
    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    if checkpoint is None:
        checkpoint = load(settings.checkpoint)
    # Serving never resumes training: without the optimizer's state and the latest weights
    # (as large as the model: 92 MB of the default preset's 187 MB checkpoint) each process
    # holds half as much, and a worker process gets half as much through its pipe.
    checkpoint = replace(checkpoint, resume={})
    recommender = Recommender(
        checkpoint,
        resolve_device(settings.device if compute else "cpu"),
        settings.local_steps,
        retrieval_fraction=settings.retrieval_fraction,
        compute=compute,
    )
    if compute:
        # The first adapt call pays one-time setup (allocations, lazy inits): before any client.
        unknown_user = tuple(recommender.encoder.encode_user({}))
        scale = recommender.scale.values()
        recommender.run([Job(unknown_user, (1,), (scale[len(scale) // 2],), TopK(1, None))])
    return recommender


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them: after a burst of large batches
    the resident size stayed at its peak). A no-op where glibc is not the allocator."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


class ModelWorker:
    """The model's executor and the functions the batcher runs on it.

    ``run``, ``sha256`` and ``idle`` are the same calls in both modes; in the process they are
    module-level functions (picklable) acting on that process's model.
    """

    def __init__(self, settings: Settings, recommender: Recommender) -> None:
        self.in_process = not settings.model_process
        self._settings = settings
        self._recommender = recommender
        if self.in_process:
            self.run: Callable[[Sequence[Job]], list[Outcome]] = recommender.run
            self.sha256: Callable[[], str] = lambda: parameters_sha256(recommender.learner)
            self.device: Callable[[], str] = lambda: str(recommender.device)
        else:
            self.run = _run
            self.sha256 = _sha256
            self.device = _device
        self.idle: Callable[[], None] = release_free_memory

    def executor(self) -> Executor:
        """A new single-worker executor (the batcher makes another if a process dies)."""
        if self.in_process:
            return ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        return PipeExecutor(
            _start, (self._settings, self._recommender.checkpoint), name="melu-model"
        )


# --- in the worker process -------------------------------------------------------------------

_MODEL: Recommender | None = None


def _start(settings: Settings, checkpoint: Checkpoint) -> None:
    global _MODEL
    _MODEL = build(settings, checkpoint)


def _model() -> Recommender:
    if _MODEL is None:
        raise RuntimeError("the model worker was not started")
    return _MODEL


def _run(jobs: Sequence[Job]) -> list[Outcome]:
    return _model().run(jobs)


def _sha256() -> str:
    return parameters_sha256(_model().learner)


def _device() -> str:
    """The device the worker computes on (a call that also proves the worker is up)."""
    return str(_model().device)

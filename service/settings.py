"""Service settings from ``MELU_*`` environment variables (or passed to ``create_app``).

Nothing is read at import time: :func:`get_settings` builds them on first use and caches them,
and tests build their own :class:`Settings` instead.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from melu.errors import MeluError


class Settings(BaseSettings):
    """Limits and knobs of one service instance."""

    # extra="ignore": other MELU_* variables (MELU_DATA_DIR, MELU_SHARED_DATA) belong to melu.
    model_config = SettingsConfigDict(env_prefix="MELU_", extra="ignore", frozen=True)

    checkpoint: Path = Field(description="checkpoint file, or the run folder holding one")
    device: str = Field(default="cpu", description="cpu, cuda[:N] or auto")
    # None: the local steps the checkpoint was meta-trained with, so serving adapts exactly as
    # validation did.
    local_steps: int | None = Field(
        default=None, ge=0, le=100, description="local steps per request (the checkpoint's)"
    )
    max_ratings: int = Field(default=100, ge=1, le=10_000, description="ratings per request")
    max_k: int = Field(default=100, ge=1, le=10_000, description="largest k")
    max_candidates: int = Field(
        default=5_000, ge=1, le=100_000, description="candidates / item_ids per request"
    )
    # 5000 candidate ids plus 100 ratings fit in about 60 KB of JSON.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="request body limit")
    batch_max_size: int = Field(
        default=32, ge=1, le=1024, description="most requests adapted in one call"
    )
    batch_max_wait_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="longest wait for a batch to fill"
    )
    micro_batching: bool = Field(default=True, description="adapt concurrent requests together")
    # A process of its own: the event loop and the model then never wait on each other's GIL
    # (service/worker.py). False: a thread, one process, half the memory.
    model_process: bool = Field(
        default=True, description="compute in a worker process (false: a thread of the server)"
    )
    # None leaves torch's default (one thread per core).
    torch_threads: int | None = Field(
        default=None, ge=1, le=256, description="torch intra-op threads (torch's default)"
    )
    # A queue without a bound only turns overload into timeouts and memory.
    max_queue: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="requests waiting or computing; more get 503 + Retry-After at once",
    )
    request_timeout: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="seconds a request may wait; then 503, and it is dropped uncomputed",
    )
    # Slow clients hold a connection each.
    read_timeout: float = Field(
        default=10.0,
        gt=0.0,
        le=3600.0,
        description="seconds to send the headers, and again the body; then 408",
    )
    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="request line plus headers; more get 431",
    )
    # 0: every request scores the whole catalogue (what evaluation ranks). For catalogues of
    # hundreds of thousands of items, e.g. 0.05: an approximate first stage (service/catalogue.py).
    retrieval_fraction: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="score only the best item clusters covering this share of the catalogue "
        "(0: score every item)",
    )
    shutdown_grace: float = Field(
        default=20.0,
        ge=0.0,
        le=3600.0,
        description="on SIGTERM, seconds to finish the requests in flight",
    )


def settings_error(exc: ValidationError) -> str:
    """One line naming each bad variable, e.g. ``MELU_MAX_K=abc: Input should be ...``."""
    problems = []
    for error in exc.errors():
        name = "MELU_" + "_".join(str(p) for p in error.get("loc", ())).upper()
        given = os.environ.get(name)
        shown = f"{name}={given!r}" if given is not None else name
        problems.append(f"{shown}: {error.get('msg', 'invalid value')}")
    return "invalid setting: " + "; ".join(problems)


def from_environment(**overrides: Any) -> Settings:
    """Settings from ``MELU_*`` variables (``overrides`` win); a bad value raises a
    :class:`melu.errors.MeluError` with one line instead of pydantic's report."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise MeluError(settings_error(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once; a missing ``MELU_CHECKPOINT`` fails here."""
    return from_environment()

"""Service settings from ``MELU_*`` environment variables (or passed to ``create_app``).

Nothing is read at import time: :func:`get_settings` builds them on first use and caches them,
and tests build their own :class:`Settings` instead.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Limits and knobs of one service instance."""

    # extra="ignore": other MELU_* variables (MELU_DATA_DIR, MELU_SHARED_DATA) belong to melu.
    model_config = SettingsConfigDict(env_prefix="MELU_", extra="ignore", frozen=True)

    checkpoint: Path = Field(description="checkpoint file, or the run folder holding one")
    device: str = Field(default="cpu", description="cpu, cuda[:N] or auto")
    # None: the local steps the checkpoint was meta-trained with, so serving adapts exactly as
    # validation did.
    local_steps: int | None = Field(default=None, ge=0, le=100)
    max_ratings: int = Field(default=100, ge=1, le=10_000)
    max_k: int = Field(default=100, ge=1, le=10_000)
    max_candidates: int = Field(default=5_000, ge=1, le=100_000)
    # 5000 candidate ids plus 100 ratings fit in about 60 KB of JSON.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    batch_max_size: int = Field(default=32, ge=1, le=1024)
    batch_max_wait_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    micro_batching: bool = True
    # None leaves torch's default (one thread per core).
    torch_threads: int | None = Field(default=None, ge=1, le=256)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, built once; a missing ``MELU_CHECKPOINT`` fails here."""
    return Settings()  # type: ignore[call-arg]  # fields come from the environment

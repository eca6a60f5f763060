"""Self-describing checkpoints: configs, vocabularies, catalogue, weights, metrics, versions.

One file rebuilds the model anywhere (``torch.load(weights_only=True)``: only tensors and plain
containers, no pickled classes) and, through its ``resume`` part, continues training exactly.
Writes are atomic: a crash mid-write leaves the previous checkpoint in place.
"""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu import __version__
from melu.config import DataConfig, MetaConfig, ModelConfig, TrainConfig, from_dict, to_dict
from melu.data import Catalogue
from melu.errors import CheckpointError
from melu.features import FeatureEncoder
from melu.learners import Learner, build_learner
from melu.taste_learner import TasteLearner

FORMAT = "melu-checkpoint"
# 2: the taste model replaced the rating+watch objective (version 1 checkpoints: retrain).
FORMAT_VERSION = 2
# The taste model's rating recalibration (TasteNet.rating_calibration), which version-2
# checkpoints written before it lack.
CALIBRATION = "net.rating_calibration"


def completed(state: dict[str, torch.Tensor], learner: Learner) -> dict[str, torch.Tensor]:
    """``state`` (the kept weights, or a resume state's) with what a version-2 checkpoint
    written before the taste model recalibrated its ratings lacks: the identity, which is
    what that model predicted with."""
    if isinstance(learner, TasteLearner) and CALIBRATION not in state:
        return {**state, CALIBRATION: learner.net.rating_calibration.detach().clone()}
    return state


def versions() -> dict[str, str]:
    return {
        "melu": __version__,
        "torch": str(torch.__version__),  # TorchVersion is not a weights_only-safe type
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


@dataclass
class Checkpoint:
    """Everything a run produced. ``state`` holds the best weights (what evaluation and the
    service use); ``resume`` holds the latest training state, or is empty once training ends."""

    data: DataConfig
    model: ModelConfig
    meta: MetaConfig
    train: TrainConfig
    encoder: FeatureEncoder
    catalogue: Catalogue
    state: dict[str, torch.Tensor]
    metrics: dict[str, Any] = field(default_factory=dict)
    resume: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=versions)
    # The onboarding lists (melu.onboarding): strategy -> item ids, and how they were made.
    onboarding: dict[str, Any] = field(default_factory=dict)

    def learner(self, device: torch.device | str = "cpu") -> Learner:
        """The meta-learner with the best weights, in eval mode, on ``device``."""
        learner = build_learner(self.encoder, self.model, self.meta, self.data.scale)
        try:
            learner.load_state_dict(completed(self.state, learner))
        except RuntimeError as exc:
            # torch lists every mismatch over many lines; the first says what is wrong.
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            first = lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__
            raise CheckpointError(
                f"the weights do not fit the model its configs describe ({first})"
            ) from None
        return learner.to(device).eval()

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "configs": {
                "data": to_dict(self.data),
                "model": to_dict(self.model),
                "meta": to_dict(self.meta),
                "train": to_dict(self.train),
            },
            "encoder": self.encoder.to_dict(),
            "catalogue": self.catalogue.to_dict(),
            "state": self.state,
            "metrics": self.metrics,
            "resume": self.resume,
            "versions": self.versions,
            "onboarding": self.onboarding,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Checkpoint:
        configs = raw["configs"]
        return cls(
            data=from_dict(DataConfig, configs["data"]),
            model=from_dict(ModelConfig, configs["model"]),
            meta=from_dict(MetaConfig, configs["meta"]),
            # Runs saved before the weight average kept each epoch's own weights.
            train=from_dict(TrainConfig, {"average_decay": 0.0, **configs["train"]}),
            encoder=FeatureEncoder.from_dict(raw["encoder"]),
            catalogue=Catalogue.from_dict(raw["catalogue"]),
            state=raw["state"],
            metrics=raw.get("metrics", {}),
            resume=raw.get("resume", {}),
            versions=raw.get("versions", {}),
            onboarding=raw.get("onboarding", {}),
        )


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, then rename over ``path``: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; others (the api container) read these
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def save(path: Path, checkpoint: Checkpoint) -> None:
    atomic_write(path, lambda tmp: torch.save(checkpoint.to_dict(), tmp))


def load(path: Path | str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load safely (``weights_only=True``) and check that this is a checkpoint we can read."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():
            # torch warns (several lines) about pickles of other protocols before refusing
            # them; the one-line error below says what matters.
            warnings.simplefilter("ignore")
            raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a melu checkpoint")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {raw.get('format_version')} is not supported "
            f"(this melu reads version {FORMAT_VERSION}; retrain with `melu train`)"
        )
    try:
        return Checkpoint.from_dict(raw)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint ({exc})") from None

"""Meta-training on a small real subset, for ``test_distributed`` to run under torchrun.

Usage: ``torchrun --nproc_per_node=N tests/ddp_worker.py OUT_DIR DATA_DIR MODEL`` (or plain
``python`` for one process), MODEL ``rating`` (MeLU's network) or ``taste`` (the default
preset's model). Every dropout is off, so that every process count computes the same function:
ranks draw dropout masks from their own generators.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from melu.config import PRESETS, DataConfig, MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData, prepare
from melu.train import train

# Embedding and item-id dropout (MeLU's network), item-id and user-field dropout (the taste
# model) all off.
NO_DROPOUT = {"embedding_dropout": 0.0, "item_id_dropout": 0.0}
MODELS = {
    "rating": (ModelConfig(**NO_DROPOUT), MetaConfig()),  # type: ignore[arg-type]
    "taste": (
        dataclasses.replace(
            PRESETS["default"].model, taste_id_dropout=0.0, user_field_dropout=0.0, **NO_DROPOUT
        ),
        PRESETS["default"].meta,
    ),
}
TRAIN = TrainConfig(epochs=2, batch_size=32, device="cpu", seed=5, dtype="float64", patience=10)


def small_data(shared: Path) -> ColdStartData:
    data = prepare(shared, DataConfig(dataset="melu"))
    rng = np.random.default_rng(0)
    # 200 tasks: the last batch of each epoch (8 tasks) does not split evenly over 3 ranks.
    data = data.restrict("warm", rng.choice(len(data.tasks["warm"]), 200, replace=False))
    return data.restrict("validation", np.arange(64))


def main(out: Path, shared: Path, model: str) -> None:
    model_cfg, meta_cfg = MODELS[model]
    train(small_data(shared), out, model_cfg, meta_cfg, TRAIN, progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

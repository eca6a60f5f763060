"""Meta-training on a small real subset, for ``test_distributed`` to run under torchrun.

Usage: ``torchrun --nproc_per_node=N tests/ddp_worker.py OUT_DIR DATA_DIR MODEL`` (or plain
``python`` for one process), MODEL ``rating`` (MeLU's network), ``taste`` (the default
preset's model) or ``taste-latest-small`` (the taste model on ml-latest-small: half stars, no
user fields, the time split; no fold-in). Every dropout is off, so that every process count
computes the same function: ranks draw dropout masks from their own generators.
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
# No fold-in on ml-latest-small: choosing it factorises nine EDLAE matrices over ~8,000 rated
# items after training (about a minute per process on 2 cores, 129-289 s of CI for the test);
# ``taste`` covers the fold-in's choice under torchrun on MeLU's data.
MODELS["taste-latest-small"] = (
    dataclasses.replace(MODELS["taste"][0], fold_in_neighbours=0),
    MODELS["taste"][1],
)
TRAIN = TrainConfig(epochs=2, batch_size=32, device="cpu", seed=5, dtype="float64", patience=10)


def small_data(shared: Path, dataset: str = "melu") -> ColdStartData:
    data = prepare(shared, DataConfig.for_dataset(dataset))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    # 200 tasks: the last batch of each epoch (8 tasks) does not split evenly over 3 ranks.
    warm = len(data.tasks["warm"])
    data = data.restrict("warm", rng.choice(warm, min(200, warm), replace=False))
    return data.restrict("validation", np.arange(min(64, len(data.tasks["validation"]))))


def main(out: Path, shared: Path, model: str) -> None:
    model_cfg, meta_cfg = MODELS[model]
    dataset = "ml-latest-small" if model.endswith("latest-small") else "melu"
    train(small_data(shared, dataset), out, model_cfg, meta_cfg, TRAIN, progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])

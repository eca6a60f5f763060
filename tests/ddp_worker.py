"""Meta-training on a small real subset, for ``test_distributed`` to run under torchrun.

Usage: ``torchrun --nproc_per_node=N tests/ddp_worker.py OUT_DIR`` (or plain ``python`` for one
process); dropout (of embeddings and of item ids) is off so that every process count
computes the same function.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from melu.config import DataConfig, MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData, prepare
from melu.train import train

# No randomness in the forward pass: ranks draw dropout masks from their own generators.
MODEL = ModelConfig(embedding_dropout=0.0, item_id_dropout=0.0)
TRAIN = TrainConfig(epochs=2, batch_size=32, device="cpu", seed=5, dtype="float64", patience=10)


def small_data(shared: Path) -> ColdStartData:
    data = prepare(shared, DataConfig(dataset="melu"))
    rng = np.random.default_rng(0)
    tasks = dict(data.tasks)
    # 200 tasks: the last batch of each epoch (8 tasks) does not split evenly over 3 ranks.
    tasks["warm"] = data.tasks["warm"].subset(
        rng.choice(len(data.tasks["warm"]), 200, replace=False)
    )
    tasks["validation"] = data.tasks["validation"].subset(np.arange(64))
    return dataclasses.replace(data, tasks=tasks)


def main(out: Path, shared: Path) -> None:
    train(small_data(shared), out, MODEL, MetaConfig(), TRAIN, progress=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

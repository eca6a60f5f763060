"""The two meta-learners behind one constructor: MeLU's rating network and the taste model.

``ModelConfig.objective`` picks the model: ``"rating"`` is MeLU's network and local update
(:mod:`melu.maml`, the paper's model and the ``melu`` preset), ``"taste"`` the default
preset's taste model (:mod:`melu.taste`, :mod:`melu.taste_learner`). Training, evaluation and
the service build either through :func:`build_learner` and score it through
:mod:`melu.scoring`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from melu.config import MetaConfig, ModelConfig, RatingScale
from melu.features import FeatureEncoder
from melu.maml import MetaLearner
from melu.model import MeLUNet
from melu.objectives import ITEM_ID_COLUMN
from melu.taste import TasteNet
from melu.taste_learner import TasteLearner

Learner = MetaLearner | TasteLearner


def build_learner(
    encoder: FeatureEncoder,
    model_cfg: ModelConfig,
    meta_cfg: MetaConfig,
    scale: RatingScale | None = None,
) -> Learner:
    """A fresh meta-learner whose embedding tables fit ``encoder``'s vocabularies (the taste
    model's rating levels fit ``scale``, 1..5 in whole stars by default)."""
    if model_cfg.objective == "taste":
        net = TasteNet(
            encoder.user_specs(), encoder.item_specs(), model_cfg, meta_cfg, scale or RatingScale()
        )
        return TasteLearner(net, meta_cfg)
    return MetaLearner(MeLUNet(encoder.user_specs(), encoder.item_specs(), model_cfg), meta_cfg)


def fit_to_training(
    learner: Learner, train_ratings: pd.DataFrame, item_rows: dict[int, int], table: np.ndarray
) -> None:
    """What a learner takes from the training ratings besides gradients: the taste model's
    co-occurrence (:mod:`melu.cooccurrence`), where it has one. ``table``: the catalogue's
    feature ids."""
    if not isinstance(learner, TasteLearner) or learner.net.cooccurrence_table is None:
        return
    users, ids, _ = training_pairs(train_ratings, item_rows, table)
    learner.net.cooccurrence_table.fit(users, ids)


def training_pairs(
    train_ratings: pd.DataFrame, item_rows: dict[int, int], table: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray, int]:
    """The training ratings' user ids and item-id vocabulary indices, and the vocabulary's
    size (the largest index plus one): what the taste model's item-item views are fitted on."""
    rows = train_ratings["item_id"].map(item_rows).to_numpy(dtype=np.int64)
    ids = np.asarray(table)[:, ITEM_ID_COLUMN]
    return train_ratings["user_id"].to_numpy(), ids[rows], int(ids.max()) + 1

"""How far the taste model's local steps go, per number of ratings, chosen on validation users.

The local steps' sizes are meta-learned on the training users' episodes, where they pay at
every support size. On users the model never saw they pay only with enough ratings: on MeLU's
validation users (seed 0, one step) Recall@10 from 3 / 5 / 10 / 20 ratings was 0.358 / 0.390 /
0.407 / 0.399 without the step and 0.344 / 0.383 / 0.396 / 0.411 with it. So, once training
ends, each support-size bucket (:data:`melu.taste.SCHEDULE_EDGES`) gets the multiple of the
learned step (:data:`MULTIPLES`) with the best validation Recall@10 at a representative size
(:data:`BUCKET_SIZES`); the largest bucket (32 ratings and more) takes the choice of the one
below it. The choice lives in the model (``TasteNet.step_schedule``), so training's selection,
evaluation and the service adapt alike.
"""

from __future__ import annotations

import logging

import torch

from melu.predict import catalogue_recall
from melu.scoring import CatalogueScorer
from melu.tasks import TaskSet
from melu.taste_learner import TasteLearner

log = logging.getLogger(__name__)

# The learned step first: a bucket leaves it only for a multiple that does strictly better.
MULTIPLES: tuple[float, ...] = (1.0, 0.0, 0.5, 1.5)
# The support size each bucket is judged at (buckets 1-3, 4-7, 8-15, 16-31 ratings).
BUCKET_SIZES: tuple[int, ...] = (3, 5, 10, 20)
# Support draws averaged per choice: one draw of MeLU's 265 validation users leaves about 0.01
# of noise.
DRAWS = 4


@torch.no_grad()
def choose_step_schedule(
    learner: TasteLearner,
    table: torch.Tensor,
    recommendable: torch.Tensor,
    validation: TaskSet,
    user_table: torch.Tensor,
    seed: int,
) -> dict[str, list[float]]:
    """Set ``learner.net.step_schedule`` to the best multiple per bucket (see the module
    docstring) and return every bucket's validation Recall@10 for every multiple."""
    schedule = learner.net.step_schedule
    was_training = learner.training
    learner.eval()
    scorer = CatalogueScorer(learner, table, recommendable)
    liked = learner.net.cfg.liked_rating
    tried: dict[str, list[float]] = {}
    chosen: list[float] = []
    try:
        for size in BUCKET_SIZES:
            values = []
            for multiple in MULTIPLES:
                schedule.fill_(multiple)
                recall = sum(
                    catalogue_recall(
                        scorer, validation, user_table, liked, size, seed=seed * 1000 + draw
                    )
                    for draw in range(DRAWS)
                )
                values.append(recall / DRAWS)
            tried[str(size)] = [round(v, 5) for v in values]
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            chosen.append(MULTIPLES[best])
        chosen.append(chosen[-1])
        schedule.copy_(torch.tensor(chosen, dtype=schedule.dtype))
    finally:
        learner.train(was_training)
    log.info(
        "local steps per support size, chosen on validation users: %s (multiples of the "
        "learned step; Recall@10 tried: %s)",
        ", ".join(f"{s}: x{m:g}" for s, m in zip(("1-3", "4-7", "8-15", "16-31", "32+"),
                                                  chosen, strict=True)),
        tried,
    )  # fmt: skip
    return tried

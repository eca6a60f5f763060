"""Adapt on each task's support and predict its query: shared by validation and evaluation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from melu.config import RatingScale
from melu.learners import Learner
from melu.maml import MetaLearner, gather
from melu.objectives import candidates, recommendable_rows, sample_episodes
from melu.ranking import hits_in_top
from melu.scoring import CatalogueScorer, Scores, State
from melu.tasks import TaskSet
from melu.taste_learner import TasteState


@torch.no_grad()
def predict_queries(
    learner: Learner,
    tasks: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    scale: RatingScale,
    steps: int | None = None,
    batch_size: int = 64,
    scorer: CatalogueScorer | None = None,
) -> np.ndarray:
    """Predicted query ratings ``[n_tasks, Q]`` in task order, clipped to the rating scale.

    ``steps`` overrides the local steps (0 gives the meta-trained model without adaptation).
    The taste model adapts against the catalogue of ``scorer`` (built here when not given).
    """
    was_training = learner.training
    learner.eval()
    # Tasks sorted by support size, so that each trimmed batch carries little padding.
    order = np.argsort(tasks.support_sizes, kind="stable")
    out = np.zeros(tuple(tasks.batch_all.y_qry.shape), dtype=np.float32)
    try:
        if not isinstance(learner, MetaLearner) and scorer is None:
            scorer = CatalogueScorer(learner, item_table, recommendable_rows(item_table))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tasks.batch(index, trim=True)
            f = gather(batch, user_table, item_table)
            if isinstance(learner, MetaLearner):
                adaptation = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt, steps=steps)
                pred = learner.predict(adaptation, f.users, f.x_qry)
            else:
                assert scorer is not None
                state = scorer.adapt(f.users, batch.x_spt, f.y_spt, f.mask_spt, steps)
                assert isinstance(state, TasteState)
                pred = learner.predict(state, f.x_qry)
            out[index] = pred.clamp(scale.low, scale.high).float().cpu().numpy()
    finally:
        learner.train(was_training)
    return out


def query_mae(
    learner: Learner,
    tasks: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    scale: RatingScale,
    steps: int | None = None,
    scorer: CatalogueScorer | None = None,
) -> dict[str, float]:
    """Query MAE and RMSE over every rating of every task (validation during training)."""
    pred = predict_queries(learner, tasks, user_table, item_table, scale, steps, scorer=scorer)
    target = tasks.batch_all.y_qry.cpu().numpy()
    mask = tasks.batch_all.mask_qry.cpu().numpy()
    err = (pred - target)[mask]
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


class ScoredBatch(NamedTuple):
    """A batch of validation episodes scored by a :class:`CatalogueScorer`: every row's
    scores, each user's candidates and relevant rows ``[B, R]``, the adapted state, and the
    held-out ratings: their rows ``[B, T]`` (0: padding) and values."""

    scores: Scores
    allowed: torch.Tensor
    relevant: torch.Tensor
    state: State
    targets: torch.Tensor
    target_ratings: torch.Tensor


def score_episodes(
    scorer: CatalogueScorer,
    tasks: TaskSet,
    user_table: torch.Tensor,
    liked: float,
    support: int = 5,
    seed: int = 0,
    batch_size: int = 64,
) -> Iterator[ScoredBatch]:
    """Each task's list from ``support`` random ratings (seeded), scored as evaluation and the
    service score it, a batch at a time; the rest rated ``liked`` or more are its relevant
    rows. Candidates: the recommendable rows minus the support."""
    learner = scorer.learner
    was_training = learner.training
    learner.eval()
    table = scorer.table
    generator = torch.Generator(device=table.device).manual_seed(seed)
    try:
        with torch.no_grad():
            for start in range(0, len(tasks), batch_size):
                batch = tasks.batch(np.arange(start, min(start + batch_size, len(tasks))))
                ep = sample_episodes(
                    batch, user_table, table, (support, support), liked, generator=generator
                )
                state = scorer.adapt(ep.users, ep.rows_spt, ep.y_spt, ep.mask_spt)
                allowed = candidates(scorer.recommendable, ep.rows_spt, ep.mask_spt)
                relevant = torch.zeros_like(allowed)
                relevant.scatter_(1, ep.targets, ep.liked > 0)
                yield ScoredBatch(
                    scorer.scores(state, ep.users),
                    allowed,
                    relevant & allowed,
                    state,
                    ep.targets,
                    ep.target_ratings,
                )
    finally:
        learner.train(was_training)


def hits_at(
    rank_scores: torch.Tensor,
    allowed: torch.Tensor,
    relevant: torch.Tensor,
    above_floor: torch.Tensor | None = None,
    k: int = 10,
) -> torch.Tensor:
    """Recall@k (hits / min(k, relevant)) of each user with a relevant row, the lists ordered
    by :func:`melu.ranking.rank` (:func:`melu.ranking.hits_in_top`)."""
    return recall_of(hits_in_top(rank_scores, allowed, relevant, k, above_floor), relevant, k,
                     rank_scores.dtype)  # fmt: skip


def recall_of(
    hits: torch.Tensor, relevant: torch.Tensor, k: int, dtype: torch.dtype
) -> torch.Tensor:
    """Recall@k of each user with a relevant row from their ``hits [..., B]`` in the top ``k``
    and their ``relevant [B, R]`` rows."""
    n_rel = relevant.sum(1)
    keep = n_rel > 0
    return hits[..., keep].to(dtype) / n_rel[keep].clamp(max=k).to(dtype)


def catalogue_recall(
    scorer: CatalogueScorer,
    tasks: TaskSet,
    user_table: torch.Tensor,
    liked: float,
    support: int = 5,
    k: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Mean Recall@k of the scorer's lists from ``support`` random ratings of each task
    (:func:`score_episodes`, :func:`hits_at`).

    A quick model-selection signal for training; ``melu.evaluation`` has the full protocol.
    """
    recalls = [
        hits_at(found.scores.rank, found.allowed, found.relevant, found.scores.above_floor, k)
        for found in score_episodes(scorer, tasks, user_table, liked, support, seed, batch_size)
    ]
    return float(torch.cat(recalls).mean()) if recalls else 0.0

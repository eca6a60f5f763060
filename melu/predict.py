"""Adapt on each task's support and predict its query: shared by validation and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from melu.maml import MetaLearner, gather
from melu.objectives import ITEM_ID_COLUMN, candidates, sample_episodes
from melu.tasks import TaskSet

RATING_MIN, RATING_MAX = 1.0, 5.0


@torch.no_grad()
def predict_queries(
    learner: MetaLearner,
    tasks: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    steps: int | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """Predicted query ratings ``[n_tasks, Q]`` in task order, clipped to the rating scale.

    ``steps`` overrides the local steps (0 gives the meta-trained model without adaptation).
    The inner gradients are still taken: ``torch.func.grad`` ignores the outer ``no_grad``.
    """
    was_training = learner.training
    learner.eval()
    # Tasks sorted by support size, so that each trimmed batch carries little padding.
    order = np.argsort(tasks.support_sizes, kind="stable")
    out = np.zeros(tuple(tasks.batch_all.y_qry.shape), dtype=np.float32)
    try:
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            f = gather(tasks.batch(index, trim=True), user_table, item_table)
            adaptation = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt, steps=steps)
            pred = learner.predict(adaptation, f.users, f.x_qry)
            out[index] = pred.clamp(RATING_MIN, RATING_MAX).float().cpu().numpy()
    finally:
        learner.train(was_training)
    return out


def query_mae(
    learner: MetaLearner,
    tasks: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    steps: int | None = None,
) -> dict[str, float]:
    """Query MAE and RMSE over every rating of every task (validation during training)."""
    pred = predict_queries(learner, tasks, user_table, item_table, steps)
    target = tasks.batch_all.y_qry.cpu().numpy()
    mask = tasks.batch_all.mask_qry.cpu().numpy()
    err = (pred - target)[mask]
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err**2).mean()))}


@torch.no_grad()
def catalogue_recall(
    learner: MetaLearner,
    tasks: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    support: int = 5,
    k: int = 10,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Recall@k of :meth:`MetaLearner.rank_scores` over the catalogue from ``support`` random
    ratings of each task (seeded), the rest rated 4 or more being relevant: hits / min(k,
    relevant), over tasks with any. Candidates: items with training ratings, minus the support.

    A quick model-selection signal for training; ``melu.evaluation`` has the full protocol.
    """
    was_training = learner.training
    learner.eval()
    generator = torch.Generator(device=item_table.device).manual_seed(seed)
    # Items with training ratings are those with a known id (the vocabulary is fitted on them).
    trainable = item_table[:, ITEM_ID_COLUMN] > 0
    try:
        features = learner.item_features(item_table)
        recalls = []
        for start in range(0, len(tasks), batch_size):
            batch = tasks.batch(np.arange(start, min(start + batch_size, len(tasks))))
            ep = sample_episodes(batch, user_table, item_table, (support, support), 4.0, generator)
            adaptation = learner.adapt(ep.users, ep.x_spt, ep.y_spt, ep.mask_spt)
            scores = learner.rank_scores(adaptation, ep.users, features)
            allowed = candidates(trainable, ep.rows_spt, ep.mask_spt)
            scores = scores.masked_fill(~allowed, float("-inf"))
            top = scores.topk(k, dim=1).indices  # [B, k]
            relevant = torch.zeros_like(allowed)
            relevant.scatter_(1, ep.targets, ep.weights > 0)
            relevant[:, 0] = False
            hits = relevant.gather(1, top).sum(1).to(scores.dtype)
            n_rel = relevant.sum(1)
            keep = n_rel > 0
            recalls.append(hits[keep] / n_rel[keep].clamp(max=k).to(scores.dtype))
    finally:
        learner.train(was_training)
    return float(torch.cat(recalls).mean()) if recalls else 0.0

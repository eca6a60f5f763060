"""Adapt on each task's support and predict its query: shared by validation and evaluation."""

from __future__ import annotations

import numpy as np
import torch

from melu.maml import MetaLearner, gather
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

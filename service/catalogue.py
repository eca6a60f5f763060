"""Scoring a large catalogue with the item side of the first layer cached.

Under melu's closed-form local update (only the head adapts, one fixed rate), a task's
first-layer pre-activation of item ``x`` is

    W_item x  +  (W_task t + b)  -  lr * sum_j k(x, s_j) g_j

and only the last two terms depend on the user. ``W_item x`` (``[N, H1]``, about 70% of the
per-item arithmetic of ``closed_form.predict``) is the same for every request, so it is
computed once per catalogue here; a request then pays the support kernel (``N x S``), the
later layers, and nothing per item in ``Di x H1``.

This reimplements ``melu.closed_form.predict`` for the catalogue case from the same
parameters and :class:`melu.closed_form.Kernel`; ``tests/test_service.py`` checks that both give
the same scores, so a change of the model's first layer shows up there.
"""

from __future__ import annotations

import torch

from melu import closed_form
from melu.maml import Adaptation, MetaLearner

# Floats of [B, chunk, H1] activations per chunk: small enough to stay in cache.
CHUNK_FLOATS = 1 << 16


class CachedItemSide:
    """The catalogue's ``W_item x`` for one learner, and scoring with it."""

    def __init__(self, learner: MetaLearner, features: torch.Tensor) -> None:
        params = learner.meta_params()
        weight = params["head.layers.0.weight"]
        self.task_dim = weight.shape[1] - features.shape[1]
        with torch.no_grad():
            self.item_side = torch.nn.functional.linear(features, weight[:, self.task_dim :])
        self.features = features
        self.params = params
        self.lr = learner.cfg.local_lr

    def applies(self, adaptation: Adaptation) -> bool:
        return adaptation.kernel is not None and adaptation.kernel.task.shape[-1] == self.task_dim

    def scores(self, adaptation: Adaptation) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of the whole catalogue (as
        ``learner.predict_from_features``)."""
        kernel = adaptation.kernel
        assert kernel is not None
        weight, bias = self.params["head.layers.0.weight"], self.params["head.layers.0.bias"]
        task, support, state = kernel.task, kernel.support, kernel.state
        per_task = torch.nn.functional.linear(task, weight[:, : self.task_dim], bias)  # [B, H1]
        batch, size, width = support.shape
        hidden = per_task.shape[-1]
        flat_support = support.reshape(batch * size, width).t()  # [Di, B*S]
        shared = ((task * task).sum(-1) + 1.0)[:, None, None]  # [B, 1, 1]
        step = max(128, CHUNK_FLOATS // (batch * hidden))
        parts = []
        for start in range(0, self.features.shape[0], step):
            items = self.features[start : start + step]  # [n, Di]
            pre1 = self.item_side[start : start + step].unsqueeze(0) + per_task.unsqueeze(1)
            if state.first_grads.shape[1]:
                dots = items @ flat_support  # one GEMM for every task: [n, B*S]
                gram = dots.reshape(-1, batch, size).transpose(0, 1) + shared  # [B, n, S]
                pre1 = torch.baddbmm(pre1, gram, state.first_grads, alpha=-self.lr)
            parts.append(closed_form._forward(pre1, state.layers)[1])
        return torch.cat(parts, dim=1) + adaptation.offset.unsqueeze(-1)

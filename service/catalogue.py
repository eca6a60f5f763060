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

import math

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

    def scores(
        self,
        adaptation: Adaptation,
        features: torch.Tensor | None = None,
        item_side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of the whole catalogue (as
        ``learner.predict_from_features``), or of other items given with their features and
        item side (a subset of rows, cluster centroids)."""
        features = self.features if features is None else features
        item_side = self.item_side if item_side is None else item_side
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
        for start in range(0, features.shape[0], step):
            items = features[start : start + step]  # [n, Di]
            pre1 = item_side[start : start + step].unsqueeze(0) + per_task.unsqueeze(1)
            if state.first_grads.shape[1]:
                dots = items @ flat_support  # one GEMM for every task: [n, B*S]
                gram = dots.reshape(-1, batch, size).transpose(0, 1) + shared  # [B, n, S]
                pre1 = torch.baddbmm(pre1, gram, state.first_grads, alpha=-self.lr)
            parts.append(closed_form._forward(pre1, state.layers)[1])
        return torch.cat(parts, dim=1) + adaptation.offset.unsqueeze(-1)


class ClusterRetrieval:
    """An approximate first stage for large catalogues: score cluster centroids, then only
    the items of the best clusters.

    Items are clustered (k-means, about sqrt(N) clusters) on their cached first-layer item side
    ``W_item x``, the part of the model that differs between items. A request scores the
    centroids (mean item features and item side of each cluster) with its adapted model, takes
    the best clusters until ``fraction`` of the catalogue is covered, and scores those items
    exactly; the rest are not ranked. Approximate: on a synthetic 100k-item catalogue, 5-10% of
    the items held 9.3 of the exact top 10 on average (docs/benchmarks.md). Off by default
    (``MELU_RETRIEVAL_FRACTION=0``), so that the service ranks exactly as evaluation does.
    """

    def __init__(self, side: CachedItemSide, fraction: float, seed: int = 0) -> None:
        items = side.item_side[1:]  # row 0 is padding
        n = items.shape[0]
        self.side = side
        self.want = max(1000, int(fraction * n))
        clusters = max(16, int(n**0.5))
        generator = torch.Generator().manual_seed(seed)
        sample = items[torch.randperm(n, generator=generator)[: min(n, 50 * clusters)]]
        centres = sample[torch.randperm(sample.shape[0], generator=generator)[:clusters]].clone()
        for _ in range(10):  # Lloyd's iterations on a sample: enough for a coarse partition
            nearest = torch.cdist(sample, centres).argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, nearest, sample)
            counts = torch.bincount(nearest, minlength=clusters).unsqueeze(1)
            centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
        step = 1 << 16
        assign = torch.cat(
            [torch.cdist(items[s : s + step], centres).argmin(1) for s in range(0, n, step)]
        )
        order = torch.argsort(assign, stable=True)
        self.counts = torch.bincount(assign, minlength=clusters)
        self.starts = torch.cumsum(self.counts, 0) - self.counts
        self.members = order + 1  # catalogue rows, grouped by cluster, in row order within
        size = self.counts.clamp(min=1).unsqueeze(1).to(items.dtype)
        features = side.features[1:]
        self.centre_features = (
            torch.zeros(clusters, features.shape[1], dtype=features.dtype).index_add_(
                0, assign, features
            )
            / size
        )
        self.centre_side = torch.zeros_like(centres).index_add_(0, assign, items) / size

    def rows(self, centre_scores: torch.Tensor) -> torch.Tensor:
        """Catalogue rows (ascending) of the best clusters for one task's centroid scores."""
        # Rounded and ordered by cluster index among ties, so a batch and a solo run agree.
        rounded = torch.round(centre_scores * 4096.0) / 4096.0
        order = torch.sort(rounded, descending=True, stable=True).indices
        covered = torch.cumsum(self.counts[order], 0)
        taken = order[: int(torch.searchsorted(covered, self.want).item()) + 1]
        parts = [self.members[self.starts[c] : self.starts[c] + self.counts[c]] for c in taken]
        return torch.sort(torch.cat(parts)).values

    def scores(
        self, adaptation: Adaptation, rows_needed: list[torch.Tensor | None]
    ) -> torch.Tensor:
        """``[B, N + 1]`` scores: each task's retrieved rows (plus ``rows_needed[i]``, rows it
        must have exactly, when given) scored exactly, every other row ``-inf``."""
        centre = self.side.scores(adaptation, self.centre_features, self.centre_side)
        batch = centre.shape[0]
        chosen = [self.rows(centre[i]) for i in range(batch)]
        for i, extra in enumerate(rows_needed):
            if extra is not None:
                chosen[i] = torch.unique(torch.cat([chosen[i], extra]))
        union = torch.unique(torch.cat(chosen))
        exact = self.side.scores(
            adaptation, self.side.features[union], self.side.item_side[union]
        )  # [B, |union|]
        out = torch.full((batch, self.side.features.shape[0]), -math.inf, dtype=exact.dtype)
        for i in range(batch):
            # Only the task's own rows: its answer must not depend on its batch neighbours.
            mine = torch.searchsorted(union, chosen[i])
            out[i, chosen[i]] = exact[i, mine]
        return out

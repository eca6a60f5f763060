"""An approximate first stage for large catalogues: score item clusters, then their items.

For MeLU's rating network under the closed-form local update (only the head adapts, one fixed
rate), :class:`melu.scoring.CachedItemSide` holds the catalogue's first-layer item side
``W_item x``, the part of the model that differs between items. :class:`ClusterRetrieval`
clusters items on it, so that a request scores the cluster centroids first and then only the
items of the best clusters (``MELU_RETRIEVAL_FRACTION``). Off by default, so that the service
ranks exactly as evaluation does. The taste model (the default preset) scores every item; its
per-item work is one dot product, and retrieval does not apply to it.
"""

from __future__ import annotations

import math

import torch

from melu.maml import Adaptation
from melu.scoring import CachedItemSide


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

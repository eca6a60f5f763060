"""EDLAE's fold-in of a support, blended into the taste model's list.

The strongest closed-form anchor on MeLU's cold-start users is EDLAE (Steck, NeurIPS 2020:
``B = I - P diag(1 / diag P)``, ``P = (X^T X + Lambda)^-1``, ``Lambda = p / (1 - p) diag(X^T X)
+ lambda I``, ``X`` the training users' binary ratings). Its scores ``x B`` for a support ``x``
and the taste model's ranking scores make different mistakes: on MeLU's validation users
(seed 0, half of them choosing the weight, the other half judging it) the blend
``z(rank) + alpha z(x B)`` (``z``: standardised over the user's candidates) listed better than
either alone from 3 and 5 ratings (Recall@10 0.363 / 0.392 against the model's 0.355 / 0.390
and EDLAE's 0.342 / 0.379) and tied them from 10 and 20.

:class:`FoldIn` keeps ``B`` as neighbour lists over the item-id vocabulary (each item's
``k`` entries of largest magnitude: EDLAE's negative weights matter; 512 of MeLU's 2,648
rated items ranked within 0.001 of the dense matrix on validation users, 256 lost up to
0.005) and ``alpha`` per support-size bucket (:data:`melu.taste.SCHEDULE_EDGES`), chosen with
the setting ``(p, lambda)`` on validation users once training ends (:mod:`melu.schedule`).
``alpha = 0`` leaves a user's scores exactly as the taste model gives them. The buffers are
sized when fitted or loaded, so a model without a fold-in carries none.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch import nn

# EDLAE's grid, as the anchor of melu.evaluation tunes it (its dropout p and regulariser).
DROPOUTS: tuple[float, ...] = (0.8, 0.9, 0.95)
REGULARISERS: tuple[float, ...] = (100.0, 300.0, 1000.0)
# Above this many rated items the dense inverse is not fitted (two [n, n] float64 arrays: 3.6
# GB at 15k; ml-25m's 55k items would need 48 GB). The model then ranks without the fold-in.
MAX_ITEMS = 15_000


def edlae_weights(
    users: np.ndarray, items: np.ndarray, dropout: float, l2: float
) -> tuple[np.ndarray, torch.Tensor]:
    """EDLAE's ``B`` over the items that have ratings: ``(rated item indices [n], B [n, n])``
    (zero diagonal) from the training (user, item-index) pairs. Two ``[n, n]`` arrays at most
    are alive at once."""
    rated, item_index = np.unique(items, return_inverse=True)
    user_index = pd.factorize(users)[0]
    x = sparse.csr_matrix(
        (np.ones(len(items)), (user_index, item_index)),
        shape=(int(user_index.max()) + 1 if len(items) else 0, len(rated)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    gram = torch.from_numpy((x.T @ x).toarray())
    diagonal = gram.diagonal()
    diagonal.copy_(diagonal / (1.0 - dropout) + l2)
    factor = torch.linalg.cholesky(gram)
    del gram, diagonal
    weights = torch.cholesky_inverse(factor)
    del factor
    weights.div_(-weights.diagonal().clone().unsqueeze(0))
    weights.fill_diagonal_(0.0)
    return rated, weights


class FoldIn(nn.Module):
    """EDLAE's neighbour lists (buffers ``index``/``value [V, k]``, empty until fitted) and
    the blend's weight per support-size bucket (``weight``, 0: off)."""

    def __init__(self, buckets: int, neighbours: int) -> None:
        super().__init__()
        self.neighbours = neighbours
        self.register_buffer("index", torch.zeros(0, 0, dtype=torch.long))
        self.register_buffer("value", torch.zeros(0, 0))
        self.register_buffer("weight", torch.zeros(buckets))
        self.index: torch.Tensor
        self.value: torch.Tensor
        self.weight: torch.Tensor

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The lists' shape is the fitted catalogue's: take it from the checkpoint.
        for name in ("index", "value"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.index.numel() > 0

    @torch.no_grad()
    def fit(self, users: np.ndarray, items: np.ndarray, n_items: int, dropout: float,
            l2: float) -> None:  # fmt: skip
        """Neighbour lists of EDLAE's ``B`` with dropout ``p`` and regulariser ``l2`` over
        item-id vocabulary indices ``0..n_items-1`` (0, the unknown item, has none)."""
        rated, weights = edlae_weights(users, items, dropout, l2)
        width = min(self.neighbours, max(len(rated) - 1, 1))
        index = torch.zeros(n_items, width, dtype=torch.long)
        value = torch.zeros(n_items, width)
        targets = torch.from_numpy(rated)
        # Rows a block at a time: the magnitudes of the whole matrix would be a third copy.
        for start in range(0, len(rated), 1024):
            block = weights[start : start + 1024]
            top = block.abs().topk(width, dim=1).indices
            rows = targets[start : start + 1024]
            index[rows] = targets[top]
            value[rows] = block.gather(1, top).to(value.dtype)
        index[0], value[0] = 0, 0.0
        device = self.weight.device
        self.index = index.to(device)
        self.value = value.to(device, self.weight.dtype)

    def scores(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[B, V]``: ``x B`` for supports ``ids [B, S]`` (vocabulary indices; ``mask``
        marks the real ones), ``x`` binary as EDLAE folds a user in."""
        batch = ids.shape[0]
        ids = ids * mask
        neighbours = self.index[ids]  # [B, S, k]
        values = self.value[ids] * mask.unsqueeze(-1).to(self.value.dtype)
        out = values.new_zeros(batch, self.index.shape[0])
        return out.scatter_add(1, neighbours.reshape(batch, -1), values.reshape(batch, -1))


def standardised(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Each row of ``scores [B, N]`` minus its mean, over its standard deviation, both taken
    over the ``allowed`` entries (the user's candidates)."""
    kept = allowed.to(scores.dtype)
    count = kept.sum(-1, keepdim=True).clamp(min=1.0)
    values = torch.where(allowed, scores, torch.zeros_like(scores))
    mean = values.sum(-1, keepdim=True) / count
    spread = (((values - mean) * kept) ** 2).sum(-1, keepdim=True) / count
    return (scores - mean) / spread.sqrt().clamp(min=1e-9)


def blend(
    rank: torch.Tensor, fold_in: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``z(rank) + weight z(fold_in)`` for the users whose ``weight [B]`` is not 0 (``z``:
    :func:`standardised` over ``allowed``); the other users' ``rank`` unchanged."""
    on = weight != 0
    if not bool(on.any()):
        return rank
    mixed = standardised(rank, allowed) + weight.unsqueeze(-1) * standardised(fold_in, allowed)
    return torch.where(on.unsqueeze(-1), mixed, rank)

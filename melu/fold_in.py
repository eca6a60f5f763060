"""EDLAE's fold-in of a support, blended into the taste model's list.

The strongest closed-form anchor on MeLU's cold-start users is EDLAE (Steck, NeurIPS 2020:
``B = I - P diag(1 / diag P)``, ``P = (X^T X + Lambda)^-1``, ``Lambda = p / (1 - p) diag(X^T X)
+ lambda I``, ``X`` the training users' binary ratings). Its scores ``x B`` for a support ``x``
and the taste model's ranking scores make different mistakes, so a blend of the two lists
better than either: ``z(rank) + alpha z(x B)`` (``z``: standardised over the recommendable
items the user has not rated; :func:`blend` computes the same order in the rank's units).
On MeLU's validation users the default preset's three runs chose ``alpha`` from 1/16 to
3/16 (``metrics.fold_in`` of each checkpoint), and new users' lists gained +0.013 / +0.010 /
+0.009 / +0.006 Recall@10 from 3 / 5 / 10 / 20 ratings (docs/results.md). ``x`` is binary,
every rated film a positive, as EDLAE folds a user in: weighing the films rated below 4
less, or negatively, listed worse on validation users.

:class:`FoldIn` keeps ``B`` as neighbour lists over the item-id vocabulary (each item's
``k`` entries of largest magnitude: EDLAE's negative weights matter. Of MeLU's 2,648 rated
items, 512 ranked validation users' lists within 0.0012 of the dense matrix in 11 of 12
seeds and sizes and 0.004 below it in the twelfth; 256 up to 0.006 below;
``benchmarks/blend_probe.py``) and ``alpha`` per support-size bucket
(:data:`melu.taste.SCHEDULE_EDGES`), chosen with the setting ``(p, lambda)`` on validation
users once training ends (:mod:`melu.schedule`).
``alpha = 0`` leaves a user's scores exactly as the taste model gives them. The buffers are
sized when fitted or loaded, so a model without a fold-in carries none.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch import nn

# EDLAE's grid, as the anchor of melu.evaluation tunes it (its dropout p and regulariser).
DROPOUTS: tuple[float, ...] = (0.8, 0.9, 0.95)
REGULARISERS: tuple[float, ...] = (100.0, 300.0, 1000.0)
# Above this many rated items the dense inverse is not fitted (three [n, n] float64 arrays
# alive at once: 5.4 GB at 15k; ml-25m's 55k items would need 73 GB). The model then ranks
# without the fold-in.
MAX_ITEMS = 15_000


class Gram(NamedTuple):
    """``X^T X`` of the training users' binary ratings over the items that have any
    (``rated``: their item indices), dense: what every EDLAE setting starts from."""

    rated: np.ndarray
    matrix: torch.Tensor


def edlae_gram(users: np.ndarray, items: np.ndarray) -> Gram:
    """:class:`Gram` from the training (user, item-index) pairs (a rating given twice counts
    once)."""
    rated, item_index = np.unique(items, return_inverse=True)
    user_index = pd.factorize(users)[0]
    x = sparse.csr_matrix(
        (np.ones(len(items)), (user_index, item_index)),
        shape=(int(user_index.max()) + 1 if len(items) else 0, len(rated)),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    return Gram(rated, torch.from_numpy((x.T @ x).toarray()))


def edlae_inverse(
    gram: torch.Tensor, dropout: float, l2: float, name: str = "edlae"
) -> torch.Tensor:
    """``P = (X^T X + Lambda)^-1``, ``Lambda = p / (1 - p) diag(X^T X) + l2 I`` (``p = 0``:
    EASE), from ``gram = X^T X`` (float64, left as it was) by one Cholesky factorisation;
    shared by the fold-in and the evaluation's EASE and EDLAE anchors. ``name`` says whose
    matrix is not invertible."""
    regularised = gram.clone()
    diagonal = regularised.diagonal()
    diagonal.copy_(diagonal / (1.0 - dropout) + l2)
    factor, info = torch.linalg.cholesky_ex(regularised)
    del regularised, diagonal
    if int(info) != 0:
        raise np.linalg.LinAlgError(f"{name}: X^T X + Lambda is not invertible")
    return torch.cholesky_inverse(factor)


def edlae_weights(gram: Gram, dropout: float, l2: float) -> torch.Tensor:
    """EDLAE's ``B [n, n]`` (zero diagonal) over ``gram.rated``, with dropout ``p`` and
    regulariser ``l2``; ``gram`` is left as it was."""
    weights = edlae_inverse(gram.matrix, dropout, l2)
    weights.div_(-weights.diagonal().clone().unsqueeze(0))
    weights.fill_diagonal_(0.0)
    return weights


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
        # The lists' shape is the fitted catalogue's: take it from the checkpoint (their dtype
        # and device stay this module's).
        for name in ("index", "value"):
            if prefix + name in state_dict:
                mine = getattr(self, name)
                shape = state_dict[prefix + name].shape
                setattr(self, name, torch.empty(shape, dtype=mine.dtype, device=mine.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def fitted(self) -> bool:
        return self.index.numel() > 0

    @torch.no_grad()
    def fit(self, gram: Gram, n_items: int, dropout: float, l2: float) -> None:
        """Neighbour lists of EDLAE's ``B`` with dropout ``p`` and regulariser ``l2`` over
        item-id vocabulary indices ``0..n_items-1`` (0, the unknown item, has none)."""
        rated = gram.rated
        weights = edlae_weights(gram, dropout, l2)
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
        # Float32 whatever the run's dtype: the lists are data, not weights that train.
        self.index = index.to(self.weight.device)
        self.value = value.to(self.weight.device)

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
    mean, spread = moments(scores, allowed)
    return (scores - mean) / spread


def moments(scores: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's mean and standard deviation (``[B, 1]`` each; at least 1e-9) over its
    ``allowed`` entries: what :func:`standardised` takes away and divides by."""
    kept = allowed.to(scores.dtype)
    count = kept.sum(-1, keepdim=True).clamp(min=1.0)
    values = torch.where(allowed, scores, torch.zeros_like(scores))
    mean = values.sum(-1, keepdim=True) / count
    spread = (((values - mean) * kept) ** 2).sum(-1, keepdim=True) / count
    return mean, spread.sqrt().clamp(min=1e-9)


class Blend(NamedTuple):
    """A batch's blended scores ``[B, N]`` and, per user, what one unit of ``x B`` adds to them
    (``scale [B]``: the weight times the rank's spread over the fold-in's; 0 where the user's
    list takes no fold-in), so that a listed item's score splits by support item."""

    scores: torch.Tensor
    scale: torch.Tensor


def blend(
    rank: torch.Tensor, fold_in: torch.Tensor, allowed: torch.Tensor, weight: torch.Tensor
) -> Blend:
    """For the users whose ``weight [B]`` is not 0, ``rank + weight s z(fold_in)`` (``z``:
    :func:`standardised` over ``allowed``; ``s``: the spread of ``rank`` there), which orders
    each user's candidates as ``z(rank) + weight z(fold_in)`` does; the other users' ``rank``
    unchanged.

    In the rank's own units, not in ``z``'s: the rank differs by float noise (~1e-7) between
    batch shapes, and dividing it by a spread below 1 would magnify that noise across the
    ranking grid (:func:`melu.ranking.batch_invariant`); the fold-in's scores do not depend
    on the batch."""
    on = weight != 0
    if not bool(on.any()):
        return Blend(rank, torch.zeros_like(weight))
    mean, spread = moments(fold_in, allowed)
    scale = weight.unsqueeze(-1) * moments(rank, allowed)[1] / spread
    mixed = rank + scale * (fold_in - mean)
    return Blend(torch.where(on.unsqueeze(-1), mixed, rank), scale[:, 0])

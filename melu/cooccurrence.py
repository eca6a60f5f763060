"""Item-item co-occurrence of the training users, the taste model's second view of a support.

The taste model's user vector passes a support through a ``taste_dim`` bottleneck; a film's
sequel, or the other films of a small director, are item-to-item facts that such a bottleneck
blurs. Closed-form fold-in recommenders keep them (EASE, GF-CF, RP3beta), and the strongest of
them on cold-start lists start from the same normalised co-occurrence (GF-CF's linear filter,
Shen et al., CIKM 2021):

    P = R~^T R~,   R~ = D_U^-1/2 R D_I^-1/2     (R: training users x items, binary)

so that ``P[j, i]`` sums, over the users who rated both ``j`` and ``i``, ``1 / (d_u sqrt(d_j
d_i))``. A taste model with the co-occurrence term (``ModelConfig.cooccurrence``; not the
default preset's since stop 34, which leaves the item-item view to EDLAE's fold-in,
:mod:`melu.fold_in`) adds ``beta * sum_j w_j P[j, i] / sqrt(n)`` to the logit of item ``i``
for a support of ``n`` items ``j`` with weights ``w_j`` (fast weights, like ``beta``).

Two details make this usable inside meta-training:

- **Leave the user out.** Training users' own ratings are in ``P``: their support co-occurs
  with their held-out items through themselves, so a model trained on that learns to trust
  ``P`` far more than it deserves for a new user (validation Recall@10 from 3 ratings fell
  from 0.35 to 0.30 before this). :meth:`Cooccurrence.scores` subtracts the user's own term,
  ``1 / (d_u sqrt(d_j d_i))`` for every pair of their items, exactly.
- **Neighbour lists.** Each item keeps its ``k`` largest entries (``k = 0``: all), stored as
  ``[V, k]`` index and value tensors over the item-id vocabulary, so that a support costs
  ``S x k`` work and the matrix fits at 87k items.

Rows and columns are item-id vocabulary indices (:data:`melu.objectives.ITEM_ID_COLUMN`);
index 0, the unknown item (new items), has no neighbours and is nobody's neighbour.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch import nn


def _normalised(users: np.ndarray, items: np.ndarray, n_items: int) -> sparse.csc_matrix:
    """``R~ = D_U^-1/2 R D_I^-1/2`` (binary ``R``: training users x items), by columns."""
    user_index = pd.factorize(users)[0]
    r = sparse.csr_matrix(
        (np.ones(len(items), dtype=np.float64), (user_index, items)),
        shape=(int(user_index.max()) + 1 if len(items) else 0, n_items),
    )
    r.sum_duplicates()
    r.data[:] = 1.0
    d_user = np.asarray(r.sum(1)).ravel()
    d_item = np.asarray(r.sum(0)).ravel()
    inv_u = sparse.diags(1.0 / np.sqrt(np.maximum(d_user, 1.0)))
    inv_i = sparse.diags(1.0 / np.sqrt(np.maximum(d_item, 1.0)))
    return sparse.csc_matrix(inv_u @ r @ inv_i)


def normalised_cooccurrence(
    users: np.ndarray, items: np.ndarray, n_items: int
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """``P = R~^T R~`` (diagonal zero) over item indices ``0..n_items-1`` and the items'
    degrees ``d_i``, from the (user, item) pairs of the training ratings (all of it at once:
    for tests and small catalogues; :func:`neighbour_lists` fits the model)."""
    normalised = _normalised(users, items, n_items)
    p = (normalised.T @ normalised).tocsr()
    p.setdiag(0.0)
    p.eliminate_zeros()
    return p, np.diff(normalised.indptr).astype(np.float64)


class Neighbours(NamedTuple):
    """Each item's ``k`` largest co-occurrence entries (``items``/``values [n, k]``, padded with
    index 0 and value 0), the items' degrees, and the standard deviation of every nonzero
    entry of ``P`` (its scale)."""

    items: np.ndarray
    values: np.ndarray
    degree: np.ndarray
    scale: float


def neighbour_lists(
    users: np.ndarray, items: np.ndarray, n_items: int, k: int, block: int = 1024
) -> Neighbours:
    """:class:`Neighbours` of ``P = R~^T R~`` computed ``block`` items at a time, so that
    memory stays at ``block x n_items`` whatever the catalogue (87k items: ``P`` itself would
    hold billions of entries). Rows are largest first, ties by index."""
    normalised = _normalised(users, items, n_items)
    degree = np.diff(normalised.indptr).astype(np.float64)
    width = max(1, k)
    index = np.zeros((n_items, width), dtype=np.int64)
    value = np.zeros((n_items, width), dtype=np.float32)
    total = total_sq = count = 0.0
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        rows = np.asarray((normalised[:, start:stop].T @ normalised).todense())
        rows[np.arange(stop - start), np.arange(start, stop)] = 0.0
        nonzero = rows[rows != 0]
        total, total_sq, count = (
            total + nonzero.sum(),
            total_sq + (nonzero**2).sum(),
            count + nonzero.size,
        )
        # The k largest (a partition), then largest first, ties by index (a stable sort of
        # the index-sorted candidates).
        if width < rows.shape[1]:
            top = np.sort(np.argpartition(-rows, width - 1, axis=1)[:, :width], axis=1)
        else:
            top = np.broadcast_to(np.arange(rows.shape[1]), rows.shape).copy()
        candidates = np.take_along_axis(rows, top, axis=1)
        order = np.take_along_axis(top, np.argsort(-candidates, axis=1, kind="stable"), axis=1)
        order = order[:, :width]
        values = np.take_along_axis(rows, order, axis=1)
        order[values == 0] = 0
        # A catalogue smaller than k leaves the rest of each row as padding.
        index[start:stop, : order.shape[1]] = order
        value[start:stop, : order.shape[1]] = values
    mean = total / max(count, 1.0)
    variance = total_sq / max(count, 1.0) - mean**2
    scale = float(np.sqrt(variance)) if count > 1 and variance > 0 else 1.0
    return Neighbours(index, value, degree, scale)


class Cooccurrence(nn.Module):
    """The neighbour lists as buffers (saved in the checkpoint, no gradient)."""

    def __init__(self, n_items: int, neighbours: int) -> None:
        super().__init__()
        width = max(neighbours, 1) if neighbours > 0 else max(n_items - 1, 1)
        self.register_buffer("index", torch.zeros(n_items, width, dtype=torch.long))
        self.register_buffer("value", torch.zeros(n_items, width))
        # 1 / sqrt(d_i) per item and the value scale, for the leave-the-user-out term.
        self.register_buffer("inv_sqrt_degree", torch.zeros(n_items))
        self.register_buffer("scale", torch.ones(()))
        self.index: torch.Tensor
        self.value: torch.Tensor
        self.inv_sqrt_degree: torch.Tensor
        self.scale: torch.Tensor

    @torch.no_grad()
    def fit(self, users: np.ndarray, items: np.ndarray) -> None:
        """Fill the buffers from the training ratings' (user, item-index) pairs. Values are
        divided by the standard deviation of the nonzero entries, so that the trust starts on
        the scale of the other logit terms whatever the data."""
        n_items, width = self.index.shape
        found = neighbour_lists(users, items, n_items, width)
        self.index.copy_(torch.from_numpy(found.items))
        self.value.copy_(torch.from_numpy(found.values / found.scale))
        inverse = 1.0 / np.sqrt(np.maximum(found.degree, 1.0))
        self.inv_sqrt_degree.copy_(torch.from_numpy(inverse))
        self.inv_sqrt_degree[0] = 0.0
        self.scale.fill_(found.scale)

    def scores(
        self,
        ids: torch.Tensor,
        weights: torch.Tensor,
        own: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B, V]``: ``sum_j weights[b, j] * P[ids[b, j], :]`` for supports ``ids [B, S]``
        (vocabulary indices, 0 = padding or unknown) and ``weights [B, S]``.

        ``own [B, V]`` (training only): each user's own items (1, else 0); their own term of
        ``P`` is subtracted (see the module docstring), as if they were not in the data.
        """
        batch = ids.shape[0]
        neighbours = self.index[ids]  # [B, S, k]
        values = self.value[ids]  # [B, S, k]
        if own is not None:
            count = own.sum(1).clamp(min=1.0)  # d_u
            mine = own.gather(1, neighbours.reshape(batch, -1)).view_as(values)
            self_term = (
                self.inv_sqrt_degree[ids].unsqueeze(-1)
                * self.inv_sqrt_degree[neighbours]
                / (count.view(batch, 1, 1) * self.scale)
            )
            values = values - mine * self_term
        contributions = (weights.unsqueeze(-1) * values).reshape(batch, -1)
        out = weights.new_zeros(batch, self.index.shape[0])
        return out.scatter_add(1, neighbours.reshape(batch, -1), contributions)

"""Rank a catalogue for adapted users: what the service serves is what evaluation measures.

``/recommend`` and the catalogue protocol of :mod:`melu.evaluation` both go through these
functions, so that what is evaluated is exactly what is served:

- :func:`catalogue_scores` turns a batch of adaptations into ranking scores ``[B, R]`` over
  every catalogue row (row 0, the padding item, included so that rows index it directly);
- :func:`rank` orders allowed rows by score, best first, ties broken by row. Catalogue rows are
  in item-id order (:meth:`melu.data.Catalogue.build` sorts them), so ties go to the smaller
  item id and the same scores always give the same list;
- :func:`top_k_row` is the same order for one user, cheaper when ``k`` is small;
- :func:`rank_top` is its first ``k`` entries for a batch, without sorting whole rows;
- :func:`batch_invariant` rounds scores first, so that batching never reorders near ties.
"""

from __future__ import annotations

import torch

from melu.maml import Adaptation, MetaLearner

# Items per chunk when the encoder adapts and each user needs its own item embeddings.
PREDICT_CHUNK = 65_536
# Ranking grid (2**-12, exact in binary floating point). A user's scores differ by about 1e-6
# between a batched and a solo run (padding changes the summation order), which swapped
# near-tied items; rounding to this grid first turns such near ties into exact ties, which
# item ids break. See :func:`batch_invariant`.
RANK_GRID = 4096.0


def batch_invariant(scores: torch.Tensor) -> torch.Tensor:
    """Scores rounded to the :data:`RANK_GRID`, so that a ranking does not depend on which
    users were scored together (the service's micro-batches, evaluation's batches).

    Float noise between a batched and a solo computation is about 1e-6, two orders below the
    grid step (2.4e-4), so two items keep their order unless one of them lies within that noise
    of a grid boundary; items that round to the same value tie exactly and are ordered by id.
    """
    return torch.round(scores * RANK_GRID) / RANK_GRID


def catalogue_scores(
    learner: MetaLearner,
    adaptation: Adaptation,
    users: torch.Tensor,
    table: torch.Tensor,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ranking scores ``[B, R]`` of every row of ``table`` (``[R, W]`` feature ids).

    ``features`` (``learner.item_features(table)``, computed once) is the fast path when only
    the head adapts; without it, or when the encoder adapts, items are embedded per user in
    chunks. Call under ``torch.no_grad()`` in eval mode.
    """
    return catalogue_scores_and_ratings(learner, adaptation, users, table, features)[0]


def catalogue_scores_and_ratings(
    learner: MetaLearner,
    adaptation: Adaptation,
    users: torch.Tensor,
    table: torch.Tensor,
    features: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`catalogue_scores` and the predicted ratings ``[B, R]`` it ranks with (the same
    tensor for a rating-only model)."""
    if features is None and learner.head_only:
        features = learner.item_features(table)
    if features is not None:
        ratings = learner.predict_from_features(adaptation, users, features)
        return learner.rank_scores(adaptation, users, features, ratings), ratings
    batch = users.shape[0]
    step = max(1, PREDICT_CHUNK // batch)
    parts = [
        learner.predict(adaptation, users, table[start : start + step].expand(batch, -1, -1))
        for start in range(0, table.shape[0], step)
    ]
    ratings = torch.cat(parts, dim=1)
    if learner.watch is None:
        return ratings, ratings
    # The watch tower never adapts its item side: hand rank_scores the watch part of the item
    # features (the rating part is unused once the ratings are given).
    watch_side = learner.watch.item_out(table)
    rating_side = watch_side.new_zeros(table.shape[0], learner.net.encoder.item_dim)
    features = torch.cat([rating_side, watch_side], dim=-1)
    return learner.rank_scores(adaptation, users, features, ratings), ratings


def rank(scores: torch.Tensor, allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of each user ordered best first: ``(order [B, R], n_allowed [B])``.

    ``allowed`` (``[B, R]`` or ``[R]``, bool) says which rows may be recommended; the first
    ``n_allowed[b]`` entries of ``order[b]`` are exactly those rows, by descending score, ties
    by row; the rest are the disallowed rows. NaN scores rank last among the allowed rows.
    """
    allowed = allowed.expand_as(scores)
    keyed = torch.where(torch.isnan(scores), torch.full_like(scores, -torch.inf), scores)
    # Disallowed rows go below every allowed one, whatever their score; a stable sort of the
    # pair (allowed, score) keeps row order among equal keys.
    keyed = torch.where(allowed, keyed, torch.full_like(keyed, -torch.inf))
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(~allowed.gather(1, order), dim=1, stable=True).indices)
    return order, allowed.sum(1)


def rank_top(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` entries of :func:`rank`'s order, ``[B, k]`` (every user needs at least
    ``k`` allowed rows).

    Sorting whole rows dominates measuring thousands of users' lists over thousands of
    candidates, so only the ``k`` rows that :func:`rank` puts first are found (those above the
    k-th best score, then the ones tied with it in row order) and sorted.
    """
    allowed = allowed.expand_as(scores)
    if int(allowed.sum(1).min()) < k:
        raise ValueError(f"fewer than {k} allowed rows for some user")
    keyed = torch.where(torch.isnan(scores) | ~allowed, -torch.inf, scores)
    kth = torch.topk(keyed, k, dim=1).values[:, -1:]
    above = keyed > kth
    # An allowed row scored -inf (NaN) still goes before every disallowed row, as in rank().
    tied = (keyed == kth) & allowed
    chosen = above | (tied & (tied.cumsum(1) <= k - above.sum(1, keepdim=True)))
    rows = chosen.nonzero()[:, 1].view(-1, k)  # ascending within each user
    order = torch.sort(keyed.gather(1, rows), dim=1, descending=True, stable=True).indices
    return rows.gather(1, order)


def top_k_row(scores: torch.Tensor, pool: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` best rows of ``pool`` (ascending rows) for one user's ``scores`` ``[R]``.

    The same order as :func:`rank`: descending score, ties by row. Sorting a whole catalogue
    per request costs more than the rest of the selection, so only the rows tied with or above
    the k-th best are sorted.
    """
    if pool.numel() == 0 or k <= 0:
        return pool[:0]
    values = scores[pool]
    values = torch.where(torch.isnan(values), torch.full_like(values, -torch.inf), values)
    k = min(k, values.numel())
    if k < values.numel():
        kth = torch.topk(values, k, sorted=False).values.min()
        near = torch.nonzero(values >= kth).squeeze(1)  # ascending: row order
        order = near[torch.sort(values[near], descending=True, stable=True).indices[:k]]
    else:
        order = torch.sort(values, descending=True, stable=True).indices
    return pool[order]

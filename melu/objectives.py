"""The watch objective: cold-start episodes and the multinomial likelihood over the catalogue.

MeLU's tasks have a support of all but 10 of a user's ratings (3 to 90 items). A catalogue
ranker is asked to work from a handful, so each training task also yields an episode that looks
like cold start: a support of uniform size in ``MetaConfig.watch_support`` drawn from all the
user's ratings, and every other rating a softmax target (denoising-autoencoder style, as in
Mult-DAE). The softmax runs over the items that have training ratings, minus the support
(evaluation never recommends an item the user has rated).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from melu.features import SCALAR_ITEM_FIELDS
from melu.tasks import TaskBatch

# Column of the item id in an encoded item table: 0 for items without training ratings (the
# id vocabulary is fitted on the training items), so "id > 0" means "has training ratings".
ITEM_ID_COLUMN = SCALAR_ITEM_FIELDS.index("item")


class WatchEpisode(NamedTuple):
    """A batch of cold-start episodes: support features and target catalogue rows.

    ``users [B, U]`` and ``x_spt [B, S, W]`` are feature ids, ``rows_spt [B, S]`` the support's
    catalogue rows, ``y_spt``/``mask_spt`` ``[B, S]``; ``targets [B, T]`` are catalogue rows
    with ``weights [B, T]`` (0 on padding and on ratings that are not targets).
    """

    users: torch.Tensor
    x_spt: torch.Tensor
    rows_spt: torch.Tensor
    y_spt: torch.Tensor
    mask_spt: torch.Tensor
    targets: torch.Tensor
    weights: torch.Tensor


def sample_episodes(
    batch: TaskBatch,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    sizes: tuple[int, int],
    target_min: float = 1.0,
    generator: torch.Generator | None = None,
) -> WatchEpisode:
    """One episode per task of ``batch`` from all its ratings (support and query), drawn with
    ``generator`` (default: torch's, so a resumed run draws the same). A task keeps at least
    one rating outside its support."""
    items = torch.cat([batch.x_spt, batch.x_qry], dim=1)  # [B, L]
    ratings = torch.cat([batch.y_spt, batch.y_qry], dim=1)
    mask = torch.cat([batch.mask_spt, batch.mask_qry], dim=1)
    n = mask.sum(1)
    low, high = sizes
    top = torch.minimum(torch.full_like(n, high), n - 1).clamp(min=low)
    draw = torch.rand(n.shape, device=n.device, generator=generator)
    size = torch.minimum(low + (draw * (top - low + 1)).long(), top)
    keys = torch.rand(mask.shape, device=mask.device, generator=generator)
    keys = keys.masked_fill(~mask, 2.0)
    order = keys.argsort(dim=1)  # real ratings first, in random order
    items, ratings = items.gather(1, order), ratings.gather(1, order)
    position = torch.arange(items.shape[1], device=items.device).unsqueeze(0)
    real = position < n.unsqueeze(1)
    # A task with fewer ratings than the smallest support (an empty padding task) keeps them all.
    in_support = (position < size.unsqueeze(1)) & real
    # Always the largest size, so that a compiled loss sees one shape.
    width = min(high, items.shape[1])
    rows_spt = items[:, :width] * in_support[:, :width]
    is_target = ~in_support & real & (ratings >= target_min)
    return WatchEpisode(
        users=user_table[batch.users],
        x_spt=item_table[rows_spt],
        rows_spt=rows_spt,
        y_spt=ratings[:, :width] * in_support[:, :width],
        mask_spt=in_support[:, :width],
        targets=items * is_target,
        weights=is_target.to(batch.y_spt.dtype),
    )


def candidates(
    trainable: torch.Tensor, rows_spt: torch.Tensor, mask_spt: torch.Tensor
) -> torch.Tensor:
    """``[B, R]``: rows that may be recommended (``trainable [R]``) minus each support."""
    allowed = trainable.unsqueeze(0).expand(rows_spt.shape[0], -1).clone()
    rows = torch.where(mask_spt, rows_spt, torch.zeros_like(rows_spt))
    allowed.scatter_(1, rows, False)
    # Row 0 is padding; a support masked entry points at it, and it is never a candidate.
    allowed[:, 0] = False
    return allowed


def multinomial_nll(
    logits: torch.Tensor, allowed: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Mean negative log-likelihood ``[B]`` of each task's targets under a softmax of
    ``logits [B, R]`` over its ``allowed [B, R]`` rows; ``targets``/``weights`` ``[B, T]``."""
    masked = logits.masked_fill(~allowed, float("-inf"))
    log_p = torch.log_softmax(masked, dim=-1).gather(1, targets)
    # A padded target points at row 0 (log p = -inf): zero it before weighting, not after.
    log_p = torch.where(weights > 0, log_p, torch.zeros_like(log_p))
    return -(log_p * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def support_order_loss(
    scores: torch.Tensor, ratings: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """``[B]``: mean over pairs of support items with ``rating_a > rating_b`` of
    ``softplus(score_b - score_a)`` (BPR's loss), 0 for a task without such a pair.
    ``scores``/``ratings``/``mask`` are ``[B, S]``."""
    pairs = (ratings.unsqueeze(2) > ratings.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
    margin = scores.unsqueeze(2) - scores.unsqueeze(1)  # [B, S(higher), S(lower)]
    weight = pairs.to(scores.dtype)
    # softplus(-margin) on the pairs only: elsewhere it could be inf * 0.
    loss = torch.nn.functional.softplus(-margin.masked_fill(~pairs, 0.0)) * weight
    return loss.sum((1, 2)) / weight.sum((1, 2)).clamp(min=1.0)

"""The taste objective's episodes, the one "candidates minus support", the catalogue softmax.

MeLU's tasks have a support of all but 10 of a user's ratings (3 to 90 items). A catalogue
ranker is asked to work from a handful, so each training task also yields an episode that looks
like cold start: a support of uniform size in ``MetaConfig.episode_support`` drawn from all the
user's ratings, every other rating a target (denoising-autoencoder style, as in Mult-DAE): the
liked ones for a softmax over the recommendable items minus the support (evaluation never
recommends an item the user has rated), all of them for the rating's squared error.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from melu.features import SCALAR_ITEM_FIELDS
from melu.tasks import TaskBatch

# Column of the item id in an encoded item table: 0 for items without training ratings (the
# id vocabulary is fitted on the training items), so "id > 0" means "has training ratings".
ITEM_ID_COLUMN = SCALAR_ITEM_FIELDS.index("item")


class Episode(NamedTuple):
    """A batch of cold-start episodes drawn from training tasks.

    ``users [B, U]`` and ``x_spt [B, S, W]`` are feature ids, ``rows_spt [B, S]`` the support's
    catalogue rows, ``y_spt``/``mask_spt`` ``[B, S]``. Every other rating of the task is a
    target: ``targets [B, T]`` catalogue rows (0: padding) with ``target_ratings`` and
    ``target_mask``; ``liked [B, T]`` weighs the ones the softmax predicts (1 where the rating
    is at least the liked rating, else 0). ``own [B, V]`` marks each user's items by item-id
    vocabulary index (all their training ratings: the co-occurrence leaves them out), or is
    None.
    """

    users: torch.Tensor
    x_spt: torch.Tensor
    rows_spt: torch.Tensor
    y_spt: torch.Tensor
    mask_spt: torch.Tensor
    targets: torch.Tensor
    target_ratings: torch.Tensor
    target_mask: torch.Tensor
    liked: torch.Tensor
    own: torch.Tensor | None


def sample_episodes(
    batch: TaskBatch,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    sizes: tuple[int, int],
    liked: float,
    vocab_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Episode:
    """One episode per task of ``batch`` from all its ratings (support and query), drawn with
    ``generator`` (default: torch's, so a resumed run draws the same): a support of uniform
    size in ``sizes`` (at most all but one rating), the rest targets. ``vocab_size``: fill
    ``own`` (training)."""
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
    is_target = ~in_support & real
    own = None
    if vocab_size is not None:
        ids = item_table[items * real, ITEM_ID_COLUMN]
        own = torch.zeros(items.shape[0], vocab_size, dtype=ratings.dtype, device=items.device)
        own.scatter_(1, ids, 1.0)
        own[:, 0] = 0.0
    return Episode(
        users=user_table[batch.users],
        x_spt=item_table[rows_spt],
        rows_spt=rows_spt,
        y_spt=ratings[:, :width] * in_support[:, :width],
        mask_spt=in_support[:, :width],
        targets=items * is_target,
        target_ratings=ratings * is_target,
        target_mask=is_target,
        liked=(is_target & (ratings >= liked)).to(ratings.dtype),
        own=own,
    )


def recommendable_rows(table: torch.Tensor) -> torch.Tensor:
    """``[R]``: the rows of an encoded catalogue ``table`` that have training ratings (a known
    item id). What :attr:`melu.data.Catalogue.recommendable` stores; row 0 (padding) never."""
    out = table[:, ITEM_ID_COLUMN] > 0
    out[0] = False
    return out


def candidates(
    recommendable: torch.Tensor, rows_spt: torch.Tensor, mask_spt: torch.Tensor
) -> torch.Tensor:
    """``[B, R]``: the rows that may be recommended (``recommendable [R]``, the catalogue's
    one recommendable set) minus each user's support rows. The one definition of "candidates
    minus support": training's softmax, evaluation and ``/recommend`` all use it."""
    allowed = recommendable.unsqueeze(0).expand(rows_spt.shape[0], -1).clone()
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

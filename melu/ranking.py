"""Rank a catalogue for adapted users: what the service serves is what evaluation measures.

``/recommend``, the catalogue protocol of :mod:`melu.evaluation` and training's model
selection all order rows with these functions, from the scores of
:class:`melu.scoring.CatalogueScorer`:

- :func:`rank` orders allowed rows by score, best first, ties broken by row. Catalogue rows are
  in item-id order (:meth:`melu.data.Catalogue.build` sorts them), so ties go to the smaller
  item id and the same scores always give the same list. Rows that do not clear the user's
  own mean (``above_floor``, where the model keeps that floor) come after every row that does:
  a list holds a film predicted below the user's average only once nothing else is left;
- :func:`rank_top` is its first ``k`` entries for a batch, without sorting whole rows;
- :func:`top_k_row` is the same order for one user, cheaper when ``k`` is small;
- :func:`batch_invariant` rounds scores first, so that batching never reorders near ties;
- :func:`hits_in_top` counts the relevant rows of those first ``k``, and
  :func:`hits_in_top_blends` does so for a blend of two scores at many weights at once.

"Candidates minus support" has one definition, :func:`melu.objectives.candidates`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# Ranking grid (2**-12, exact in binary floating point). A user's scores differ by about 1e-6
# between a batched and a solo run (padding changes the summation order), which swapped
# near-tied items; rounding to this grid first turns such near ties into exact ties, which
# item ids break. See :func:`batch_invariant`.
RANK_GRID = 4096.0
# Only a movie the user loved explains a recommendation: "because you rated X" reads as
# "because you liked X", and citing a 1- or 3-star rating misled.
BECAUSE_MIN_RATING = 4.0


def batch_invariant(scores: torch.Tensor) -> torch.Tensor:
    """Scores rounded to the :data:`RANK_GRID`, so that a ranking does not depend on which
    users were scored together (the service's micro-batches, evaluation's batches).

    Float noise between a batched and a solo computation is about 1e-6, two orders below the
    grid step (2.4e-4), so two items keep their order unless one of them lies within that noise
    of a grid boundary; items that round to the same value tie exactly and are ordered by id.
    """
    return torch.round(scores * RANK_GRID) / RANK_GRID


def rank(
    scores: torch.Tensor, allowed: torch.Tensor, above_floor: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of each user ordered best first: ``(order [B, R], n_allowed [B])``.

    ``allowed`` (``[B, R]`` or ``[R]``, bool) says which rows may be recommended; the first
    ``n_allowed[b]`` entries of ``order[b]`` are exactly those rows: first those ``above_floor``
    (``[B, R]``; None: all), then the others, each by descending score, ties by row; the rest
    are the disallowed rows. NaN scores rank last within their tier.
    """
    allowed = allowed.expand_as(scores)
    keyed = torch.where(torch.isnan(scores), torch.full_like(scores, -torch.inf), scores)
    order = torch.sort(keyed, dim=1, descending=True, stable=True).indices
    # Stable sorts on the coarser keys keep the score order within each tier: the rows above
    # the floor, then the rest, then the disallowed rows, whatever their scores.
    if above_floor is not None:
        below = ~above_floor.expand_as(scores).gather(1, order)
        order = order.gather(1, torch.sort(below.to(torch.int8), dim=1, stable=True).indices)
    order = order.gather(1, torch.sort(~allowed.gather(1, order), dim=1, stable=True).indices)
    return order, allowed.sum(1)


def rank_top(
    scores: torch.Tensor,
    allowed: torch.Tensor,
    k: int,
    above_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first ``k`` entries of :func:`rank`'s order, ``[B, k]`` (every user needs at least
    ``k`` allowed rows).

    Sorting whole rows dominates measuring thousands of users' lists over thousands of
    candidates, so only the ``k`` rows that :func:`rank` puts first are found (those above the
    k-th best score, then the ones tied with it in row order) and sorted. With a floor, the
    users who have ``k`` allowed rows above it take them alone; the few others go through
    :func:`rank`.
    """
    allowed = allowed.expand_as(scores)
    if above_floor is not None:
        clear = allowed & above_floor.expand_as(scores)
        enough = clear.sum(1) >= k
        out = torch.empty(scores.shape[0], k, dtype=torch.long, device=scores.device)
        if bool(enough.any()):
            out[enough] = rank_top(scores[enough], clear[enough], k)
        if not bool(enough.all()):
            rest = ~enough
            out[rest] = rank(scores[rest], allowed[rest], above_floor.expand_as(scores)[rest])[0][
                :, :k
            ]
        return out
    if int(allowed.sum(1).min()) < k:
        raise ValueError(f"fewer than {k} allowed rows for some user")
    keyed = torch.where(torch.isnan(scores) | ~allowed, -torch.inf, scores)
    kth = torch.topk(keyed, k, dim=1).values[:, -1:]
    above = keyed > kth
    # An allowed row scored -inf (NaN) still goes before every disallowed row, as in rank().
    tied = (keyed == kth) & allowed
    # Of the rows tied with the k-th best, the first ones in row order fill the list. Most
    # users have no tie to break, and a cumulative sum over every candidate of every user was
    # a tenth of this function's time: it is taken only where ties are left out.
    room = k - above.sum(1, keepdim=True)
    excess = (tied.sum(1, keepdim=True) > room).squeeze(1)
    chosen = above | tied
    if bool(excess.any()):
        chosen[excess] = above[excess] | (tied[excess] & (tied[excess].cumsum(1) <= room[excess]))
    rows = chosen.nonzero()[:, 1].view(-1, k)  # ascending within each user
    order = torch.sort(keyed.gather(1, rows), dim=1, descending=True, stable=True).indices
    return rows.gather(1, order)


def top_k_row(
    scores: torch.Tensor, pool: torch.Tensor, k: int, above_floor: torch.Tensor | None = None
) -> torch.Tensor:
    """The ``k`` best rows of ``pool`` (ascending rows) for one user's ``scores`` ``[R]``.

    The same order as :func:`rank`: the rows ``above_floor`` (``[R]``; None: all) first, each
    tier by descending score, ties by row. Sorting a whole catalogue per request costs more
    than the rest of the selection, so only the rows tied with or above the k-th best are
    sorted.
    """
    if pool.numel() == 0 or k <= 0:
        return pool[:0]
    if above_floor is not None:
        keep = above_floor[pool]
        first = top_k_row(scores, pool[keep], k)
        if first.numel() >= k:
            return first
        return torch.cat([first, top_k_row(scores, pool[~keep], k - first.numel())])
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


def hits_in_top(
    scores: torch.Tensor,
    allowed: torch.Tensor,
    relevant: torch.Tensor,
    k: int,
    above_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B]``: how many ``relevant`` rows each user's first ``k`` rows of :func:`rank` hold."""
    allowed = allowed.expand_as(scores)
    if int(allowed.sum(1).min()) >= k:
        top = rank_top(scores, allowed, k, above_floor)
    else:
        top = rank(scores, allowed, above_floor)[0][:, :k]
    return relevant.gather(1, top).sum(1)


def hits_in_top_blends(
    first: torch.Tensor,
    second: torch.Tensor,
    weights: Sequence[float],
    allowed: torch.Tensor,
    relevant: torch.Tensor,
    k: int,
    above_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[W, B]``: :func:`hits_in_top` of the blends ``first + w * second`` (``first`` where
    ``w`` is 0) for every weight, equal to it row by row, in one pass per weight.

    Choosing a blend's weight ranks every validation list at a dozen weights for each of
    nine fold-in settings. A hit count needs the set of the first ``k`` rows, not their order:
    the rows that compete for the list (``pool``: the allowed rows, or with a floor, those
    above it, or for a user with fewer than ``k`` of those, the rows below it once all of
    them are in) hold a relevant row in the list when its score reaches the score a user's
    list ends on. Only where rows tie on that score and some of them are left out (the
    tie goes to the lower row) is the user's list ranked in full. ``relevant`` must hold only
    allowed rows, as :func:`melu.objectives.candidates` gives them.
    """
    allowed = allowed.expand_as(first)
    rows = first.shape[1]
    pool, base = allowed, torch.zeros_like(allowed)
    if above_floor is not None:
        clear = allowed & above_floor.expand_as(first)
        short = clear.sum(1, keepdim=True) < k
        pool = torch.where(short, allowed & ~clear, clear)
        base = clear & short
    # A sum is finite only if every term is (or it overflows: then ranking in full is exact too).
    finite = bool(torch.isfinite(first.sum() + second.sum()))
    if rows <= k or not finite:  # ties at -inf, a short catalogue: rank in full
        return torch.stack(
            [
                hits_in_top(first + w * second if w else first, allowed, relevant, k, above_floor)
                for w in weights
            ]
        )
    n = len(weights)
    scale = torch.tensor(list(weights), dtype=first.dtype, device=first.device).view(-1, 1, 1)
    # Rows out of the pool score -inf at every weight. w * second, then first added in place:
    # the blend's own two roundings (a fused multiply-add would round once and differ), and
    # 0 * second adds nothing, so the weight 0 gives first itself, bit for bit.
    keyed = (scale * torch.where(pool, second, 0.0)).add_(torch.where(pool, first, -torch.inf))
    room = (k - base.sum(1)).view(1, -1, 1).expand(n, -1, 1)
    best = torch.topk(keyed, k + 1, dim=-1).values
    last, after = best.gather(-1, room - 1), best.gather(-1, room)
    # A relevant row in the pool is in the list when it scores at least the list's last row.
    user, row = torch.nonzero(relevant & pool, as_tuple=True)
    reached = (keyed[:, user, row] >= last[:, user, 0]).long()
    hits = torch.zeros(n, first.shape[0], dtype=torch.long, device=first.device)
    hits.index_add_(1, user, reached).add_((relevant & base).sum(1))
    # The list ends inside a run of tied rows: rank those users' lists in full.
    cut = ((after == last) & (last > -torch.inf)).squeeze(-1)
    for i, weight in enumerate(weights):
        users = torch.nonzero(cut[i]).squeeze(1)
        if users.numel():
            scores = first[users] + weight * second[users] if weight else first[users]
            floor = None if above_floor is None else above_floor.expand_as(first)[users]
            hits[i, users] = hits_in_top(scores, allowed[users], relevant[users], k, floor)
    return hits

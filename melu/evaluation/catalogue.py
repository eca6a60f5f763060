"""The catalogue protocol: the list a new user gets from a few ratings, as ``/recommend`` serves it.

For each evaluated user and each number of ratings ``S`` their history allows, ``S`` of their
ratings are drawn with a seed as the support; the rest are held out. Every method ranks every
candidate item not in the support from those ``S`` ratings alone, and the list is judged on the
held-out ratings:

- ``catalogue``: validation and new users; candidates are the items with training ratings;
  relevant are held-out items rated >= 4 (``liked``) or any held-out item (``watched``);
- ``shelf`` (new releases): users of the new-item scenarios, a support of ``S`` ratings of new
  items; candidates are the new items (those of the new-item scenarios, none with training
  ratings); relevant: the other new items they rated >= 4 (or any).

The model adapts on the support and scores the catalogue through
:class:`melu.scoring.CatalogueScorer`, exactly as the service does (:func:`model_scores`);
every method's list, the model's and the baselines' (:mod:`melu.evaluation.rankers`,
:mod:`melu.evaluation.anchors`), is in :func:`melu.ranking.rank`'s order (rated items excluded,
ties by item id; for a model that keeps the ranking floor, rows predicted below the user's own
mean after the others), of which :func:`melu.ranking.rank_top` finds the first rows. The
baselines' settings are chosen per ``S`` on validation users (:func:`tune`).

The model's predicted ratings are judged on the same held-out items (:func:`rating_fit`:
error and calibration), on the support itself (:func:`support_pairs`: are top-rated support
items predicted above bottom-rated ones?) and on the list (:func:`share_above`: how much of the
top 10 is predicted at or above the user's own mean).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeAlias

import numpy as np
import torch

from melu.config import RatingScale
from melu.data import ColdStartData
from melu.evaluation import metrics as M
from melu.evaluation.rankers import Ranker, Setting, Supports
from melu.ranking import batch_invariant, rank_top
from melu.scoring import CatalogueScorer

log = logging.getLogger(__name__)

SUPPORT_SIZES: tuple[int, ...] = (3, 5, 10, 20)
# The predicted ratings are also judged from a single rating and from fifty (issue 17: "ratings
# that make sense for 1..50 ratings"), where the scenario's users have that many.
RATING_SIZES: tuple[int, ...] = (1, 3, 5, 10, 20, 50)
# The liked threshold on either scale (whole stars 1..5 or half stars 0.5..5.0).
LIKED = 4.0
RELEVANCE: tuple[str, ...] = ("liked", "watched")
# Which users each protocol evaluates, by scenario.
CATALOGUE_SCENARIOS: tuple[str, ...] = ("validation", "new_user")
SHELF_SCENARIOS: tuple[str, ...] = ("new_item", "new_user_new_item")
TOP = 10  # the list a person sees; coverage and popularity are measured on it
# Added to the scores of the rows above the floor when positions are counted (judge).
FLOOR_TIER = 1e6
GENRE_TEST_GENRES = 10
GENRE_TEST_LOVED = 5
GENRE_TEST_HATED = 3


@dataclass(frozen=True)
class Cases:
    """One scenario's users with ``S`` support ratings each, and what is held out."""

    scenario: str
    protocol: str  # "catalogue" | "shelf"
    size: int  # S
    user_ids: np.ndarray  # [n] raw user ids
    user_rows: np.ndarray  # [n] rows of the user table
    supports: Supports  # [n, S]
    heldout_rows: np.ndarray  # [n, H] catalogue rows, 0 = padding
    heldout_ratings: np.ndarray  # [n, H]
    candidates: np.ndarray  # [R] bool: rows that may be recommended (before the support)
    # allowed() and relevant(), computed once: every method's lists are judged on them.
    _masks: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.user_ids)

    def allowed(self) -> np.ndarray:
        """``[n, R]``: candidates minus each user's support (what the service excludes).
        Shared by every caller: not to be modified."""
        if "allowed" not in self._masks:
            out = np.broadcast_to(self.candidates, (len(self), len(self.candidates))).copy()
            np.put_along_axis(out, self.supports.rows, False, axis=1)
            out[:, 0] = False
            self._masks["allowed"] = out
        return self._masks["allowed"]

    def relevant(self, relevance: str) -> np.ndarray:
        """``[n, R]`` bool: held-out candidates that count as hits. Shared by every caller:
        not to be modified."""
        if relevance not in self._masks:
            self._masks[relevance] = self._relevant(relevance)
        return self._masks[relevance]

    def _relevant(self, relevance: str) -> np.ndarray:
        keep = self.heldout_rows > 0
        if relevance == "liked":
            keep &= self.heldout_ratings >= LIKED
        elif relevance != "watched":
            raise ValueError(f"unknown relevance {relevance!r}")
        out = np.zeros((len(self), len(self.candidates)), dtype=bool)
        users = np.repeat(np.arange(len(self)), self.heldout_rows.shape[1])
        flat = keep.reshape(-1)
        out[users[flat], self.heldout_rows.reshape(-1)[flat]] = True
        return out & self.candidates

    def subset(self, index: np.ndarray) -> Cases:
        return Cases(
            self.scenario,
            self.protocol,
            self.size,
            self.user_ids[index],
            self.user_rows[index],
            Supports(self.supports.rows[index], self.supports.ratings[index]),
            self.heldout_rows[index],
            self.heldout_ratings[index],
            self.candidates,
        )


def training_counts(data: ColdStartData) -> np.ndarray:
    """Training ratings per catalogue row ``[R]``."""
    rows = data.train_ratings["item_id"].map(data.catalogue.rows).to_numpy(dtype=np.int64)
    return np.bincount(rows, minlength=len(data.catalogue.item_ids)).astype(np.float64)


def new_items(data: ColdStartData) -> np.ndarray:
    """``[R]`` bool: the scenario split's new items (those of the new-item scenarios). Other
    items without training ratings are old items nobody in the tasks rated: no shelf holds them."""
    frame = data.ratings[data.ratings["split"].isin(SHELF_SCENARIOS)]
    out = np.zeros(len(data.catalogue.item_ids), dtype=bool)
    out[frame["item_id"].map(data.catalogue.rows).to_numpy(dtype=np.int64)] = True
    return out


def build_cases(
    data: ColdStartData, scenario: str, size: int, seed: int, protocol: str = "catalogue"
) -> Cases:
    """Draw ``size`` support ratings per user of ``scenario`` (the users of its tasks).

    Support draws use ``np.random.default_rng([seed, user_id, size])``, so a user's support
    depends only on the seed, the user and ``S``. A user takes part only if, after the draw,
    at least one held-out rating is a candidate.
    """
    counts = training_counts(data)
    if protocol == "catalogue":
        candidates = counts > 0
    elif protocol == "shelf":
        candidates = new_items(data) & (counts == 0)
    else:
        raise ValueError(f"unknown protocol {protocol!r}")
    candidates[0] = False
    users = set(data.tasks[scenario].user_ids.tolist())
    frame = data.ratings[
        (data.ratings["split"] == scenario) & data.ratings["user_id"].isin(users)
    ].sort_values(["user_id", "item_id"], kind="stable")
    item_rows = frame["item_id"].map(data.catalogue.rows).to_numpy(dtype=np.int64)
    user_col = frame["user_id"].to_numpy(dtype=np.int64)
    values = frame["rating"].to_numpy(dtype=np.float64)
    usable = candidates[item_rows]  # the shelf draws its support among new items only
    ids, starts, lengths = np.unique(user_col, return_index=True, return_counts=True)
    picked: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for uid, start, length in zip(ids.tolist(), starts, lengths, strict=True):
        rows, ratings = item_rows[start : start + length], values[start : start + length]
        rows, ratings = (
            rows[usable[start : start + length]],
            ratings[usable[start : start + length]],
        )
        if len(rows) <= size:
            continue
        rng = np.random.default_rng([seed, uid, size])
        chosen = np.zeros(len(rows), dtype=bool)
        chosen[rng.choice(len(rows), size=size, replace=False)] = True
        picked.append((uid, rows[chosen], ratings[chosen], rows[~chosen], ratings[~chosen]))
    n = len(picked)
    width = max((len(p[3]) for p in picked), default=0)
    heldout_rows = np.zeros((n, width), dtype=np.int64)
    heldout_ratings = np.zeros((n, width))
    for i, p in enumerate(picked):
        heldout_rows[i, : len(p[3])] = p[3]
        heldout_ratings[i, : len(p[4])] = p[4]
    user_ids = np.array([p[0] for p in picked], dtype=np.int64)
    return Cases(
        scenario=scenario,
        protocol=protocol,
        size=size,
        user_ids=user_ids,
        user_rows=np.array([data.user_rows[int(u)] for u in user_ids], dtype=np.int64),
        supports=Supports(
            np.array([p[1] for p in picked], dtype=np.int64).reshape(n, size),
            np.array([p[2] for p in picked], dtype=np.float64).reshape(n, size),
        ),
        heldout_rows=heldout_rows,
        heldout_ratings=heldout_ratings,
        candidates=candidates,
    )


# --- scoring with the model, exactly as the service does ------------------------------------


class ModelLists(NamedTuple):
    """The model's scores for a batch of cases: ranking scores and predicted ratings ``[n, R]``
    and, where the model keeps lists above the user's own mean, which rows clear it."""

    scores: np.ndarray
    ratings: np.ndarray
    above_floor: np.ndarray | None


@torch.no_grad()
def model_scores(
    scorer: CatalogueScorer,
    user_table: torch.Tensor,
    users: np.ndarray,
    supports: Supports,
    steps: int | None = None,
    batch_size: int = 256,
    fold_in: bool = True,
) -> ModelLists:
    """Scores after adapting on each support, exactly as ``/recommend`` computes them
    (:class:`melu.scoring.CatalogueScorer`), rounded to the ranking grid; ``fold_in=False``:
    without the model's fold-in."""
    device = scorer.table.device
    dtype = next(scorer.learner.parameters()).dtype
    n, width = len(users), scorer.table.shape[0]
    scores, ratings = np.zeros((n, width)), np.zeros((n, width))
    above = np.zeros((n, width), dtype=bool) if scorer.floor else None
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        rows = torch.as_tensor(supports.rows[sl], device=device)
        u = user_table[torch.as_tensor(users[sl], device=device)]
        given = torch.as_tensor(supports.ratings[sl], dtype=dtype, device=device)
        state = scorer.adapt(u, rows, given, rows > 0, steps)
        out = scorer.scores(state, u, fold_in=fold_in)
        scores[sl] = batch_invariant(out.rank.cpu()).double().numpy()
        ratings[sl] = out.rating.cpu().double().numpy()
        if above is not None and out.above_floor is not None:
            above[sl] = out.above_floor.cpu().numpy()
    return ModelLists(scores, ratings, above)


# --- judging the lists ------------------------------------------------------------------------


@dataclass(frozen=True)
class ListResult:
    """One method's lists for one :class:`Cases`: per-user metrics and list statistics."""

    per_user: dict[str, dict[str, np.ndarray]]  # relevance -> metric -> [n_r]
    members: dict[str, np.ndarray]  # relevance -> users (indices) with >= 1 relevant item
    top: np.ndarray  # [n, TOP] rows of each user's list
    coverage: float
    popularity_percentile: float


def judge(
    cases: Cases, scores: np.ndarray, counts: np.ndarray, above_floor: np.ndarray | None = None
) -> ListResult:
    """Rank ``scores [n, R]`` in :func:`melu.ranking.rank`'s order (rows ``above_floor``
    first, where the model keeps a floor) and measure the lists.

    Only the first 20 rows of each list are ordered (:func:`melu.ranking.rank_top`), and the
    position of the first relevant row (for MRR) is counted: the same numbers as sorting
    every candidate, at a fraction of the cost.
    """
    # Only candidate columns are ranked (the shelf's ~740 new items, not the whole catalogue);
    # they stay in row order, so ties still go to the smaller item id.
    columns = np.flatnonzero(cases.candidates)
    allowed = cases.allowed()[:, columns]
    floor = None if above_floor is None else above_floor[:, columns]
    depth = max(M.RANKING_DEPTH, TOP)
    if int(allowed.sum(1).min()) < depth:
        raise ValueError(f"{cases.scenario}: fewer than {depth} candidates for some user")
    candidate_scores = scores[:, columns]
    order = rank_top(
        torch.from_numpy(candidate_scores),
        torch.from_numpy(allowed),
        depth,
        None if floor is None else torch.from_numpy(floor),
    )
    order_np = order.numpy()

    def keyed(users: np.ndarray) -> np.ndarray:
        """rank()'s order of ``users``' rows as one key (NaN and disallowed rows at -inf)."""
        values, ok = candidate_scores[users], allowed[users]
        out = np.where(np.isnan(values) | ~ok, -np.inf, values)
        if floor is not None:
            # rank()'s tiers: scores are on the 1/4096 grid and far below FLOOR_TIER, so the
            # shift keeps every tie and order within a tier (exact in float64).
            out = np.where(floor[users], out + FLOOR_TIER, out)
        return out

    per_user: dict[str, dict[str, np.ndarray]] = {}
    members: dict[str, np.ndarray] = {}
    for relevance in RELEVANCE:
        rel = cases.relevant(relevance)[:, columns]
        n_rel = rel.sum(1)
        keep = np.flatnonzero(n_rel > 0)
        ranked = np.take_along_axis(rel[keep], order_np[keep], axis=1)
        # The first hit's position is read off the ordered rows where they hold one; only the
        # users whose first 20 rows miss are counted over every candidate.
        first = ranked.argmax(1) + 1.0
        miss = ~ranked.any(1)
        if miss.any():
            users = keep[miss]
            first[miss] = first_relevant(keyed(users), allowed[users], rel[users])
        per_user[relevance] = M.ranking_metrics(ranked, n_rel[keep], first)
        members[relevance] = keep
    top = columns[order_np[:, :TOP]]
    percentile = M.popularity_percentile(counts, columns)
    return ListResult(
        per_user=per_user,
        members=members,
        top=top,
        coverage=M.coverage(top, len(columns)),
        popularity_percentile=float(percentile[top].mean()),
    )


def first_relevant(keyed: np.ndarray, allowed: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based position ``[n]`` of each user's first relevant row in :func:`melu.ranking.rank`'s
    order: one plus the allowed rows scored above it, or tied with it at a smaller row.
    ``keyed``: scores with NaN and disallowed rows at -inf; every user has a relevant row, and
    relevant rows are allowed."""
    best = np.where(relevant, keyed, -np.inf).max(1, keepdims=True)
    at = np.argmax(relevant & (keyed == best), axis=1)[:, None]  # the smallest such row
    rows = np.arange(keyed.shape[1])[None, :]
    before = allowed & ((keyed > best) | ((keyed == best) & (rows < at)))
    return before.sum(1) + 1.0


# --- choosing baseline settings on validation users -----------------------------------------


def liked_recall(cases: Cases, scores: np.ndarray) -> float:
    """Mean liked Recall@10 of ``scores [n, R]``, as :func:`judge` measures it, from each
    user's top 10 alone: tuning scores a whole grid, and needs nothing else."""
    top = rank_top(torch.from_numpy(scores), torch.from_numpy(cases.allowed()), TOP).numpy()
    relevant = cases.relevant("liked")
    n_relevant = relevant.sum(1)
    keep = n_relevant > 0
    hits = np.take_along_axis(relevant, top, axis=1)[keep].sum(1)
    return float(np.mean(hits / np.minimum(TOP, n_relevant[keep])))


def tune(
    ranker: Ranker, validation: dict[int, Cases]
) -> tuple[dict[int, Setting], dict[int, list[tuple[Setting, float]]]]:
    """Per S (``validation``: S -> cases), the setting of ``ranker`` with the best liked
    Recall@10 on those validation cases, and every candidate's value (ties go to the earlier
    setting of the grid). Each setting is scored at every S before the next, so that a ranker
    that prepares something per setting (EASE's inverse) prepares it once."""
    tried: dict[int, list[tuple[Setting, float]]] = {size: [] for size in validation}
    for setting in ranker.grid():
        for size, cases in validation.items():
            recall = liked_recall(cases, ranker.score(cases.supports, setting))
            tried[size].append((setting, recall))
    chosen = {}
    for size, values in tried.items():
        best = max(range(len(values)), key=lambda i: (values[i][1], -i))
        chosen[size] = values[best][0]
    return chosen, tried


# --- the loved-genre test ----------------------------------------------------------------------


@dataclass(frozen=True)
class GenreCase:
    """A synthetic user: the most-rated movies of ``loved`` rated the scale's top value (5),
    those of ``far`` its bottom value (1 on whole stars, 0.5 on half stars)."""

    loved: str
    far: str
    supports: Supports  # [1, 8]


def item_genres(data: ColdStartData) -> list[frozenset[str]]:
    """Each catalogue row's genres (row 0: none), decoded from the catalogue's feature ids."""
    spec = next(s for s in data.encoder.item_specs() if s.name == "genre")
    tokens = data.encoder.item_vocab["genre"].tokens
    cols = data.catalogue.table[:, spec.start : spec.start + spec.width].numpy()
    return [frozenset(tokens[i - 1] for i in row if i > 0) for row in cols]


def genre_cases(data: ColdStartData, counts: np.ndarray) -> list[GenreCase]:
    """For each of the 10 genres with the most catalogue items: its 5 most-rated movies rated
    the data's top rating, and the 3 most-rated movies of the "far" genre rated its bottom one
    (neither set holds a movie of both genres). The far genre is the frequent genre whose item
    set overlaps least (Jaccard) with the loved one."""
    scale = data.scale
    genres = item_genres(data)
    frequency: dict[str, int] = {}
    for gs in genres:
        for g in gs:
            frequency[g] = frequency.get(g, 0) + 1
    frequent = sorted(frequency, key=lambda g: (-frequency[g], g))[:GENRE_TEST_GENRES]
    members = {g: {r for r, gs in enumerate(genres) if g in gs} for g in frequent}
    by_count = sorted(range(1, len(genres)), key=lambda r: (-counts[r], r))
    cases = []
    for loved in frequent:
        far = min(
            (g for g in frequent if g != loved),
            key=lambda g: (
                len(members[g] & members[loved]) / len(members[g] | members[loved]),
                g,
            ),
        )
        top_loved = [r for r in by_count if loved in genres[r] and far not in genres[r]]
        top_loved = top_loved[:GENRE_TEST_LOVED]
        top_far = [r for r in by_count if far in genres[r] and loved not in genres[r]]
        rows = np.array([*top_loved, *top_far[:GENRE_TEST_HATED]], dtype=np.int64)
        ratings = np.array([scale.high] * len(top_loved) + [scale.low] * GENRE_TEST_HATED)
        cases.append(GenreCase(loved, far, Supports(rows[None, :], ratings[None, :])))
    return cases


Lists: TypeAlias = tuple[np.ndarray, np.ndarray | None]
"""A method's lists for a batch of supports: scores ``[n, R]`` and, for a model that keeps the
ranking floor, which rows clear it (else None)."""


def genre_shares(
    cases: Sequence[GenreCase],
    scorer: Callable[[Supports], Lists],
    candidates: np.ndarray,
    genres: Sequence[frozenset[str]],
) -> list[float]:
    """For each case, the share of the top 10 (support excluded; the model's floor kept) that
    has the loved genre."""
    supports = Supports(
        np.concatenate([c.supports.rows for c in cases]),
        np.concatenate([c.supports.ratings for c in cases]),
    )
    scores, above_floor = scorer(supports)
    allowed = np.broadcast_to(candidates, scores.shape).copy()
    np.put_along_axis(allowed, supports.rows, False, axis=1)
    top = rank_top(
        torch.from_numpy(scores),
        torch.from_numpy(allowed),
        TOP,
        None if above_floor is None else torch.from_numpy(above_floor),
    ).numpy()
    return [
        float(np.mean([case.loved in genres[r] for r in top[i]])) for i, case in enumerate(cases)
    ]


# --- the predicted ratings ----------------------------------------------------------------------


@dataclass(frozen=True)
class RatingFit:
    """The predicted ratings of one :class:`Cases`' held-out rated items (candidates only: the
    model knows nothing of other rows), clipped to the data's scale."""

    mae: np.ndarray  # [n] each user's mean absolute error over their held-out items
    predicted: np.ndarray  # [N] every held-out rating's prediction, users concatenated
    actual: np.ndarray  # [N]

    def calibration_error(self) -> float:
        return M.calibration_error(self.predicted, self.actual)


def rating_fit(cases: Cases, ratings: np.ndarray, scale: RatingScale) -> RatingFit:
    """Predicted ``ratings [n, R]`` against every held-out rating of each user."""
    rows = cases.heldout_rows
    keep = (rows > 0) & cases.candidates[rows]
    predicted = np.clip(np.take_along_axis(ratings, rows, axis=1), scale.low, scale.high)
    error = np.abs(predicted - cases.heldout_ratings) * keep
    counts = keep.sum(1)
    users = counts > 0
    return RatingFit(
        mae=error[users].sum(1) / counts[users],
        predicted=predicted[keep],
        actual=cases.heldout_ratings[keep],
    )


def share_above(top: np.ndarray, above: np.ndarray) -> float:
    """Share of the listed rows ``top [n, k]`` that are ``above [n, R]`` (predicted at or above
    the user's own mean)."""
    return float(np.take_along_axis(above, top, axis=1).mean())


def support_pairs(cases: Cases, ratings: np.ndarray, scale: RatingScale) -> tuple[int, int]:
    """(pairs ordered right, pairs) over every user's (top-rated, bottom-rated) support items:
    rated the scale's top value (5 stars) against rated one star or less, the pair ordered
    right when the model predicts the first strictly above the second after adapting on the
    support."""
    at_support = np.take_along_axis(ratings, cases.supports.rows, axis=1)
    given = cases.supports.ratings
    real = cases.supports.rows > 0
    top = real & (given >= scale.high - 1e-6)
    bottom = real & (given <= max(scale.low, 1.0) + 1e-6)
    good = pairs = 0
    for i in np.flatnonzero(top.any(1) & bottom.any(1)):
        diff = at_support[i][top[i]][:, None] - at_support[i][bottom[i]][None, :]
        good += int((diff > 0).sum())
        pairs += diff.size
    return good, pairs

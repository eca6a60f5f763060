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

The model adapts on the support with :meth:`MetaLearner.adapt` and scores with
:mod:`melu.ranking`, exactly as the service does; every method's list, the model's and the
baselines' (:mod:`melu.evaluation.rankers`, :mod:`melu.evaluation.anchors`), is in
:func:`melu.ranking.rank`'s order (rated items excluded, ties by item id), of which
:func:`melu.ranking.rank_top` finds the first rows.
Their settings are chosen per ``S`` on validation users (:func:`tune`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from melu.data import ColdStartData
from melu.evaluation import metrics as M
from melu.evaluation.rankers import Ranker, Setting, Supports
from melu.ranking import batch_invariant, rank, rank_top
from melu.scoring import CatalogueScorer

log = logging.getLogger(__name__)

SUPPORT_SIZES: tuple[int, ...] = (3, 5, 10, 20)
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

    def __len__(self) -> int:
        return len(self.user_ids)

    def allowed(self) -> np.ndarray:
        """``[n, R]``: candidates minus each user's support (what the service excludes)."""
        out = np.broadcast_to(self.candidates, (len(self), len(self.candidates))).copy()
        np.put_along_axis(out, self.supports.rows, False, axis=1)
        out[:, 0] = False
        return out

    def relevant(self, relevance: str) -> np.ndarray:
        """``[n, R]`` bool: held-out candidates that count as hits."""
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
) -> ModelLists:
    """Scores after adapting on each support, exactly as ``/recommend`` computes them
    (:class:`melu.scoring.CatalogueScorer`), rounded to the ranking grid."""
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
        out = scorer.scores(state, u)
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
    keyed = np.where(np.isnan(candidate_scores) | ~allowed, -np.inf, candidate_scores)
    if floor is not None:
        # rank()'s tiers as one key: scores are on the 1/4096 grid and far below FLOOR_TIER,
        # so the shift keeps every tie and order within a tier (exact in float64).
        keyed = np.where(floor, keyed + FLOOR_TIER, keyed)
    per_user: dict[str, dict[str, np.ndarray]] = {}
    members: dict[str, np.ndarray] = {}
    for relevance in RELEVANCE:
        rel = cases.relevant(relevance)[:, columns]
        n_rel = rel.sum(1)
        keep = np.flatnonzero(n_rel > 0)
        ranked = np.take_along_axis(rel[keep], order_np[keep], axis=1)
        first = first_relevant(keyed[keep], allowed[keep], rel[keep])
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


def tune(ranker: Ranker, validation: Cases) -> tuple[Setting, list[tuple[Setting, float]]]:
    """The setting of ``ranker`` with the best liked Recall@10 on ``validation`` cases, and
    every candidate's value (ties go to the earlier setting of the grid)."""
    tried: list[tuple[Setting, float]] = []
    for setting in ranker.grid():
        tried.append(
            (setting, liked_recall(validation, ranker.score(validation.supports, setting)))
        )
    best = max(range(len(tried)), key=lambda i: (tried[i][1], -i))
    return tried[best][0], tried


# --- the loved-genre test ----------------------------------------------------------------------


@dataclass(frozen=True)
class GenreCase:
    """A synthetic user: the most-rated movies of ``loved`` rated 5, of ``far`` rated 1."""

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
    5, and the 3 most-rated movies of the "far" genre, rated 1 (neither set holds a movie of
    both genres). The far genre is the frequent genre whose item set overlaps least (Jaccard)
    with the loved one."""
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
        ratings = np.array([5.0] * len(top_loved) + [1.0] * GENRE_TEST_HATED)
        cases.append(GenreCase(loved, far, Supports(rows[None, :], ratings[None, :])))
    return cases


def genre_shares(
    cases: Sequence[GenreCase],
    scorer: Callable[[Supports], np.ndarray],
    candidates: np.ndarray,
    genres: Sequence[frozenset[str]],
) -> list[float]:
    """For each case, the share of the top 10 (support excluded) that has the loved genre."""
    supports = Supports(
        np.concatenate([c.supports.rows for c in cases]),
        np.concatenate([c.supports.ratings for c in cases]),
    )
    scores = scorer(supports)
    allowed = np.broadcast_to(candidates, scores.shape).copy()
    np.put_along_axis(allowed, supports.rows, False, axis=1)
    order, _ = rank(torch.from_numpy(scores), torch.from_numpy(allowed))
    top = order[:, :TOP].numpy()
    return [
        float(np.mean([case.loved in genres[r] for r in top[i]])) for i, case in enumerate(cases)
    ]

"""Onboarding, simulated with real histories: does the list a new user is asked to rate help?

For each validation and new user, walk down a strategy's list (:mod:`melu.onboarding`): the
user "rates" an item only if it is in their history, with their real rating, and skips it
otherwise, until :data:`RATINGS` ratings or the end of the list. Measured per strategy:

- effort: items shown until the 5th rating (the whole list for users who never get there,
  who are counted, and their share reported);
- the list the model then recommends: catalogue Recall@10 / NDCG@10 on the rest of their
  history (held-out items rated >= 4), after adapting on those ratings, ranked exactly as the
  catalogue protocol and the service rank;

beside the same users giving :data:`RATINGS` random ratings from their history.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melu import onboarding as O
from melu.data import ColdStartData
from melu.evaluation import catalogue as C
from melu.evaluation import metrics as M
from melu.evaluation.rankers import Supports
from melu.evaluation.report import OnboardingRow
from melu.features import content_matrix, content_vectors
from melu.learners import Learner
from melu.scoring import CatalogueScorer

log = logging.getLogger(__name__)

RATINGS = 5
RANDOM = "random_ratings"
# The strategy picks come from validation users only; the metric that picks them.
PICK_METRIC = "recall@10"
# The diverse list may ask about this share more items than the popularity list, no more.
EFFORT_SLACK = 0.1


@dataclass(frozen=True)
class Walk:
    """What a list got out of one user: the rated rows (in list order), ratings, items shown."""

    rows: np.ndarray
    ratings: np.ndarray
    shown: int


def walk(
    history: dict[int, float], ordered_rows: Sequence[int] | np.ndarray, wanted: int = RATINGS
) -> Walk:
    """Show ``ordered_rows`` one by one; an item in ``history`` is rated, any other skipped.

    Stops at ``wanted`` ratings; ``shown`` counts every item shown, skipped ones included (the
    whole list when fewer than ``wanted`` were rated)."""
    rows: list[int] = []
    ratings: list[float] = []
    shown = 0
    for row in ordered_rows:
        shown += 1
        if row in history:
            rows.append(int(row))
            ratings.append(history[row])
            if len(rows) == wanted:
                break
    return Walk(np.array(rows, dtype=np.int64), np.array(ratings, dtype=np.float64), shown)


def histories(data: ColdStartData, scenario: str) -> dict[int, dict[int, float]]:
    """Each user's ratings in ``scenario`` (users of its tasks) as catalogue row -> rating."""
    users = set(data.tasks[scenario].user_ids.tolist())
    frame = data.ratings[(data.ratings["split"] == scenario) & data.ratings["user_id"].isin(users)]
    rows = frame["item_id"].map(data.catalogue.rows).to_numpy(dtype=np.int64)
    out: dict[int, dict[int, float]] = {}
    for uid, row, rating in zip(
        frame["user_id"].to_numpy(), rows, frame["rating"].to_numpy(dtype=np.float64), strict=True
    ):
        out.setdefault(int(uid), {})[int(row)] = float(rating)
    return out


def onboarding_cases(
    data: ColdStartData,
    scenario: str,
    ordered_rows: Sequence[int] | np.ndarray | None,
    seed: int,
    candidates: np.ndarray,
) -> tuple[C.Cases, np.ndarray]:
    """Cases whose supports are what the list got (``None``: :data:`RATINGS` random ratings of
    the history, drawn as the catalogue protocol draws them), and the effort per user."""
    rows_all: list[np.ndarray] = []
    ratings_all: list[np.ndarray] = []
    held_rows: list[np.ndarray] = []
    held_ratings: list[np.ndarray] = []
    effort: list[int] = []
    users: list[int] = []
    for uid, history in sorted(histories(data, scenario).items()):
        if ordered_rows is None:
            keys = np.array(sorted(history), dtype=np.int64)
            if len(keys) <= RATINGS:
                continue
            rng = np.random.default_rng([seed, uid, RATINGS])
            chosen = keys[np.sort(rng.choice(len(keys), RATINGS, replace=False))]
            got = Walk(chosen, np.array([history[int(r)] for r in chosen]), RATINGS)
        else:
            got = walk(history, ordered_rows)
        rest = np.array(sorted(set(history) - set(got.rows.tolist())), dtype=np.int64)
        users.append(uid)
        rows_all.append(got.rows)
        ratings_all.append(got.ratings)
        held_rows.append(rest)
        held_ratings.append(np.array([history[int(r)] for r in rest]))
        effort.append(got.shown)
    n = len(users)

    def pad(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        width = max((len(p) for p in parts), default=0)
        out: np.ndarray = np.zeros((n, max(width, 1)), dtype=dtype)
        for i, p in enumerate(parts):
            out[i, : len(p)] = p
        return out

    user_ids = np.array(users, dtype=np.int64)
    cases = C.Cases(
        scenario=scenario,
        protocol="onboarding",
        size=RATINGS,
        user_ids=user_ids,
        user_rows=np.array([data.user_rows[int(u)] for u in user_ids], dtype=np.int64),
        supports=Supports(pad(rows_all, np.int64), pad(ratings_all, np.float64)),
        heldout_rows=pad(held_rows, np.int64),
        heldout_ratings=pad(held_ratings, np.float64),
        candidates=candidates,
    )
    return cases, np.array(effort, dtype=np.float64)


def simulate(
    data: ColdStartData,
    lists: dict[str, np.ndarray],
    scores: Callable[[np.ndarray, Supports], C.ModelLists],
    scenarios: Sequence[str] = C.CATALOGUE_SCENARIOS,
    *,
    seed: int = 0,
    bootstrap: int = 1000,
    max_users: int | None = None,
) -> list[OnboardingRow]:
    """Every strategy's walk and the resulting lists, plus random ratings, per scenario.

    ``scores(user_rows, supports)`` ranks the catalogue for adapted users (the model)."""
    counts = C.training_counts(data)
    candidates = counts > 0
    candidates[0] = False
    rows: list[OnboardingRow] = []
    for scenario in scenarios:
        results: dict[str, tuple[C.ListResult, np.ndarray, np.ndarray]] = {}
        for strategy, ordered_rows in [*lists.items(), (RANDOM, None)]:
            cases, effort = onboarding_cases(data, scenario, ordered_rows, seed, candidates)
            if len(cases) == 0:
                continue
            if max_users is not None and len(cases) > max_users:
                # The same seeded users for every strategy (cases are in user-id order).
                pick = np.sort(
                    np.random.default_rng([seed, 5000]).choice(len(cases), max_users, False)
                )
                cases, effort = cases.subset(pick), effort[pick]
            lists_ = scores(cases.user_rows, cases.supports)
            result = C.judge(cases, lists_.scores, counts, lists_.above_floor)
            sizes = (cases.supports.rows > 0).sum(1)
            results[strategy] = (result, effort, sizes)
        if not results:
            continue
        # The same users for every strategy: those with a liked held-out item under each (a
        # user whose only liked items the list asked about has none left to find).
        common = set.intersection(*(set(results[s][0].members["liked"].tolist()) for s in results))
        n_common = len(common)
        rng = np.random.default_rng([seed, C.CATALOGUE_SCENARIOS.index(scenario), 4000])
        idx = M.bootstrap_indices(n_common, bootstrap, rng) if bootstrap > 0 and n_common else None
        for strategy, (result, effort, sizes) in results.items():
            members = result.members["liked"]
            keep = np.isin(members, sorted(common))
            users = members[keep]  # ascending case indices: the same users in the same order
            values = {
                "items_shown": effort[users],
                "reached_5": (sizes[users] >= RATINGS).astype(np.float64),
                **{m: v[keep] for m, v in result.per_user["liked"].items()},
            }
            for metric, per_user in values.items():
                low = high = None
                if idx is not None:
                    low, high = M.interval(per_user[idx].mean(-1))
                rows.append(
                    OnboardingRow(
                        scenario, strategy, metric, float(per_user.mean()), low, high, n_common
                    )
                )
    return rows


def model_scorer(
    learner: Learner, data: ColdStartData
) -> Callable[[np.ndarray, Supports], C.ModelLists]:
    """Catalogue scores after adapting on each support, as the service computes them."""
    scorer = CatalogueScorer(learner.eval(), data.catalogue.table, data.catalogue.recommendable)

    def score(user_rows: np.ndarray, supports: Supports) -> C.ModelLists:
        return C.model_scores(scorer, data.user_table, user_rows, supports)

    return score


def _validation(rows: list[OnboardingRow], strategy: str, metric: str) -> float:
    return next(
        r.value
        for r in rows
        if (r.scenario, r.strategy, r.metric) == ("validation", strategy, metric)
    )


def choose_lists(
    learner: Learner, data: ColdStartData, seed: int = 0
) -> tuple[O.Lists, dict[str, Any]]:
    """The onboarding lists of the checkpoint, and how the diverse one was chosen.

    The diverse list re-orders one of the base lists with one of the penalties; simulated
    onboarding of the validation users picks the pair with the best Recall@10 among those that
    show at most :data:`EFFORT_SLACK` more items than the popularity list (the least effort
    there is). A list that asks about films few people have seen loses users before their
    fifth rating, however well it ranks for those who get there; if no pair is that cheap, the
    cheapest one is taken.
    """
    scores = O.item_scores(learner, data)
    vectors = content_vectors(content_matrix(data.catalogue.table, data.encoder.item_specs()))
    scorer = model_scorer(learner, data)
    names = ("evidence", "popularity", "entropy")
    candidates = {
        f"{base}:{penalty}": O.diverse(scores.base(base), vectors, penalty)
        for base in names
        for penalty in O.DIVERSE_PENALTIES
    }
    lists = {**{s: O.ordered(scores.base(s)) for s in names}, **candidates}
    rows = simulate(data, lists, scorer, ("validation",), seed=seed, bootstrap=0)
    recall = {k: _validation(rows, k, PICK_METRIC) for k in lists}
    shown = {k: _validation(rows, k, "items_shown") for k in lists}
    budget = shown["popularity"] * (1.0 + EFFORT_SLACK)
    cheap = [k for k in candidates if shown[k] <= budget]
    pick = (
        max(cheap, key=lambda k: (recall[k], -list(candidates).index(k)))
        if cheap
        else min(candidates, key=lambda k: (shown[k], -recall[k]))
    )
    base, penalty = pick.split(":")
    chosen = O.build_lists(scores, vectors, diverse_base=base, penalty=float(penalty))
    info = {
        "validation recall@10": recall,
        "validation items shown": shown,
        "diverse chosen": pick,
        "evidence_seconds": scores.seconds,
    }
    chosen.info.update(info)
    return chosen, info

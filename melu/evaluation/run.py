"""Evaluate a checkpoint: both protocols, every baseline, one :class:`Report`.

:func:`evaluate_checkpoint` is what ``melu evaluate``, ``benchmarks/quality.py`` and the
notebook call. It runs

1. the catalogue protocol (:func:`evaluate_catalogue`, :mod:`melu.evaluation.catalogue`):
   validation and new users given S = 3, 5, 10, 20 ratings, the new-releases shelf, the
   predicted ratings by number of ratings (1 to 50), the loved-genre test; baselines tuned per
   S on validation users. In steps: :func:`fit_baselines`, :func:`tune_rankers`,
   :func:`model_lists` and :func:`score_cases` per scenario and S, :func:`ranking_rows`,
   :func:`prediction_rows`, :func:`loved_genre_test`;
2. onboarding, simulated (:mod:`melu.evaluation.onboarding`);
3. MeLU's protocol (:func:`evaluate_queries`, :mod:`melu.evaluation.query`): MAE, RMSE, nDCG
   of 10 query items per user in the four scenarios, with the rating baselines.

The model is scored through :class:`melu.scoring.CatalogueScorer` as the service scores it,
in three rows: adapted (``melu``), the same checkpoint with zero local steps (``melu (zero
local steps)``, the meta-learned start) and adapted without demographics (``melu (no
demographics)``, user-table row 0).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.config import RatingScale, to_dict
from melu.data import ColdStartData, prepare
from melu.errors import MeluError
from melu.evaluation import catalogue as C
from melu.evaluation import metrics as M
from melu.evaluation import query as Q
from melu.evaluation.anchors import MemoryBudget, catalogue_baselines, shelf_baselines
from melu.evaluation.onboarding import choose_lists, model_scorer, simulate
from melu.evaluation.rankers import Ranker, Setting, Supports, TrainingData, describe
from melu.evaluation.report import (
    MELU,
    NO_DEMOGRAPHICS,
    NO_FOLD_IN,
    ZERO_STEPS,
    Comparison,
    GenreRow,
    ListRow,
    MetricRow,
    OnboardingRow,
    PredictionRow,
    RankingComparison,
    RankingRow,
    Report,
)
from melu.features import content_matrix
from melu.learners import Learner
from melu.scoring import CatalogueScorer
from melu.tasks import SCENARIOS
from melu.taste import BUCKET_LABELS

log = logging.getLogger(__name__)

# Scenarios of MeLU's protocol reported by default; "warm" (the meta-training users) on demand.
EVAL_SCENARIOS: tuple[str, ...] = ("validation", "new_user", "new_item", "new_user_new_item")
# Baselines of the loved-genre test use the settings chosen for this number of ratings (the
# test gives 8).
GENRE_TEST_SIZE = 10
MODEL_METHODS: dict[str, str] = {
    MELU: "the checkpoint adapted on the S ratings (its local steps), ranked as /recommend ranks "
    "(with its fold-in of EDLAE, where it has one)",
    ZERO_STEPS: "melu, zero local steps: the meta-learned start (the same checkpoint, its fast "
    "weights where the local steps would start; not a model trained without steps)",
    NO_DEMOGRAPHICS: "melu adapted on the same S ratings with no demographics given "
    "(user-table row 0), as a request without them is served",
    NO_FOLD_IN: "melu adapted on the same S ratings, its list the taste model's scores alone "
    "(not blended with EDLAE's fold-in)",
}


def _bootstrap_rows(
    key: tuple[str, str, int, str],
    results: dict[str, C.ListResult],
    relevance: str,
    bootstrap: int,
    seed: int,
) -> tuple[list[RankingRow], list[RankingComparison]]:
    scenario, protocol, size, _ = key
    members = next(iter(results.values())).members[relevance]
    n = len(members)
    rows: list[RankingRow] = []
    comparisons: list[RankingComparison] = []
    if n == 0:
        return rows, comparisons
    rng = np.random.default_rng(
        [seed, SCENARIOS.index(scenario), size, C.RELEVANCE.index(relevance)]
    )
    # Every (method, metric) column's mean over each resample of users at once: the
    # resamples' counts of each user times the per-user values.
    columns = [(m, metric) for m, r in results.items() for metric in r.per_user[relevance]]
    values = np.stack([results[m].per_user[relevance][metric] for m, metric in columns], 1)
    draws: dict[tuple[str, str], np.ndarray] = {}
    if bootstrap > 0:
        counts = M.bootstrap_counts(M.bootstrap_indices(n, bootstrap, rng), n)
        means = counts @ values / n  # [resamples, columns]
        draws = {column: means[:, j] for j, column in enumerate(columns)}
    point = dict(zip(columns, values.mean(0), strict=True))
    for method, metric in columns:
        low = high = None
        if draws:
            low, high = M.interval(draws[(method, metric)])
        rows.append(
            RankingRow(
                scenario,
                protocol,
                size,
                relevance,
                method,
                metric,
                float(point[(method, metric)]),
                low,
                high,
                n,
            )
        )
    if MELU not in results:
        return rows, comparisons
    for method, metric in columns:
        if method == MELU:
            continue
        ours = float(point[(MELU, metric)])
        other = float(point[(method, metric)])
        low = high = None
        verdict = "-"
        if draws:
            low, high = M.interval(draws[(MELU, metric)] - draws[(method, metric)])
            verdict = "better" if low > 0 else "worse" if high < 0 else "tied"
        comparisons.append(
            RankingComparison(
                scenario,
                size,
                relevance,
                method,
                metric,
                ours,
                other,
                ours - other,
                low,
                high,
                verdict,
            )
        )
    return rows, comparisons


# --- the catalogue protocol, in steps ------------------------------------------------------------


@dataclass(frozen=True)
class Baselines:
    """The catalogue protocol's baselines, fitted on the training ratings."""

    catalogue: list[Ranker]
    shelf: list[Ranker]
    counts: np.ndarray  # [R] training ratings per catalogue row
    # Rankers left out because their dense arrays would not fit in memory, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)


class CatalogueEvaluation(NamedTuple):
    """What :func:`evaluate_catalogue` measured."""

    ranking: list[RankingRow]
    comparisons: list[RankingComparison]
    lists: list[ListRow]
    genre: list[GenreRow]
    predictions: list[PredictionRow]
    info: dict[str, Any]


# (user-table rows, supports, local steps or None: the model's, whether the list takes the
# model's fold-in).
ModelScorer = Callable[[np.ndarray, Supports, int | None, bool], C.ModelLists]


class Stopwatch:
    """Wall seconds per named step, summed over every time the step runs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - started


def model_scorer_for(scorer: CatalogueScorer, user_table: torch.Tensor) -> ModelScorer:
    """The model's lists for (user-table rows, supports, local steps or None: the model's)."""

    def scores(
        users: np.ndarray, supports: Supports, steps: int | None, fold_in: bool = True
    ) -> C.ModelLists:
        return C.model_scores(scorer, user_table, users, supports, steps, fold_in=fold_in)

    return scores


def fit_baselines(data: ColdStartData, seed: int, budget: MemoryBudget | None = None) -> Baselines:
    """Every catalogue and shelf baseline, fitted once on the training ratings; those with
    dense item-item arrays only where they fit in ``budget`` (default: the memory available
    now, :meth:`MemoryBudget.from_available`)."""
    training = training_data(data)
    budget = budget or MemoryBudget.from_available()
    log.info("fitting the catalogue baselines")
    catalogue = catalogue_baselines(training, seed, budget=budget)
    shelf = shelf_baselines(training, seed, budget=budget)
    return Baselines(catalogue, shelf, training.counts, dict(budget.skipped))


def model_lists(
    scores: ModelScorer, cases: C.Cases, demographics: bool = True, fold_in: bool = False
) -> dict[str, C.ModelLists]:
    """The model's rows for ``cases``: adapted, with zero local steps, when the data has
    demographics (``demographics``) adapted without them, and when the model blends a fold-in
    into its lists (``fold_in``) adapted without the blend."""
    out = {
        MELU: scores(cases.user_rows, cases.supports, None, True),
        ZERO_STEPS: scores(cases.user_rows, cases.supports, 0, True),
    }
    if demographics:
        none = np.zeros_like(cases.user_rows)
        out[NO_DEMOGRAPHICS] = scores(none, cases.supports, None, True)
    if fold_in:
        out[NO_FOLD_IN] = scores(cases.user_rows, cases.supports, None, False)
    return out


def score_cases(
    cases: C.Cases,
    models: dict[str, C.ModelLists],
    rankers: Sequence[Ranker],
    chosen: dict[str, dict[int, Setting]],
    counts: np.ndarray,
) -> tuple[dict[str, C.ListResult], dict[str, str]]:
    """Every method's lists for ``cases``, judged (the model's with its floor), and each
    baseline's setting (chosen on validation users for this S)."""
    results = {
        name: C.judge(cases, lists.scores, counts, lists.above_floor)
        for name, lists in models.items()
    }
    settings: dict[str, str] = {}
    for ranker in rankers:
        setting = chosen.get(ranker.name, {}).get(cases.size, ranker.grid()[0])
        results[ranker.name] = C.judge(cases, ranker.score(cases.supports, setting), counts)
        settings[ranker.name] = json.dumps(setting) if setting else ""
    return results, settings


def ranking_rows(
    cases: C.Cases, results: dict[str, C.ListResult], bootstrap: int, seed: int
) -> tuple[list[RankingRow], list[RankingComparison]]:
    """Every method's metrics with bootstrap intervals, and melu's paired comparisons."""
    rows: list[RankingRow] = []
    comparisons: list[RankingComparison] = []
    for relevance in C.RELEVANCE:
        key = (cases.scenario, cases.protocol, cases.size, relevance)
        new_rows, new_comparisons = _bootstrap_rows(key, results, relevance, bootstrap, seed)
        rows += new_rows
        comparisons += new_comparisons
    return rows, comparisons


def list_rows(
    cases: C.Cases, results: dict[str, C.ListResult], settings: dict[str, str]
) -> list[ListRow]:
    """Coverage and popularity of every method's top-10 lists."""
    return [
        ListRow(
            cases.scenario,
            cases.protocol,
            cases.size,
            name,
            result.coverage,
            result.popularity_percentile,
            len(cases),
            settings.get(name, ""),
        )
        for name, result in results.items()
    ]


def prediction_rows(
    cases: C.Cases,
    models: dict[str, C.ModelLists],
    counts: np.ndarray,
    scale: RatingScale,
    results: dict[str, C.ListResult] | None = None,
) -> list[PredictionRow]:
    """The predicted ratings of the model's adapted and zero-step rows on ``cases``: held-out
    error and calibration, the top 10's share at or above the user's own mean, the support's
    (5-star, 1-star) pairs. ``results``: the rows' judged lists, if judged already."""
    out = []
    real = cases.supports.rows > 0
    support_mean = (cases.supports.ratings * real).sum(1) / np.maximum(real.sum(1), 1)
    for name in (MELU, ZERO_STEPS):
        lists = models[name]
        fit = C.rating_fit(cases, lists.ratings, scale)
        if len(fit.actual) == 0:
            continue
        top = (
            results[name].top
            if results is not None and name in results
            else C.judge(cases, lists.scores, counts, lists.above_floor).top
        )
        # MeLU's network keeps no floor: its "own mean" is the support's plain mean.
        above = (
            lists.above_floor
            if lists.above_floor is not None
            else lists.ratings >= support_mean[:, None]
        )
        good, pairs = C.support_pairs(cases, lists.ratings, scale)
        out.append(
            PredictionRow(
                scenario=cases.scenario,
                support_size=cases.size,
                method=name,
                mae=float(fit.mae.mean()),
                calibration_error=fit.calibration_error(),
                mean_predicted=float(fit.predicted.mean()),
                mean_actual=float(fit.actual.mean()),
                top_above_mean=C.share_above(top, above),
                pairs=pairs,
                pairs_ordered=good / pairs if pairs else None,
                n_users=len(fit.mae),
                n_ratings=len(fit.actual),
            )
        )
    return out


def per_user_recall(cases: C.Cases, results: dict[str, C.ListResult]) -> dict[str, Any]:
    """The model rows' liked Recall@10 per user (users with a liked held-out item), so that
    runs of two checkpoints on the same users can be compared pairwise
    (``benchmarks/quality.py``)."""
    members = results[MELU].members["liked"]
    out: dict[str, Any] = {"users": cases.user_ids[members].tolist()}
    for name in (MELU, ZERO_STEPS):
        values = results[name].per_user["liked"]["recall@10"]
        out[name] = [round(float(v), 6) for v in values]
    return out


def evaluate_catalogue(
    data: ColdStartData,
    learner: Learner,
    *,
    sizes: Sequence[int] = C.SUPPORT_SIZES,
    rating_sizes: Sequence[int] = C.RATING_SIZES,
    bootstrap: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_users: int | None = None,
    memory_gb: float | None = None,
) -> CatalogueEvaluation:
    """The catalogue protocol for the model and every baseline (see the module docstring);
    the predicted ratings are also judged at ``rating_sizes`` outside ``sizes``. The anchors
    with dense item-item arrays are fitted where they fit in ``memory_gb`` (default: 70% of
    the memory available when fitting starts; :class:`MemoryBudget`)."""
    started = time.perf_counter()
    clock = Stopwatch()
    device = torch.device(device)
    with clock("fit the baselines"):
        budget = None if memory_gb is None else MemoryBudget(int(memory_gb * 1e9))
        baselines = fit_baselines(data, seed, budget)
    counts = baselines.counts
    user_table, table = data.user_table.to(device), data.catalogue.table.to(device)
    recommendable = data.catalogue.recommendable
    scorer = CatalogueScorer(learner.eval(), table, recommendable)
    scores = model_scorer_for(scorer, user_table)
    # New releases are not in the recommendable set (no training ratings), so the model never
    # scores them for the main list; the shelf offers them as a request's explicit candidates:
    # the recommendable items plus the new ones.
    shelf_rows = recommendable | torch.from_numpy(C.new_items(data))
    shelf_scores = model_scorer_for(CatalogueScorer(learner, table, shelf_rows), user_table)
    demographics = data.user_table.shape[1] > 0

    def cases_for(scenario: str, size: int, protocol: str) -> C.Cases:
        return scenario_cases(data, scenario, size, seed, protocol, max_users)

    # Settings per S, chosen on validation users (the model's own choices are made there too).
    # The shelf has no validation users of its own: its content-only rankers are tuned on the
    # validation users' catalogue lists.
    validation = {size: cases_for("validation", size, "catalogue") for size in sizes}
    with clock("tune the baselines on validation users"):
        chosen, tuning = tune_rankers([*baselines.catalogue, *baselines.shelf], validation)

    ranking: list[RankingRow] = []
    comparisons: list[RankingComparison] = []
    lists: list[ListRow] = []
    predictions: list[PredictionRow] = []
    users_info: dict[str, dict[str, int]] = {}
    per_user: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, str, list[Ranker]]] = [
        *((s, "catalogue", baselines.catalogue) for s in C.CATALOGUE_SCENARIOS),
        *((s, "shelf", baselines.shelf) for s in C.SHELF_SCENARIOS),
    ]
    for scenario, protocol, rankers in plan:
        catalogue = protocol == "catalogue"
        for size in sorted({*sizes, *(rating_sizes if catalogue else ())}):
            cases = cases_for(scenario, size, protocol)
            if len(cases) == 0:
                continue
            if size not in sizes:  # the predicted ratings only
                with clock("adapt and score the model"):
                    models = model_lists(scores, cases, demographics=False)
                with clock("rank and judge every list"):
                    predictions += prediction_rows(cases, models, counts, data.scale)
                continue
            users_info.setdefault(scenario, {})[str(size)] = len(cases)
            log.info("catalogue: %s (%s), S=%d, %d users", scenario, protocol, size, len(cases))
            with clock("adapt and score the model"):
                models = model_lists(
                    scores if catalogue else shelf_scores,
                    cases,
                    demographics and catalogue,
                    fold_in=catalogue and scorer.blends,
                )
            with clock("rank and judge every list"):
                results, settings = score_cases(cases, models, rankers, chosen, counts)
                new_rows, new_comparisons = ranking_rows(cases, results, bootstrap, seed)
                ranking += new_rows
                comparisons += new_comparisons
                lists += list_rows(cases, results, settings)
                if catalogue:
                    predictions += prediction_rows(cases, models, counts, data.scale, results)
                    per_user.setdefault(scenario, {})[str(size)] = per_user_recall(cases, results)
    predictions.sort(key=lambda r: (C.CATALOGUE_SCENARIOS.index(r.scenario), r.support_size))

    with clock("loved-genre test"):
        genre_rows = loved_genre_test(
            data, scores, baselines.catalogue, chosen, counts, sizes, fold_in=scorer.blends
        )
    methods = {
        name: text
        for name, text in MODEL_METHODS.items()
        if (demographics or name != NO_DEMOGRAPHICS) and (scorer.blends or name != NO_FOLD_IN)
    }
    info = {
        "sizes": list(sizes),
        "rating_sizes": list(rating_sizes),
        "users": users_info,
        "tuning": tuning,
        "methods": {
            **methods,
            **describe([*baselines.catalogue, *baselines.shelf]),
            **baselines.skipped,
        },
        # Baselines left out because their dense arrays would not fit in memory: a report
        # that names fewer anchors says why.
        "skipped_baselines": dict(baselines.skipped),
        "per_user": per_user,
        "seconds_by_step": {step: round(v, 2) for step, v in clock.seconds.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return CatalogueEvaluation(ranking, comparisons, lists, genre_rows, predictions, info)


def training_data(data: ColdStartData) -> TrainingData:
    """The training ratings and item content as the catalogue baselines are fitted on them."""
    content = content_matrix(data.catalogue.table, data.encoder.item_specs())
    return TrainingData.build(
        data.train_ratings,
        data.catalogue.rows,
        len(data.catalogue.item_ids),
        content,
        data.genome,
    )


def scenario_cases(
    data: ColdStartData,
    scenario: str,
    size: int,
    seed: int,
    protocol: str,
    max_users: int | None = None,
) -> C.Cases:
    """:func:`~melu.evaluation.catalogue.build_cases`, cut to a seeded ``max_users`` subset."""
    cases = C.build_cases(data, scenario, size, seed, protocol)
    if max_users is not None and len(cases) > max_users:
        pick = np.random.default_rng([seed, size, 3000]).choice(len(cases), max_users, False)
        cases = cases.subset(np.sort(pick))
    return cases


def tune_rankers(
    rankers: Sequence[Ranker], validation: dict[int, C.Cases]
) -> tuple[dict[str, dict[int, Setting]], dict[str, Any]]:
    """Each ranker's setting per S (``validation``: S -> validation cases), chosen by
    :func:`~melu.evaluation.catalogue.tune`, and what every setting scored."""
    chosen: dict[str, dict[int, Setting]] = {}
    tuning: dict[str, Any] = {}
    for ranker in rankers:
        grid = ranker.grid()
        if len(grid) == 1:
            chosen[ranker.name] = {size: grid[0] for size in validation}
            continue
        chosen[ranker.name], tried = C.tune(ranker, validation)
        tuning[ranker.name] = {
            str(size): {
                "chosen": chosen[ranker.name][size],
                "recall@10": [[s, round(v, 5)] for s, v in tried[size]],
            }
            for size in validation
        }
        log.info(
            "%s: chose %s on validation users",
            ranker.name,
            "; ".join(f"S={size} {setting}" for size, setting in chosen[ranker.name].items()),
        )
    return chosen, tuning


def loved_genre_test(
    data: ColdStartData,
    scores: ModelScorer,
    rankers: Sequence[Ranker],
    chosen: dict[str, dict[int, Setting]],
    counts: np.ndarray,
    sizes: Sequence[int],
    fold_in: bool = False,
) -> list[GenreRow]:
    """Every method's loved-genre share (:func:`melu.evaluation.catalogue.genre_cases`); the
    synthetic users give no demographics, and the model's lists keep its floor. ``fold_in``:
    the model blends a fold-in into its lists, and its lists without it are a row too."""
    size = min(sizes, key=lambda s: abs(s - GENRE_TEST_SIZE))

    def model(steps: int | None, blend: bool = True) -> Callable[[Supports], C.Lists]:
        def score(supports: Supports) -> C.Lists:
            lists = scores(no_demographics(supports), supports, steps, blend)
            return lists.scores, lists.above_floor

        return score

    scorers: dict[str, Callable[[Supports], C.Lists]] = {MELU: model(None), ZERO_STEPS: model(0)}
    if fold_in:
        scorers[NO_FOLD_IN] = model(None, blend=False)
    for ranker in rankers:
        setting = chosen.get(ranker.name, {}).get(size, ranker.grid()[0])
        scorers[ranker.name] = baseline_lists(ranker, setting)
    return genre_test_rows(data, counts, scorers)


def baseline_lists(ranker: Ranker, setting: Setting) -> Callable[[Supports], C.Lists]:
    """A baseline as the loved-genre test calls it: its scores, no floor."""

    def score(supports: Supports) -> C.Lists:
        return ranker.score(supports, setting), None

    return score


def no_demographics(supports: Supports) -> np.ndarray:
    """User-table rows for the loved-genre test's users: row 0, no demographics given."""
    return np.zeros(len(supports.rows), dtype=np.int64)


def genre_test_rows(
    data: ColdStartData, counts: np.ndarray, scorers: dict[str, Callable[[Supports], C.Lists]]
) -> list[GenreRow]:
    """The loved-genre test for each named scorer (supports -> scores over every row and the
    rows above the floor), its top 10 drawn from the items with training ratings."""
    cases = C.genre_cases(data, counts)
    genres = C.item_genres(data)
    candidates = counts > 0
    candidates[0] = False
    rows = []
    for name, scorer in scorers.items():
        shares = C.genre_shares(cases, scorer, candidates, genres)
        rows += [
            GenreRow(name, c.loved, c.far, share) for c, share in zip(cases, shares, strict=True)
        ]
    return rows


def evaluate_queries(
    data: ColdStartData,
    ck: ckpt.Checkpoint,
    learner: Learner,
    names: Sequence[str],
    *,
    bootstrap: int,
    seed: int,
    device: torch.device,
    max_tasks: int | None,
    regression_epochs: int | None,
) -> tuple[list[MetricRow], list[Comparison], dict[str, Any]]:
    """MeLU's protocol on ``names`` scenarios, with the rating baselines."""
    log.info("training the regression baseline")
    regression, regression_info = Q.train_regression(
        data, ck.model, ck.meta, ck.train, epochs=regression_epochs, seed=seed, device=device
    )
    user_table, item_table = data.user_table.to(device), data.catalogue.table.to(device)
    validation = data.tasks["validation"].to(device)
    finetuned, rate_maes = Q.tune_finetune_rate(
        regression, validation, user_table, item_table, data.scale
    )
    regression_info["finetune_rate"] = finetuned.cfg.local_lr
    regression_info["finetune_val_mae"] = rate_maes
    # The taste model adapts against the catalogue's recommendable rows, as it is served.
    scorer = CatalogueScorer(learner.eval(), item_table, data.catalogue.recommendable)
    models: dict[str, tuple[Learner, int | None]] = {
        MELU: (learner, None),
        ZERO_STEPS: (learner, 0),
        "regression_finetuned": (finetuned, None),
        "regression": (regression, 0),
    }
    # The rating baselines learn from every training-side rating (any number of ratings per
    # user), which is more than meta-training sees: they are not handicapped.
    side = data.ratings[data.ratings["split"] == "warm"]
    n_rows = len(data.catalogue.item_ids)
    stats, damping_maes = Q.tune_damping(
        side, data.catalogue.rows, n_rows, data.tasks["validation"], data.scale
    )
    content = content_matrix(data.catalogue.table, data.encoder.item_specs())
    item_content_bias, content_info = Q.content_bias(stats, content)

    rows: list[MetricRow] = []
    comparisons: list[Comparison] = []
    scenario_info: dict[str, Any] = {}
    for name in names:
        key = SCENARIOS.index(name)
        tasks = data.tasks[name]
        if len(tasks) == 0:
            log.warning("%s: no tasks, skipped", name)
            continue
        if max_tasks is not None and len(tasks) > max_tasks:
            pick = np.random.default_rng([seed, key, 1000]).choice(len(tasks), max_tasks, False)
            tasks = tasks.subset(np.sort(pick))
        log.info("MeLU's protocol: %s (%d tasks)", name, len(tasks))
        preds = Q.predict_scenario(
            tasks.to(device),
            models,
            stats,
            item_content_bias,
            user_table,
            item_table,
            np.random.default_rng([seed, key, 2000]),
            data.scale,
            scorer,
        )
        new_rows, new_comparisons = Q.score(preds, bootstrap, seed)
        rows += new_rows
        comparisons += new_comparisons
        labels = M.support_bucket(preds.support_sizes)
        scenario_info[name] = {
            "tasks": len(tasks),
            "tasks_total": len(data.tasks[name]),
            "support_median": float(np.median(preds.support_sizes)),
            "support_buckets": {lb: int((labels == lb).sum()) for lb, _, _ in M.SUPPORT_BUCKETS},
            # Share of query ratings whose item has no training rating (new items).
            "unseen_query_items": float(
                (stats.item_count[tasks.batch_all.x_qry.cpu().numpy()] == 0).mean()
            ),
        }
    info = {
        "regression": regression_info,
        "scenarios": scenario_info,
        "training_side_ratings": len(side),
        "global_mean": stats.global_mean,
        "tuning": {
            "user_item_bias damping (validation MAE)": damping_maes,
            "regression_finetuned rate (validation MAE)": rate_maes,
            "user_content_bias ridge": content_info,
        },
        "methods": Q.METHODS,
    }
    return rows, comparisons, info


def fine_tuning(ck: ckpt.Checkpoint) -> list[str]:
    """What the local steps change for this checkpoint, and what its zero-step row is: the
    report says it in words."""
    model, meta = ck.model, ck.meta
    steps = meta.local_steps
    if model.objective == "taste":
        chosen = ck.metrics.get("step_schedule", {}).get("chosen")
        buckets = BUCKET_LABELS
        schedule = (
            ", ".join(f"{b}: x{m:g}" for b, m in zip(buckets, chosen, strict=False))
            if chosen
            else "none chosen (x1 at every size)"
        )
        lines = [
            "The model is the taste model. A user's fast weights ("
            + ", ".join(meta.fast_weights)
            + ") start from a meta-learned initialisation computed in one pass from the "
            "support (the rated items' embeddings pooled per rating value, the demographics, "
            "the rating residuals shrunk towards the population) and take "
            f"{steps} local gradient step{'s' if steps != 1 else ''} on the support-only loss "
            "(leave-one-out likelihood of the liked support items, plus the support's rating "
            "error), each fast weight with its own meta-learned step size. One function of "
            "the fast weights gives both the ranking logit and the predicted rating.",
            "How far the steps go depends on the number of ratings, chosen on validation users "
            f"once training ended (multiples of the learned step, by support size): {schedule}"
            + (
                " (judged on the served lists, the fold-in blended in). "
                if ck.metrics.get("step_schedule", {}).get("lists") == "served"
                else ". "
            )
            + "Where the multiple is 0 the step is switched off, and `melu` and "
            f"`{ZERO_STEPS}` give the same lists.",
            "Everything else (item embeddings, item popularity and rating biases, "
            + ("the co-occurrence table, " if model.cooccurrence else "")
            + "the shrinkage) is shared by all users and never changes at request time.",
            fold_in_line(ck.metrics.get("fold_in")),
            calibration_line(ck.metrics.get("rating_calibration")),
        ]
    else:
        lines = [
            "The model is MeLU's rating network. A user's local update takes "
            f"{steps} gradient step{'s' if steps != 1 else ''} at rate {meta.local_lr} on "
            "the support's squared rating error, changing "
            + ("the decision layers (the MLP head)" if meta.adapt == "head" else "every weight")
            + "; the embeddings are shared by all users.",
        ]
    lines.append(
        f"`{ZERO_STEPS}` is the same checkpoint with the steps removed: the fast weights where "
        "the local steps would start. It is not a model trained without steps (whose start "
        "would be learned to stand alone): `benchmarks/quality.py` trains that one separately "
        "(`default-no-steps`)."
    )
    if steps == 0:
        lines.append(
            "This checkpoint takes no local steps, so its adapted and zero-step rows coincide."
        )
    return lines


def calibration_line(chosen: dict[str, Any] | None) -> str:
    """The report's words for the taste model's rating recalibration
    (``metrics["rating_calibration"]``)."""
    if not chosen:
        return "The predicted ratings are the model's own (no recalibration was fitted)."
    lines = ", ".join(
        f"{b}: {offset:+.2f} + {slope:.2f} r"
        for b, (offset, slope) in zip(BUCKET_LABELS, chosen["lines"], strict=False)
    )
    return (
        "The predicted ratings go through a line per support size, fitted by least squares "
        "on validation users' held-out ratings once training ended "
        f"({lines}); the floor compares these ratings with the user's own mean, the ranking "
        "score's rating term takes them (the offset, the same for all of a user's films, "
        "leaves the order as it was), and the zero-step row takes the same lines."
    )


def fold_in_line(chosen: dict[str, Any] | None) -> str:
    """The report's words for the checkpoint's fold-in (``metrics["fold_in"]``)."""
    if not chosen:
        return "The list takes no fold-in of a closed-form recommender."
    if "skipped" in chosen:
        return f"The list takes no fold-in: EDLAE was not fitted ({chosen['skipped']})."
    buckets = BUCKET_LABELS
    weights = ", ".join(f"{b}: {w:g}" for b, w in zip(buckets, chosen["weights"], strict=False))
    return (
        "The list (not the predicted ratings) blends in EDLAE's fold-in of the same support "
        f"(dropout {chosen['dropout']:g}, lambda {chosen['l2']:g}): each user's ranking "
        "scores and EDLAE's, standardised over the recommendable items they did not rate, "
        "added with a weight per "
        f"support size chosen on validation users once training ended ({weights}; 0: the "
        "taste model's scores alone). The zero-step row takes the same blend."
    )


def evaluate_checkpoint(
    checkpoint: ckpt.Checkpoint | Path | str,
    data_dir: Path | str | None = None,
    *,
    data: ColdStartData | None = None,
    scenarios: Sequence[str] | None = None,
    include_warm: bool = False,
    bootstrap: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_tasks: int | None = None,
    regression_epochs: int | None = None,
    catalogue: bool = True,
    sizes: Sequence[int] = C.SUPPORT_SIZES,
    max_users: int | None = None,
    onboarding: bool = True,
    memory_gb: float | None = None,
) -> Report:
    """Evaluate a checkpoint and every baseline under both protocols.

    ``data`` (prepared with the checkpoint's data config and encoder) saves reading
    ``data_dir`` again. ``max_tasks`` / ``max_users`` evaluate a seeded random subset of each
    scenario (quick runs and tests); ``regression_epochs`` overrides the regression baseline's
    budget (meta-training's epochs by default). ``seed`` drives supports, bootstrap, random
    baselines, subsets and the regression baseline's training.
    """
    started = time.perf_counter()
    ck_path = "<in memory>"
    if isinstance(checkpoint, ckpt.Checkpoint):
        ck = checkpoint
    else:
        ck_path = str(checkpoint)
        ck = ckpt.load(checkpoint)
    names = list(scenarios) if scenarios is not None else list(EVAL_SCENARIOS)
    if include_warm and "warm" not in names:
        names.insert(0, "warm")
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        raise MeluError(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    if bootstrap < 0:
        raise MeluError("bootstrap resamples must be >= 0")
    if any(s < 1 for s in sizes):
        raise MeluError("support sizes must be >= 1")

    if data is None:
        if data_dir is None:
            raise MeluError("evaluate: give a data folder or prepared data")
        if not Path(data_dir).is_dir():
            raise MeluError(f"{data_dir}: data folder not found")
        data = prepare(Path(data_dir), ck.data, ck.encoder)
    elif data.config != ck.data or data.encoder != ck.encoder:
        raise MeluError("the prepared data does not match the checkpoint's data config/encoder")
    device = torch.device(device)
    learner = ck.learner(device)

    result = CatalogueEvaluation([], [], [], [], [], {})
    if catalogue:
        result = evaluate_catalogue(
            data, learner, sizes=sizes, bootstrap=bootstrap, seed=seed, device=device,
            max_users=max_users, memory_gb=memory_gb,
        )  # fmt: skip
    catalogue_info = result.info
    onboarding_rows: list[OnboardingRow] = []
    onboarding_info: dict[str, Any] = {}
    if onboarding:
        log.info("onboarding: scoring the catalogue and simulating each strategy")
        with torch.no_grad():
            chosen, _ = choose_lists(learner, data, seed)
        onboarding_rows = simulate(
            data, chosen.rows, model_scorer(learner, data), seed=seed, bootstrap=bootstrap,
            max_users=max_users,
        )  # fmt: skip
        first = {s: [data.catalogue.titles[r] for r in o[:10]] for s, o in chosen.rows.items()}
        onboarding_info = {**chosen.info, "first": first}
    rows, comparisons, query_info = evaluate_queries(
        data, ck, learner, names, bootstrap=bootstrap, seed=seed, device=device,
        max_tasks=max_tasks, regression_epochs=regression_epochs,
    )  # fmt: skip

    metrics = ck.metrics
    info: dict[str, Any] = {
        "checkpoint": ck_path,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": bootstrap,
        "ci_level": M.CI_LEVEL,
        "seed": seed,
        "max_tasks": max_tasks,
        "max_users": max_users,
        "query_size": ck.data.query_size,
        "local_steps": ck.meta.local_steps,
        "fine_tuning": fine_tuning(ck),
        "best_epoch": metrics.get("best_epoch"),
        "best_val_mae": metrics.get("best_val_mae"),
        "epochs_run": len(metrics.get("history", [])),
        "data_config": to_dict(ck.data),
        "model_config": to_dict(ck.model),
        "meta_config": to_dict(ck.meta),
        "train_config": to_dict(ck.train),
        "versions": ck.versions,
        "train_ratings": len(data.train_ratings),
        "catalogue": catalogue_info,
        "onboarding": onboarding_info,
        **{k: v for k, v in query_info.items() if k not in ("tuning", "methods")},
        "tuning": {**catalogue_info.get("tuning", {}), **query_info["tuning"]},
        "methods": {**catalogue_info.get("methods", {}), **query_info["methods"]},
    }
    info["seconds"] = round(time.perf_counter() - started, 2)
    return Report(
        tuple(rows),
        tuple(comparisons),
        info,
        tuple(result.ranking),
        tuple(result.comparisons),
        tuple(result.lists),
        tuple(result.genre),
        tuple(onboarding_rows),
        tuple(result.predictions),
    )


def evaluate_command(
    checkpoint: Path,
    data_dir: Path,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
    include_warm: bool = False,
    device: str = "auto",
    bootstrap: int = 1000,
    max_tasks: int | None = None,
    regression_epochs: int | None = None,
    max_users: int | None = None,
    seed: int = 0,
    memory_gb: float | None = None,
) -> int:
    """``melu evaluate``: log the tables, write JSON and Markdown reports; 0 on success.

    ``max_tasks``, ``max_users`` and ``regression_epochs`` are not on the command line; tests
    shorten runs with them.
    """
    from melu.train import resolve_device  # train pulls in DDP and tqdm: only when used

    for path in (json_out, markdown_out):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise MeluError(f"{path}: the folder {Path(path).parent} does not exist")
    report = evaluate_checkpoint(
        checkpoint,
        data_dir,
        include_warm=include_warm,
        bootstrap=bootstrap,
        device=resolve_device(device),
        max_tasks=max_tasks,
        regression_epochs=regression_epochs,
        max_users=max_users,
        seed=seed,
        memory_gb=memory_gb,
    )
    for line in report.text_table().splitlines():
        log.info("%s", line)
    for path, text in ((json_out, report.to_json), (markdown_out, report.to_markdown)):
        if path is None:
            continue
        try:
            ckpt.atomic_write_text(Path(path), text())
        except OSError as exc:
            raise MeluError(f"{path}: cannot write ({exc.strerror or exc})") from None
        log.info("wrote %s", path)
    return 0


__all__ = [
    "EVAL_SCENARIOS",
    "CatalogueEvaluation",
    "evaluate_catalogue",
    "evaluate_checkpoint",
    "evaluate_command",
    "evaluate_queries",
]

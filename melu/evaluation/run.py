"""Evaluate a checkpoint: both protocols, every baseline, one :class:`Report`.

:func:`evaluate_checkpoint` is what ``melu evaluate``, ``benchmarks/quality.py`` and the
notebook call. It runs

1. the catalogue protocol (:mod:`melu.evaluation.catalogue`): validation and new users given
   S = 3, 5, 10, 20 ratings, the new-releases shelf, the loved-genre test; baselines tuned per
   S on validation users;
2. MeLU's protocol (:mod:`melu.evaluation.query`): MAE, RMSE, nDCG of 10 query items per user
   in the four scenarios, with the rating baselines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.config import to_dict
from melu.data import ColdStartData, prepare
from melu.errors import MeluError
from melu.evaluation import catalogue as C
from melu.evaluation import metrics as M
from melu.evaluation import query as Q
from melu.evaluation.anchors import catalogue_baselines, shelf_baselines
from melu.evaluation.onboarding import choose_lists, model_scorer, simulate
from melu.evaluation.rankers import Ranker, Setting, Supports, TrainingData, describe
from melu.evaluation.report import (
    MELU,
    Comparison,
    GenreRow,
    ListRow,
    MetricRow,
    OnboardingRow,
    RankingComparison,
    RankingRow,
    Report,
)
from melu.features import content_matrix
from melu.maml import MetaLearner
from melu.tasks import SCENARIOS

log = logging.getLogger(__name__)

# Scenarios of MeLU's protocol reported by default; "warm" (the meta-training users) on demand.
EVAL_SCENARIOS: tuple[str, ...] = ("validation", "new_user", "new_item", "new_user_new_item")
# The model's two rows in the catalogue protocol: adapted, and the meta-model as is.
MODEL_METHODS: dict[str, int | None] = {MELU: None, "melu_no_adapt": 0}
# Baselines of the loved-genre test use the settings chosen for this number of ratings (the
# test gives 8).
GENRE_TEST_SIZE = 10


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
    idx = M.bootstrap_indices(n, bootstrap, rng) if bootstrap > 0 else None
    for method, result in results.items():
        for metric, values in result.per_user[relevance].items():
            low = high = None
            if idx is not None:
                low, high = M.interval(values[idx].mean(-1))
            rows.append(
                RankingRow(
                    scenario,
                    protocol,
                    size,
                    relevance,
                    method,
                    metric,
                    float(values.mean()),
                    low,
                    high,
                    n,
                )
            )
    if MELU not in results:
        return rows, comparisons
    ours = results[MELU].per_user[relevance]
    for method, result in results.items():
        if method == MELU:
            continue
        for metric, values in result.per_user[relevance].items():
            diff = float(ours[metric].mean() - values.mean())
            low = high = None
            verdict = "-"
            if idx is not None:
                low, high = M.interval(ours[metric][idx].mean(-1) - values[idx].mean(-1))
                verdict = "better" if low > 0 else "worse" if high < 0 else "tied"
            comparisons.append(
                RankingComparison(
                    scenario,
                    size,
                    relevance,
                    method,
                    metric,
                    float(ours[metric].mean()),
                    float(values.mean()),
                    diff,
                    low,
                    high,
                    verdict,
                )
            )
    return rows, comparisons


def evaluate_catalogue(
    data: ColdStartData,
    learner: MetaLearner,
    *,
    sizes: Sequence[int] = C.SUPPORT_SIZES,
    bootstrap: int = 1000,
    seed: int = 0,
    device: torch.device | str = "cpu",
    max_users: int | None = None,
) -> tuple[
    list[RankingRow], list[RankingComparison], list[ListRow], list[GenreRow], dict[str, Any]
]:
    """The catalogue protocol for the model and every baseline (see the module docstring)."""
    started = time.perf_counter()
    device = torch.device(device)
    counts = C.training_counts(data)
    training = training_data(data)
    log.info("fitting the catalogue baselines")
    rankers = catalogue_baselines(training, seed)
    shelf = shelf_baselines(training, seed)
    user_table, item_table = data.user_table.to(device), data.catalogue.table.to(device)

    def melu_scores(users: np.ndarray, supports: Any, steps: int | None) -> np.ndarray:
        return C.model_scores(learner, user_table, item_table, users, supports, steps)

    def cases_for(scenario: str, size: int, protocol: str) -> C.Cases:
        return scenario_cases(data, scenario, size, seed, protocol, max_users)

    # Settings per S, chosen on validation users (the model's own choices are made there too).
    # The shelf has no validation users of its own: its content-only rankers are tuned on the
    # validation users' catalogue lists.
    validation = {size: cases_for("validation", size, "catalogue") for size in sizes}
    chosen, tuning = tune_rankers([*rankers, *shelf], validation)

    ranking: list[RankingRow] = []
    comparisons: list[RankingComparison] = []
    lists: list[ListRow] = []
    users_info: dict[str, dict[str, int]] = {}
    plan: list[tuple[str, str, list[Ranker]]] = [
        *((s, "catalogue", rankers) for s in C.CATALOGUE_SCENARIOS),
        *((s, "shelf", shelf) for s in C.SHELF_SCENARIOS),
    ]
    for scenario, protocol, baselines in plan:
        for size in sizes:
            cases = cases_for(scenario, size, protocol)
            users_info.setdefault(scenario, {})[str(size)] = len(cases)
            if len(cases) == 0:
                continue
            log.info("catalogue: %s (%s), S=%d, %d users", scenario, protocol, size, len(cases))
            results: dict[str, C.ListResult] = {}
            settings: dict[str, str] = {}
            for name, steps in MODEL_METHODS.items():
                scores = melu_scores(cases.user_rows, cases.supports, steps)
                results[name] = C.judge(cases, scores, counts)
            for ranker in baselines:
                setting = chosen.get(ranker.name, {}).get(size, ranker.grid()[0])
                results[ranker.name] = C.judge(cases, ranker.score(cases.supports, setting), counts)
                settings[ranker.name] = json.dumps(setting) if setting else ""
            for relevance in C.RELEVANCE:
                new_rows, new_comparisons = _bootstrap_rows(
                    (scenario, protocol, size, relevance), results, relevance, bootstrap, seed
                )
                ranking += new_rows
                comparisons += new_comparisons
            for name, result in results.items():
                lists.append(
                    ListRow(
                        scenario,
                        protocol,
                        size,
                        name,
                        result.coverage,
                        result.popularity_percentile,
                        len(cases),
                        settings.get(name, ""),
                    )
                )

    genre_rows = loved_genre_test(data, melu_scores, rankers, chosen, counts, sizes)
    info = {
        "sizes": list(sizes),
        "users": users_info,
        "tuning": tuning,
        "methods": {
            MELU: "the checkpoint adapted on the S ratings, ranked as /recommend ranks",
            "melu_no_adapt": "the meta-trained model without local steps",
            **describe([*rankers, *shelf]),
        },
        "seconds": round(time.perf_counter() - started, 2),
    }
    return ranking, comparisons, lists, genre_rows, info


def training_data(data: ColdStartData) -> TrainingData:
    """The training ratings and item content as the catalogue baselines are fitted on them."""
    content = content_matrix(data.catalogue.table, data.encoder.item_specs())
    return TrainingData.build(
        data.train_ratings, data.catalogue.rows, len(data.catalogue.item_ids), content
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
    chosen: dict[str, dict[int, Setting]] = {r.name: {} for r in rankers}
    tuning: dict[str, Any] = {}
    for size, cases in validation.items():
        for ranker in rankers:
            grid = ranker.grid()
            if len(grid) == 1:
                chosen[ranker.name][size] = grid[0]
                continue
            setting, tried = C.tune(ranker, cases)
            chosen[ranker.name][size] = setting
            tuning.setdefault(ranker.name, {})[str(size)] = {
                "chosen": setting,
                "recall@10": [[s, round(v, 5)] for s, v in tried],
            }
            log.info("%s, S=%d: chose %s on validation users", ranker.name, size, setting)
    return chosen, tuning


def loved_genre_test(
    data: ColdStartData,
    melu_scores: Any,
    rankers: Sequence[Ranker],
    chosen: dict[str, dict[int, Setting]],
    counts: np.ndarray,
    sizes: Sequence[int],
) -> list[GenreRow]:
    """Every method's loved-genre share (:func:`melu.evaluation.catalogue.genre_cases`)."""
    size = min(sizes, key=lambda s: abs(s - GENRE_TEST_SIZE))
    scorers: dict[str, Any] = {
        MELU: lambda s: melu_scores(no_demographics(s), s, None),
        "melu_no_adapt": lambda s: melu_scores(no_demographics(s), s, 0),
    }
    for ranker in rankers:
        setting = chosen.get(ranker.name, {}).get(size, ranker.grid()[0])
        scorers[ranker.name] = lambda s, r=ranker, st=setting: r.score(s, st)
    return genre_test_rows(data, counts, scorers)


def no_demographics(supports: Supports) -> np.ndarray:
    """User-table rows for the loved-genre test's users: row 0, no demographics given."""
    return np.zeros(len(supports.rows), dtype=np.int64)


def genre_test_rows(
    data: ColdStartData, counts: np.ndarray, scorers: dict[str, Any]
) -> list[GenreRow]:
    """The loved-genre test for each named scorer (supports -> scores over every row), its top
    10 drawn from the items with training ratings."""
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
    learner: MetaLearner,
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
    models: dict[str, tuple[MetaLearner, int | None]] = {
        MELU: (learner, None),
        "melu_no_adapt": (learner, 0),
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

    ranking: list[RankingRow] = []
    ranking_comparisons: list[RankingComparison] = []
    lists: list[ListRow] = []
    genre: list[GenreRow] = []
    catalogue_info: dict[str, Any] = {}
    if catalogue:
        ranking, ranking_comparisons, lists, genre, catalogue_info = evaluate_catalogue(
            data, learner, sizes=sizes, bootstrap=bootstrap, seed=seed, device=device,
            max_users=max_users,
        )  # fmt: skip
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
        tuple(ranking),
        tuple(ranking_comparisons),
        tuple(lists),
        tuple(genre),
        tuple(onboarding_rows),
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
    "evaluate_catalogue",
    "evaluate_checkpoint",
    "evaluate_command",
    "evaluate_queries",
]

"""MeLU's protocol: predict each user's 10 query ratings from their support set.

Every method predicts the same ``Q = 10`` query ratings of each task from the same support set,
so the numbers of a scenario compare methods on identical users. Metrics are computed per user
(task) and then averaged, and 95% confidence intervals come from a seeded bootstrap over users.
One index matrix per scenario serves every method, so differences between methods are paired.

Baselines get the same care as the model: the regression baseline trains with meta-training's
budget (epochs, cosine schedule, early stopping on validation users) and its fine-tuning rate is
chosen on validation users; the bias baseline's damping is chosen on validation users; the
content baseline predicts an item's bias from its genre, director, actors, rate and year, so
new items get more than the global mean.

MeLU and the model-based baselines go through :func:`melu.predict.predict_queries`, which
adapts with :meth:`MetaLearner.adapt`: evaluation never re-implements the local update.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.linear_model import RidgeCV

from melu.config import MetaConfig, ModelConfig, RatingScale, TrainConfig
from melu.data import ColdStartData
from melu.errors import MeluError
from melu.evaluation.metrics import (
    ALL_SUPPORT,
    LOWER_IS_BETTER,
    METRICS,
    SUPPORT_BUCKETS,
    bootstrap_indices,
    interval,
    per_user_metrics,
    summarise,
    support_bucket,
)
from melu.evaluation.report import MELU, ZERO_STEPS, Comparison, MetricRow
from melu.learners import Learner, build_learner
from melu.maml import MetaLearner, support_stats
from melu.predict import predict_queries
from melu.scoring import CatalogueScorer
from melu.tasks import SCENARIOS, TaskSet

log = logging.getLogger(__name__)

METHODS: dict[str, str] = {
    MELU: "meta-trained model, adapted on the support set (the checkpoint's local steps)",
    ZERO_STEPS: "melu, zero local steps: the meta-learned start (the same checkpoint; a "
    "residual MeLU network still adds the support mean, the taste model starts from the "
    "support's shrunk rating residuals)",
    "regression_finetuned": "same network trained by plain regression on the training "
    "ratings with meta-training's budget, then adapted on the support set with the same "
    "adapt() and local steps at a rate chosen on validation users",
    "regression": "same network trained by plain regression, without local steps",
    "user_item_bias": "user's support mean plus the item's damped bias from all training-side "
    "ratings (damping chosen on validation users)",
    "user_content_bias": "user's support mean plus an item bias predicted from the item's "
    "content (ridge regression on genre, director, actors, rate, year; fitted on training "
    "items): the content baseline for new items",
    "item_mean": "item's mean training rating (global mean for items without one)",
    "user_mean": "user's mean support rating",
    "global_mean": "mean of all training ratings",
    "random": "random order (ranking only)",
}
# Candidate dampings of the item bias (pseudo-ratings at zero bias), chosen on validation users.
ITEM_BIAS_DAMPINGS: tuple[float, ...] = (0.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0)
# Candidate fine-tuning rates of the regression baseline, chosen on validation users.
FINETUNE_RATES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
REGRESSION_BATCH = 512
REGRESSION_LR = 1e-3


@dataclass(frozen=True)
class RatingStats:
    """What the simple baselines learn from training ratings, indexed by catalogue row."""

    global_mean: float
    item_mean: np.ndarray  # [rows]; the global mean for items without training ratings
    item_bias: np.ndarray  # [rows]; damped mean of (rating - rater's mean); 0 without ratings
    item_count: np.ndarray  # [rows]

    @classmethod
    def fit(
        cls,
        ratings: pd.DataFrame,
        item_rows: dict[int, int],
        n_rows: int,
        damping: float = 10.0,
    ) -> RatingStats:
        if len(ratings) == 0:
            raise MeluError("no training ratings to fit the baselines on")
        rows = ratings["item_id"].map(item_rows).to_numpy(dtype=np.int64)
        values = ratings["rating"].to_numpy(dtype=np.float64)
        global_mean = float(values.mean())
        count = np.bincount(rows, minlength=n_rows).astype(np.float64)
        sums = np.bincount(rows, weights=values, minlength=n_rows)
        item_mean = np.where(count > 0, sums / np.maximum(count, 1.0), global_mean)
        # Residuals around each rater's own mean, so that a generous audience does not pass
        # for a good item.
        rater_mean = ratings.groupby("user_id")["rating"].transform("mean").to_numpy(np.float64)
        resid = np.bincount(rows, weights=values - rater_mean, minlength=n_rows)
        bias = np.where(count > 0, resid / np.maximum(count + damping, 1e-12), 0.0)
        return cls(global_mean, item_mean, bias, count)


def support_mean(tasks: TaskSet) -> np.ndarray:
    """Each task's mean support rating ``[n]``."""
    b = tasks.batch_all
    y, mask = b.y_spt.double().cpu().numpy(), b.mask_spt.cpu().numpy()
    return (y * mask).sum(1) / np.maximum(mask.sum(1), 1)


def _clip(pred: np.ndarray, scale: RatingScale) -> np.ndarray:
    return np.clip(pred, scale.low, scale.high)


def tune_damping(
    ratings: pd.DataFrame,
    item_rows: dict[int, int],
    n_rows: int,
    validation: TaskSet,
    scale: RatingScale,
) -> tuple[RatingStats, dict[str, float]]:
    """:class:`RatingStats` with the damping whose ``user_item_bias`` has the lowest MAE on
    the validation users' queries; also returns each candidate's MAE."""
    b = validation.batch_all
    x_qry, y_qry = b.x_qry.cpu().numpy(), b.y_qry.double().cpu().numpy()
    user = support_mean(validation)[:, None]
    maes: dict[str, float] = {}
    best: tuple[float, RatingStats] | None = None
    for damping in ITEM_BIAS_DAMPINGS:
        stats = RatingStats.fit(ratings, item_rows, n_rows, damping)
        mae = float(np.abs(_clip(user + stats.item_bias[x_qry], scale) - y_qry).mean())
        maes[str(damping)] = mae
        if best is None or mae < best[0]:
            best = (mae, stats)
    assert best is not None
    return best[1], maes


def content_bias(
    stats: RatingStats, content: sparse.csr_matrix
) -> tuple[np.ndarray, dict[str, float]]:
    """Item bias ``[rows]`` predicted from content by ridge regression fitted on the items with
    training ratings (weighted by their counts; the ridge penalty chosen by leave-one-out
    cross-validation on those items only), for every item, new ones included."""
    seen = np.flatnonzero(stats.item_count > 0)
    model = RidgeCV(alphas=np.logspace(-1, 4, 11))
    model.fit(content[seen], stats.item_bias[seen], sample_weight=stats.item_count[seen])
    return np.asarray(model.predict(content), dtype=np.float64), {"alpha": float(model.alpha_)}


def simple_baselines(
    tasks: TaskSet,
    stats: RatingStats,
    item_content_bias: np.ndarray,
    rng: np.random.Generator,
    scale: RatingScale,
) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Predictions and ranking scores ``[n, Q]`` of the non-learned baselines on ``tasks``."""
    x_qry = tasks.batch_all.x_qry.cpu().numpy()
    shape = x_qry.shape
    user = support_mean(tasks)[:, None]
    global_ = np.full(shape, stats.global_mean)
    user_mean = np.broadcast_to(user, shape).copy()
    item_mean = stats.item_mean[x_qry]
    bias = _clip(user + stats.item_bias[x_qry], scale)
    content = _clip(user + item_content_bias[x_qry], scale)
    return {
        "user_item_bias": (bias, bias),
        "user_content_bias": (content, content),
        "item_mean": (item_mean, item_mean),
        "user_mean": (user_mean, user_mean),
        "global_mean": (global_, global_),
        "random": (None, rng.random(shape)),
    }


def train_regression(
    data: ColdStartData,
    model_cfg: ModelConfig,
    meta_cfg: MetaConfig,
    train_cfg: TrainConfig,
    *,
    epochs: int | None = None,
    batch_size: int = REGRESSION_BATCH,
    lr: float = REGRESSION_LR,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> tuple[MetaLearner, dict[str, Any]]:
    """The non-meta baseline: MeLU's network fitted to single training ratings by MSE.

    It learns from what meta-training learns from: every support and query rating of the
    training tasks. Each rating is predicted with its task's support statistics, the offset
    (support mean, when the model is residual) and context that :meth:`MetaLearner.adapt`
    gives the same network at test time; so the comparison with MeLU isolates the
    meta-learning, not the residual.

    It gets meta-training's budget (``train_cfg``: epochs, cosine schedule, early stopping
    patience on validation MAE without adaptation); ``epochs`` overrides the number of epochs
    (tests). The epoch with the best validation MAE is kept.
    """
    epochs = train_cfg.epochs if epochs is None else epochs
    if epochs < 1:
        raise MeluError("the regression baseline needs at least one epoch")
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    # MeLU's network, whatever model the checkpoint holds: the baseline is the paper's
    # network without meta-learning.
    rating_cfg = dataclasses.replace(model_cfg, objective="rating")
    rating_meta = meta_cfg if model_cfg.objective == "rating" else MetaConfig()
    learner = build_learner(data.encoder, rating_cfg, rating_meta)
    assert isinstance(learner, MetaLearner)
    learner = learner.to(device)
    warm = data.tasks["warm"]
    b = warm.batch_all
    mean, context = torch.vmap(support_stats)(b.y_spt.float(), b.mask_spt)
    offset = mean if model_cfg.residual else torch.zeros_like(mean)
    spt_task, spt_col = torch.nonzero(b.mask_spt, as_tuple=True)
    qry_task, qry_col = torch.nonzero(b.mask_qry, as_tuple=True)
    task = torch.cat([spt_task, qry_task])
    items = torch.cat([b.x_spt[spt_task, spt_col], b.x_qry[qry_task, qry_col]])
    target = torch.cat([b.y_spt[spt_task, spt_col], b.y_qry[qry_task, qry_col]]).float()

    user_table, item_table = data.user_table.to(device), data.catalogue.table.to(device)
    users, items, target = b.users[task].to(device), items.to(device), target.to(device)
    offset, context, task = offset.to(device), context.to(device), task.to(device)
    val = data.tasks["validation"].to(device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(target) / batch_size)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
        if train_cfg.schedule == "cosine"
        else None
    )
    rng = np.random.default_rng(seed)
    best_mae, best_epoch, history = math.inf, 0, []
    best_state: dict[str, torch.Tensor] = {}
    for epoch in range(epochs):
        learner.train()
        order = torch.from_numpy(rng.permutation(len(target))).to(device)
        total = 0.0
        for start in range(0, len(order), batch_size):
            i = order[start : start + batch_size]
            t = task[i]
            pred = learner.net(
                user_table[users[i]], item_table[items[i]].unsqueeze(1), context[t]
            ).squeeze(1)
            loss = torch.nn.functional.mse_loss(pred + offset[t], target[i])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += float(loss.detach()) * len(i)
        pred_val = predict_queries(learner, val, user_table, item_table, data.scale, steps=0)
        val_mae = float(np.abs(pred_val - val.batch_all.y_qry.cpu().numpy()).mean())
        history.append({"epoch": epoch + 1, "train_mse": total / len(target), "val_mae": val_mae})
        if val_mae < best_mae:
            best_mae, best_epoch = val_mae, epoch + 1
            best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
        elif epoch + 1 - best_epoch >= train_cfg.patience:
            break
    learner.load_state_dict(best_state)
    learner.eval()
    info = {
        "ratings": len(target),
        "epochs": epochs,
        "epochs_run": len(history),
        "schedule": train_cfg.schedule,
        "patience": train_cfg.patience,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "best_epoch": best_epoch,
        "best_val_mae": best_mae,
        "history": history,
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info(
        "regression baseline: %d ratings, best validation MAE %.4f at epoch %d/%d (%.1fs)",
        len(target),
        best_mae,
        best_epoch,
        epochs,
        info["seconds"],
    )
    return learner, info


def tune_finetune_rate(
    regression: MetaLearner,
    validation: TaskSet,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    scale: RatingScale,
) -> tuple[MetaLearner, dict[str, float]]:
    """The regression network with the local rate (from :data:`FINETUNE_RATES`) whose
    fine-tuned validation MAE is lowest, and each candidate's MAE. Same local steps as MeLU."""
    target = validation.batch_all.y_qry.cpu().numpy()
    maes: dict[str, float] = {}
    best: tuple[float, MetaLearner] | None = None
    for rate in FINETUNE_RATES:
        cfg = dataclasses.replace(regression.cfg, local_lr=rate)
        learner = MetaLearner(regression.net, cfg).to(next(regression.parameters()).device)
        learner.eval()
        pred = predict_queries(learner, validation, user_table, item_table, scale)
        mae = float(np.abs(pred - target).mean())
        maes[str(rate)] = mae
        if best is None or mae < best[0]:
            best = (mae, learner)
    assert best is not None
    return best[1], maes


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictions:
    """Every method's query predictions on one scenario's tasks, in task order."""

    scenario: str
    y_true: np.ndarray  # [n, Q]
    support_sizes: np.ndarray  # [n]
    # method -> (predicted ratings or None, ranking scores), each [n, Q]
    methods: dict[str, tuple[np.ndarray | None, np.ndarray]]


def _ci(
    metric: str, values: np.ndarray, idx: np.ndarray | None
) -> tuple[float | None, float | None]:
    if idx is None:
        return None, None
    return interval(summarise(metric, values[idx]))


def score(
    preds: Predictions, bootstrap: int, seed: int
) -> tuple[list[MetricRow], list[Comparison]]:
    """Metrics with intervals per method, overall and per support bucket, and MeLU's paired
    differences to each baseline. The generators depend only on ``(seed, scenario, bucket)``,
    so a scenario's numbers do not depend on which other scenarios are evaluated."""
    key = SCENARIOS.index(preds.scenario)
    per_user = {
        name: per_user_metrics(preds.y_true, pred, scores)
        for name, (pred, scores) in preds.methods.items()
    }
    buckets = support_bucket(preds.support_sizes)
    groups: list[tuple[str, np.ndarray]] = [(ALL_SUPPORT, np.arange(len(preds.y_true)))]
    groups += [(lb, np.flatnonzero(buckets == lb)) for lb, _, _ in SUPPORT_BUCKETS]
    rows: list[MetricRow] = []
    comparisons: list[Comparison] = []
    for g, (label, members) in enumerate(groups):
        if len(members) == 0:
            continue
        rng = np.random.default_rng([seed, key, g])
        idx = bootstrap_indices(len(members), bootstrap, rng) if bootstrap > 0 else None
        for name, metrics in per_user.items():
            for metric in METRICS:
                if metric not in metrics:
                    rows.append(
                        MetricRow(
                            preds.scenario, name, label, metric, None, None, None, len(members)
                        )
                    )
                    continue
                values = metrics[metric][members]
                low, high = _ci(metric, values, idx)
                point = float(summarise(metric, values))
                rows.append(
                    MetricRow(preds.scenario, name, label, metric, point, low, high, len(members))
                )
        if label != ALL_SUPPORT or MELU not in per_user:
            continue
        ours = per_user[MELU]
        for name, metrics in per_user.items():
            if name == MELU:
                continue
            for metric in METRICS:
                if metric not in metrics:
                    continue
                a, b = ours[metric], metrics[metric]
                diff = float(summarise(metric, a) - summarise(metric, b))
                low = high = None
                if idx is not None:
                    low, high = interval(summarise(metric, a[idx]) - summarise(metric, b[idx]))
                better = diff < 0 if metric in LOWER_IS_BETTER else diff > 0
                significant = None if low is None or high is None else (low > 0 or high < 0)
                comparisons.append(
                    Comparison(
                        preds.scenario,
                        name,
                        metric,
                        float(summarise(metric, a)),
                        float(summarise(metric, b)),
                        diff,
                        low,
                        high,
                        better,
                        significant,
                    )
                )
    return rows, comparisons


def predict_scenario(
    tasks: TaskSet,
    models: dict[str, tuple[Learner, int | None]],
    stats: RatingStats,
    item_content_bias: np.ndarray,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    rng: np.random.Generator,
    scale: RatingScale,
    scorer: CatalogueScorer | None = None,
) -> Predictions:
    """Query predictions of every model (learner, local steps) and baseline on ``tasks``."""
    if not bool(tasks.batch_all.mask_qry.all()):
        raise ValueError(f"{tasks.name}: every task must have a full query set")
    methods: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
    for name, (learner, steps) in models.items():
        own = scorer if scorer is not None and scorer.learner is learner else None
        pred = predict_queries(learner, tasks, user_table, item_table, scale, steps, scorer=own)
        methods[name] = (pred, pred)
    methods.update(simple_baselines(tasks, stats, item_content_bias, rng, scale))
    return Predictions(
        scenario=tasks.name,
        y_true=tasks.batch_all.y_qry.cpu().numpy().astype(np.float64),
        support_sizes=np.asarray(tasks.support_sizes),
        methods=methods,
    )

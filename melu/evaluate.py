"""Cold-start evaluation: metrics per scenario, baselines on the same tasks, reports.

Every method predicts the same ``Q = 10`` query ratings of each task from the same support set,
so the numbers of a scenario compare methods on identical users. Metrics are computed per user
(task) and then averaged, and 95% confidence intervals come from a seeded bootstrap over users.
One index matrix per scenario serves every method, so differences between methods are paired.

MeLU and the model-based baselines go through :func:`melu.predict.predict_queries`, which
adapts with :meth:`MetaLearner.adapt`: evaluation never re-implements the local update.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import checkpoint as ckpt
from melu.config import MetaConfig, ModelConfig, to_dict
from melu.data import ColdStartData, prepare
from melu.errors import MeluError
from melu.maml import MetaLearner, support_stats
from melu.predict import RATING_MAX, RATING_MIN, predict_queries
from melu.tasks import SCENARIOS, TaskSet

log = logging.getLogger(__name__)

# Scenarios reported by default; "warm" (the meta-training users) only when asked.
EVAL_SCENARIOS: tuple[str, ...] = ("validation", "new_user", "new_item", "new_user_new_item")
NDCG_KS: tuple[int, ...] = (1, 3, 10)
RATING_METRICS: tuple[str, ...] = ("mae", "rmse")
METRICS: tuple[str, ...] = (*RATING_METRICS, *(f"ndcg@{k}" for k in NDCG_KS))
LOWER_IS_BETTER = frozenset(RATING_METRICS)
CI_LEVEL = 0.95
ALL_SUPPORT = "all"
# (label, smallest, largest support size); None = no upper bound.
SUPPORT_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("3-5", 3, 5),
    ("6-10", 6, 10),
    ("11-20", 11, 20),
    ("21-50", 21, 50),
    ("51+", 51, None),
)

MELU = "melu"
METHODS: dict[str, str] = {
    MELU: "meta-trained model, adapted on the support set (the checkpoint's local steps)",
    "melu_no_adapt": "meta-trained model without local steps (a residual model still adds "
    "the support mean)",
    "regression_finetuned": "same network trained by plain regression on the training "
    "ratings, then adapted on the support set with the same adapt() and local steps",
    "regression": "same network trained by plain regression, without local steps",
    "user_item_bias": "user's support mean plus the item's damped bias from training ratings",
    "item_mean": "item's mean training rating (global mean for items without one)",
    "user_mean": "user's mean support rating",
    "global_mean": "mean of all training ratings",
    "random": "random order (ranking only)",
}
# Damping of the item bias (in pseudo-ratings at zero bias): a common default, not tuned.
ITEM_BIAS_DAMPING = 10.0
# The non-meta baseline: a few epochs of Adam over minibatches of single ratings, keeping the
# epoch with the best validation MAE (as meta-training keeps its best epoch).
REGRESSION_EPOCHS = 5
REGRESSION_BATCH = 512
REGRESSION_LR = 1e-3


# --- metrics ------------------------------------------------------------------------------------


def exp_gain(ratings: np.ndarray) -> np.ndarray:
    """The nDCG gain of a rating, ``2^r - 1``: a 5 counts twice as much as a 4, and more."""
    return np.power(2.0, np.asarray(ratings, dtype=np.float64)) - 1.0


def dcg_at_k(gains: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """DCG@k of each row ``[n]`` when its items ``[n, Q]`` are ranked by ``scores``.

    Tied scores are handled as ``sklearn.metrics.ndcg_score`` does (``ignore_ties=False``):
    every item of a tie group gets the group's mean gain, the expected DCG over the orders
    within the group. A predictor that is constant for a user therefore scores the expected
    DCG of a random order, not whatever order a sort happened to pick.
    """
    gains = np.asarray(gains, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if gains.ndim != 2 or gains.shape != scores.shape:
        raise ValueError(
            f"gains and scores must be [n, Q] alike, got {gains.shape}, {scores.shape}"
        )
    q = gains.shape[1]
    same = scores[:, :, None] == scores[:, None, :]  # [n, Q, Q]: j ties with i
    tie_gain = (same * gains[:, None, :]).sum(-1) / same.sum(-1)
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(tie_gain, order, axis=1)
    discount = 1.0 / np.log2(np.arange(2, q + 2, dtype=np.float64))
    discount[k:] = 0.0
    return ranked @ discount


def ndcg_at_k(gains: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """nDCG@k per row ``[n]``: DCG of the ranking by ``scores`` over the DCG of the ideal
    ranking of the true ``gains`` (0 for a row whose gains are all 0)."""
    dcg = dcg_at_k(gains, scores, k)
    ideal = dcg_at_k(gains, gains, k)
    return np.divide(dcg, ideal, out=np.zeros_like(dcg), where=ideal > 0)


def per_user_metrics(
    y_true: np.ndarray, y_pred: np.ndarray | None, scores: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Each user's contribution ``[n]`` to each metric; see :func:`summarise`.

    ``y_pred`` are predicted ratings (None for a ranking-only method such as random order);
    ``scores`` rank the items (default ``y_pred``). For ``rmse`` the per-user value is the
    mean squared error: RMSE is the square root of its mean over users.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    if scores is None:
        if y_pred is None:
            raise ValueError("need predictions or scores")
        scores = y_pred
    out: dict[str, np.ndarray] = {}
    if y_pred is not None:
        err = np.asarray(y_pred, dtype=np.float64) - y_true
        out["mae"] = np.abs(err).mean(axis=1)
        out["rmse"] = (err**2).mean(axis=1)
    gains = exp_gain(y_true)
    for k in NDCG_KS:
        out[f"ndcg@{k}"] = ndcg_at_k(gains, scores, k)
    return out


def summarise(metric: str, per_user: np.ndarray) -> np.ndarray:
    """Metric from per-user values, over the last axis (so it also reduces bootstrap draws)."""
    mean = np.asarray(per_user, dtype=np.float64).mean(axis=-1)
    return np.sqrt(mean) if metric == "rmse" else mean


def bootstrap_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[resamples, n]`` user indices drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def interval(draws: np.ndarray, level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of bootstrap draws."""
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(
    per_user: np.ndarray,
    metric: str = "mae",
    resamples: int = 1000,
    seed: int | Sequence[int] = 0,
    level: float = CI_LEVEL,
) -> tuple[float, float]:
    """95% percentile bootstrap interval of ``metric`` over users, reproducible from ``seed``."""
    values = np.asarray(per_user, dtype=np.float64)
    idx = bootstrap_indices(len(values), resamples, np.random.default_rng(seed))
    return interval(summarise(metric, values[idx]), level)


def support_bucket(sizes: np.ndarray) -> np.ndarray:
    """Label from :data:`SUPPORT_BUCKETS` of each support size (``""`` below the first)."""
    sizes = np.asarray(sizes)
    labels = np.full(sizes.shape, "", dtype=object)
    for label, low, high in SUPPORT_BUCKETS:
        upper = np.inf if high is None else high
        labels[(sizes >= low) & (sizes <= upper)] = label
    return labels


# --- baselines ----------------------------------------------------------------------------------


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
        damping: float = ITEM_BIAS_DAMPING,
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


def _clip(pred: np.ndarray) -> np.ndarray:
    return np.clip(pred, RATING_MIN, RATING_MAX)


def simple_baselines(
    tasks: TaskSet, stats: RatingStats, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray | None, np.ndarray]]:
    """Predictions and ranking scores ``[n, Q]`` of the non-learned baselines on ``tasks``."""
    x_qry = tasks.batch_all.x_qry.cpu().numpy()
    shape = x_qry.shape
    user = support_mean(tasks)[:, None]
    global_ = np.full(shape, stats.global_mean)
    user_mean = np.broadcast_to(user, shape).copy()
    item_mean = stats.item_mean[x_qry]
    bias = _clip(user + stats.item_bias[x_qry])
    return {
        "user_item_bias": (bias, bias),
        "item_mean": (item_mean, item_mean),
        "user_mean": (user_mean, user_mean),
        "global_mean": (global_, global_),
        "random": (None, rng.random(shape)),
    }


def train_regression(
    data: ColdStartData,
    model_cfg: ModelConfig,
    meta_cfg: MetaConfig,
    *,
    epochs: int = REGRESSION_EPOCHS,
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
    meta-learning, not the residual. The epoch with the best validation MAE (without
    adaptation) is kept.
    """
    if epochs < 1:
        raise MeluError("the regression baseline needs at least one epoch")
    started = time.perf_counter()
    device = torch.device(device)
    torch.manual_seed(seed)
    learner = ckpt.build_learner(data.encoder, model_cfg, meta_cfg).to(device)
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
            total += float(loss.detach()) * len(i)
        pred_val = predict_queries(learner, val, user_table, item_table, steps=0)
        val_mae = float(np.abs(pred_val - val.batch_all.y_qry.cpu().numpy()).mean())
        history.append({"epoch": epoch + 1, "train_mse": total / len(target), "val_mae": val_mae})
        if val_mae < best_mae:
            best_mae, best_epoch = val_mae, epoch + 1
            best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    learner.load_state_dict(best_state)
    learner.eval()
    info = {
        "ratings": len(target),
        "epochs": epochs,
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


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricRow:
    """One metric of one method on one scenario, over all users or one support-size bucket."""

    scenario: str
    method: str
    support: str  # "all" or a SUPPORT_BUCKETS label
    metric: str
    value: float | None  # None where the metric does not apply (MAE of a random order)
    ci_low: float | None
    ci_high: float | None
    n_tasks: int


@dataclass(frozen=True)
class Comparison:
    """MeLU minus a baseline on one metric, with a paired bootstrap interval of the difference."""

    scenario: str
    baseline: str
    metric: str
    melu: float
    other: float
    diff: float
    ci_low: float | None
    ci_high: float | None
    melu_better: bool  # on the point estimates
    significant: bool | None  # the interval excludes 0; None without bootstrap


@dataclass(frozen=True)
class Report:
    """Everything one evaluation measured; :meth:`to_frame` gives the tidy table."""

    rows: tuple[MetricRow, ...]
    comparisons: tuple[Comparison, ...]
    info: dict[str, Any]

    def to_frame(self) -> pd.DataFrame:
        """Columns: scenario, method, support, metric, value, ci_low, ci_high, n_tasks."""
        columns = [f.name for f in dataclasses.fields(MetricRow)]
        frame = pd.DataFrame([dataclasses.asdict(r) for r in self.rows], columns=columns)
        for col in ("value", "ci_low", "ci_high"):
            frame[col] = frame[col].astype(float)
        return frame

    def comparisons_frame(self) -> pd.DataFrame:
        columns = [f.name for f in dataclasses.fields(Comparison)]
        return pd.DataFrame([dataclasses.asdict(c) for c in self.comparisons], columns=columns)

    @property
    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(r.scenario for r in self.rows))

    def value(
        self, scenario: str, method: str, metric: str, support: str = ALL_SUPPORT
    ) -> float | None:
        for r in self.rows:
            if (r.scenario, r.method, r.metric, r.support) == (scenario, method, metric, support):
                return r.value
        raise KeyError((scenario, method, metric, support))

    def to_dict(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "comparisons": [dataclasses.asdict(c) for c in self.comparisons],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Report:
        return cls(
            rows=tuple(MetricRow(**r) for r in raw["rows"]),
            comparisons=tuple(Comparison(**c) for c in raw["comparisons"]),
            info=dict(raw["info"]),
        )

    def text_table(self) -> str:
        """A fixed-width table per scenario, for the log."""
        lines = []
        for scenario in self.scenarios:
            n = self.info["scenarios"][scenario]["tasks"]
            lines.append(f"{scenario} ({n} tasks)")
            lines.append(f"  {'method':<21}" + "".join(f"{m:>9}" for m in METRICS))
            for method in self._methods(scenario):
                cells = [self.value(scenario, method, m) for m in METRICS]
                text = "".join(f"{'-':>9}" if v is None else f"{v:>9.4f}" for v in cells)
                lines.append(f"  {method:<21}{text}")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        info = self.info
        ci = (
            f"95% percentile bootstrap intervals over users ({info['bootstrap']} resamples, "
            f"seed {info['seed']}) in brackets"
            if info["bootstrap"]
            else "no confidence intervals (bootstrap disabled)"
        )
        out = [
            "# Cold-start evaluation",
            "",
            f"- checkpoint: `{info['checkpoint']}` (best epoch {info['best_epoch']}, "
            f"validation MAE {_fmt(info['best_val_mae'])})",
            f"- data: `{info['data_dir']}` ({info['data_config']['dataset']}, "
            f"data seed {info['data_config']['seed']})",
            f"- {ci}; nDCG uses gain 2^r - 1 over each user's {info['query_size']} query items",
            f"- created {info['created']}",
            "",
            "## Metrics per scenario",
            "",
        ]
        for scenario in self.scenarios:
            out += [f"### {scenario} ({info['scenarios'][scenario]['tasks']} tasks)", ""]
            out += _md_table(
                ["method", *METRICS],
                [
                    [method, *(self._cell(scenario, method, m) for m in METRICS)]
                    for method in self._methods(scenario)
                ],
            )
            out.append("")
        out += ["## By support size (MAE / nDCG@3)", ""]
        labels = [label for label, _, _ in SUPPORT_BUCKETS]
        body = []
        for scenario in self.scenarios:
            counts = info["scenarios"][scenario]["support_buckets"]
            body.append([f"*{scenario}: tasks*", *(str(counts.get(lb, 0)) for lb in labels)])
            for method in self._methods(scenario):
                if method == "random":
                    continue
                cells = []
                for lb in labels:
                    mae = self._get(scenario, method, "mae", lb)
                    ndcg = self._get(scenario, method, "ndcg@3", lb)
                    cells.append(f"{_fmt(mae)} / {_fmt(ndcg)}" if ndcg is not None else "")
                body.append([f"{scenario}: {method}", *cells])
        out += _md_table(["scenario: method", *labels], body)
        out += [
            "",
            "## MeLU minus each baseline (paired bootstrap)",
            "",
            "Negative MAE differences and positive nDCG differences favour MeLU; "
            "* marks intervals that exclude 0.",
            "",
        ]
        shown = ("mae", "ndcg@3", "ndcg@10")
        body = []
        for scenario in self.scenarios:
            for method in self._methods(scenario):
                if method == MELU:
                    continue
                cells = []
                for metric in shown:
                    c = self._comparison(scenario, method, metric)
                    cells.append("-" if c is None else _fmt_diff(c))
                body.append([scenario, method, *cells])
        out += _md_table(["scenario", "baseline", *(f"Δ {m}" for m in shown)], body)
        out += ["", "## Methods", ""]
        out += [f"- `{name}`: {text}" for name, text in METHODS.items()]
        return "\n".join(out) + "\n"

    # --- helpers ---

    def _methods(self, scenario: str) -> list[str]:
        return list(dict.fromkeys(r.method for r in self.rows if r.scenario == scenario))

    def _get(self, scenario: str, method: str, metric: str, support: str) -> float | None:
        try:
            return self.value(scenario, method, metric, support)
        except KeyError:
            return None

    def _cell(self, scenario: str, method: str, metric: str) -> str:
        for r in self.rows:
            if (r.scenario, r.method, r.metric, r.support) == (
                scenario,
                method,
                metric,
                ALL_SUPPORT,
            ):
                if r.value is None:
                    return "-"
                if r.ci_low is None or r.ci_high is None:
                    return _fmt(r.value)
                return f"{r.value:.4f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
        return "-"

    def _comparison(self, scenario: str, baseline: str, metric: str) -> Comparison | None:
        for c in self.comparisons:
            if (c.scenario, c.baseline, c.metric) == (scenario, baseline, metric):
                return c
        return None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_diff(c: Comparison) -> str:
    text = f"{c.diff:+.4f}"
    if c.ci_low is not None and c.ci_high is not None:
        text += f" [{c.ci_low:+.3f}, {c.ci_high:+.3f}]"
    return text + (" *" if c.significant else "")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return lines


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
    models: dict[str, tuple[MetaLearner, int | None]],
    stats: RatingStats,
    user_table: torch.Tensor,
    item_table: torch.Tensor,
    rng: np.random.Generator,
) -> Predictions:
    """Query predictions of every model (learner, local steps) and baseline on ``tasks``."""
    if not bool(tasks.batch_all.mask_qry.all()):
        raise ValueError(f"{tasks.name}: every task must have a full query set")
    methods: dict[str, tuple[np.ndarray | None, np.ndarray]] = {}
    for name, (learner, steps) in models.items():
        pred = predict_queries(learner, tasks, user_table, item_table, steps=steps)
        methods[name] = (pred, pred)
    methods.update(simple_baselines(tasks, stats, rng))
    return Predictions(
        scenario=tasks.name,
        y_true=tasks.batch_all.y_qry.cpu().numpy().astype(np.float64),
        support_sizes=np.asarray(tasks.support_sizes),
        methods=methods,
    )


# --- entry points -------------------------------------------------------------------------------


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
    regression_epochs: int = REGRESSION_EPOCHS,
) -> Report:
    """Evaluate a checkpoint and every baseline on the cold-start scenarios.

    ``data`` (prepared with the checkpoint's data config and encoder) saves reading
    ``data_dir`` again. ``max_tasks`` evaluates a seeded random subset of each scenario
    (quick runs, the notebook's small mode). ``seed`` drives the bootstrap, the random
    baseline, the subsets and the regression baseline's training.
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
    log.info("training the regression baseline (%d epochs)", regression_epochs)
    regression, regression_info = train_regression(
        data, ck.model, ck.meta, epochs=regression_epochs, seed=seed, device=device
    )
    models: dict[str, tuple[MetaLearner, int | None]] = {
        MELU: (learner, None),
        "melu_no_adapt": (learner, 0),
        "regression_finetuned": (regression, None),
        "regression": (regression, 0),
    }
    stats = RatingStats.fit(data.train_ratings, data.catalogue.rows, len(data.catalogue.item_ids))
    user_table, item_table = data.user_table.to(device), data.catalogue.table.to(device)

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
        log.info("evaluating %s (%d tasks)", name, len(tasks))
        preds = predict_scenario(
            tasks.to(device),
            models,
            stats,
            user_table,
            item_table,
            np.random.default_rng([seed, key, 2000]),
        )
        new_rows, new_comparisons = score(preds, bootstrap, seed)
        rows += new_rows
        comparisons += new_comparisons
        labels = support_bucket(preds.support_sizes)
        scenario_info[name] = {
            "tasks": len(tasks),
            "tasks_total": len(data.tasks[name]),
            "support_median": float(np.median(preds.support_sizes)),
            "support_buckets": {lb: int((labels == lb).sum()) for lb, _, _ in SUPPORT_BUCKETS},
            # Share of query ratings whose item has no training rating (new items).
            "unseen_query_items": float(
                (stats.item_count[tasks.batch_all.x_qry.cpu().numpy()] == 0).mean()
            ),
        }

    metrics = ck.metrics
    info: dict[str, Any] = {
        "checkpoint": ck_path,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "bootstrap": bootstrap,
        "ci_level": CI_LEVEL,
        "seed": seed,
        "max_tasks": max_tasks,
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
        "global_mean": stats.global_mean,
        "regression": regression_info,
        "scenarios": scenario_info,
        "methods": METHODS,
    }
    info["seconds"] = round(time.perf_counter() - started, 2)
    return Report(tuple(rows), tuple(comparisons), info)


def evaluate_command(
    checkpoint: Path,
    data_dir: Path,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
    include_warm: bool = False,
    device: str = "auto",
    bootstrap: int = 1000,
    max_tasks: int | None = None,
    regression_epochs: int = REGRESSION_EPOCHS,
) -> int:
    """``melu evaluate``: log the table, write JSON and Markdown reports; 0 on success.

    ``max_tasks`` and ``regression_epochs`` are not on the command line; tests shorten runs
    with them.
    """
    from melu.train import resolve_device  # train pulls in DDP and tqdm: only when used

    report = evaluate_checkpoint(
        checkpoint,
        data_dir,
        include_warm=include_warm,
        bootstrap=bootstrap,
        device=resolve_device(device),
        max_tasks=max_tasks,
        regression_epochs=regression_epochs,
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

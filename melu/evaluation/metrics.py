"""Metrics as pure functions: rating error, nDCG over a few rated items, ranking a catalogue.

Every function returns each user's contribution (``[n]``); :func:`summarise` turns those into
the reported number, and the bootstrap resamples users. Two families:

- MeLU's protocol ranks each user's ``Q = 10`` already-rated query items: MAE, RMSE and nDCG
  with graded gain ``2^r - 1`` (:func:`per_user_metrics`);
- the catalogue protocol ranks every candidate item: Recall, NDCG (binary relevance),
  HitRate and MRR from the relevance of the ranked list (:func:`ranking_metrics`), and judges
  the predicted ratings of the held-out items (:func:`calibration_error`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NDCG_KS: tuple[int, ...] = (1, 3, 10)
RATING_METRICS: tuple[str, ...] = ("mae", "rmse")
METRICS: tuple[str, ...] = (*RATING_METRICS, *(f"ndcg@{k}" for k in NDCG_KS))
LOWER_IS_BETTER = frozenset(RATING_METRICS)
# The catalogue protocol's metrics, all higher-is-better.
RANKING_METRICS: tuple[str, ...] = ("recall@10", "recall@20", "ndcg@10", "hitrate@10", "mrr")
# The longest list any ranking metric looks at (MRR looks at the first hit, wherever it is).
RANKING_DEPTH = 20
# Width of the bins of predicted ratings over which calibration is measured: half a star.
CALIBRATION_BIN = 0.5
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


# --- MeLU's protocol: a few rated items per user ----------------------------------------------
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


def bootstrap_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """``[resamples, n]``: how often each user was drawn in each resample of ``indices``, so
    that ``counts @ values / n`` is every resample's mean of ``values [n, ...]`` at once."""
    resamples = indices.shape[0]
    flat = (np.arange(resamples)[:, None] * n + indices).ravel()
    return np.bincount(flat, minlength=resamples * n).reshape(resamples, n).astype(np.float64)


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


# --- the catalogue protocol: a ranked list over every candidate --------------------------------


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ranking_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, first_hit: np.ndarray
) -> dict[str, np.ndarray]:
    """Each user's Recall@10/20, NDCG@10, HitRate@10 and MRR ``[n]``.

    ``hits [n, >= 20]``: whether the item at each rank of the user's list is relevant;
    ``n_relevant [n]``: relevant items among the candidates (> 0); ``first_hit [n]``: the
    1-based rank of the first relevant item (``inf`` if none is ranked).

    Recall@k divides by ``min(k, n_relevant)`` (Liang et al. 2018, Steck 2019), so a perfect
    list scores 1 whatever the history's length; NDCG@k is binary, its ideal list holding
    ``min(k, n_relevant)`` hits.
    """
    hits = np.asarray(hits, dtype=np.float64)
    n_relevant = np.asarray(n_relevant, dtype=np.float64)
    if hits.ndim != 2 or hits.shape[1] < RANKING_DEPTH:
        raise ValueError(f"hits must be [n, >= {RANKING_DEPTH}], got {hits.shape}")
    if np.any(n_relevant <= 0):
        raise ValueError("every user needs at least one relevant item")
    out: dict[str, np.ndarray] = {}
    for k in (10, 20):
        out[f"recall@{k}"] = hits[:, :k].sum(1) / np.minimum(k, n_relevant)
    discount = _discounts(10)
    ideal = np.cumsum(discount)[np.minimum(10, n_relevant).astype(np.int64) - 1]
    out["ndcg@10"] = (hits[:, :10] @ discount) / ideal
    out["hitrate@10"] = (hits[:, :10].sum(1) > 0).astype(np.float64)
    out["mrr"] = 1.0 / np.asarray(first_hit, dtype=np.float64)
    return {m: out[m] for m in RANKING_METRICS}


def coverage(top: np.ndarray, n_candidates: int) -> float:
    """Distinct items across all users' lists ``top [n, k]`` over the number of candidates."""
    if n_candidates <= 0:
        raise ValueError("no candidates")
    return len(np.unique(np.asarray(top)[np.asarray(top) > 0])) / n_candidates


def popularity_percentile(counts: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Per catalogue row: the percentile (0..100, 100 = most rated) of its training count
    among ``candidates`` (rows); mean rank for ties, 0 outside the candidates."""
    counts = np.asarray(counts, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.int64)
    out = np.zeros(len(counts))
    if len(candidates) == 0:
        return out
    values = counts[candidates]
    below = np.searchsorted(np.sort(values), values, side="left")
    equal = np.searchsorted(np.sort(values), values, side="right") - below
    out[candidates] = 100.0 * (below + 0.5 * equal) / len(values)
    return out


def calibration_error(
    predicted: np.ndarray, actual: np.ndarray, width: float = CALIBRATION_BIN
) -> float:
    """Expected calibration error of predicted ratings: predictions are binned to the nearest
    multiple of ``width`` (half stars), and each bin's ``|mean predicted - mean actual|`` is
    weighted by its share of the ratings. 0 when, wherever the model predicts about r stars,
    the ratings average r; a model that predicts every user's mean for everything scores the
    spread of the users' means around their ratings, not 0."""
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1)
    actual = np.asarray(actual, dtype=np.float64).reshape(-1)
    if predicted.shape != actual.shape:
        raise ValueError(f"predicted {predicted.shape} and actual {actual.shape} differ")
    if len(predicted) == 0:
        raise ValueError("no ratings")
    bins = np.round(predicted / width).astype(np.int64)
    index = np.unique(bins, return_inverse=True)[1]
    gap = np.bincount(index, weights=predicted - actual)  # per bin: n (mean pred - mean actual)
    return float(np.abs(gap).sum() / len(predicted))

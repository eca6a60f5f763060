"""What the taste model settles on validation users once training ends, per number of ratings:
how far its local steps go, and how much of EDLAE's fold-in its list takes
(:func:`choose_fold_in`).

The local steps' sizes are meta-learned on the training users' episodes, where they pay at
every support size. On users the model never saw they pay only with enough ratings: on MeLU's
validation users (seed 0, one step) Recall@10 from 3 / 5 / 10 / 20 ratings was 0.358 / 0.390 /
0.407 / 0.399 without the step and 0.344 / 0.383 / 0.396 / 0.411 with it. So, once training
ends, each support-size bucket (:data:`melu.taste.SCHEDULE_EDGES`) gets the multiple of the
learned step (:data:`MULTIPLES`) with the best validation Recall@10 at a representative size
(:data:`BUCKET_SIZES`); the largest bucket (32 ratings and more) takes the choice of the one
below it. The choice lives in the model (``TasteNet.step_schedule``), so training's selection,
evaluation and the service adapt alike. :func:`choose_step_schedule` judges whatever lists the
model serves at the time: :mod:`melu.train` calls it before the fold-in exists (the model's
own lists, which the fold-in's choice blends) and once more after (the served lists).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch
from sklearn.linear_model import LinearRegression

from melu.config import RatingScale
from melu.evaluation import metrics as M
from melu.fold_in import DROPOUTS, MAX_ITEMS, REGULARISERS, edlae_gram, standardised
from melu.predict import catalogue_recall, recall_of, score_episodes
from melu.ranking import hits_in_top_blends
from melu.scoring import CatalogueScorer
from melu.tasks import TaskSet
from melu.taste import BUCKET_LABELS, Support
from melu.taste_learner import TasteLearner, TasteState

log = logging.getLogger(__name__)

# The learned step first: a bucket leaves it only for a multiple that does strictly better.
MULTIPLES: tuple[float, ...] = (1.0, 0.0, 0.5, 1.5)
# The support size each bucket is judged at (buckets 1-3, 4-7, 8-15, 16-31 ratings).
BUCKET_SIZES: tuple[int, ...] = (3, 5, 10, 20)
# Support draws averaged per choice: one draw of MeLU's 265 validation users leaves about 0.01
# of noise.
DRAWS = 4


@torch.no_grad()
def choose_step_schedule(
    learner: TasteLearner,
    table: torch.Tensor,
    recommendable: torch.Tensor,
    validation: TaskSet,
    user_table: torch.Tensor,
    seed: int,
) -> dict[str, list[float]]:
    """Set ``learner.net.step_schedule`` to the best multiple per bucket (see the module
    docstring) and return every bucket's validation Recall@10 for every multiple."""
    schedule = learner.net.step_schedule
    was_training = learner.training
    learner.eval()
    scorer = CatalogueScorer(learner, table, recommendable)
    liked = learner.net.cfg.liked_rating
    tried: dict[str, list[float]] = {}
    chosen: list[float] = []
    try:
        for size in BUCKET_SIZES:
            values = []
            for multiple in MULTIPLES:
                schedule.fill_(multiple)
                values.append(mean_recall(scorer, validation, user_table, liked, size, seed))
            tried[str(size)] = [round(v, 5) for v in values]
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            chosen.append(MULTIPLES[best])
        chosen.append(chosen[-1])
        schedule.copy_(torch.tensor(chosen, dtype=schedule.dtype))
    finally:
        learner.train(was_training)
    log.info(
        "local steps per support size, chosen on validation users: %s (multiples of the "
        "learned step; Recall@10 tried: %s)",
        ", ".join(f"{s}: x{m:g}" for s, m in zip(BUCKET_LABELS,
                                                  chosen, strict=True)),
        tried,
    )  # fmt: skip
    return tried


def mean_recall(
    scorer: CatalogueScorer,
    validation: TaskSet,
    user_table: torch.Tensor,
    liked: float,
    size: int,
    seed: int,
) -> float:
    """Validation Recall@10 of the scorer's lists from ``size`` ratings, averaged over the
    :data:`DRAWS` support draws every choice here is judged on (seeds ``seed * 1000 +
    draw``)."""
    total = sum(
        catalogue_recall(scorer, validation, user_table, liked, size, seed=seed * 1000 + draw)
        for draw in range(DRAWS)
    )
    return total / DRAWS


# The support sizes each bucket's rating calibration is fitted at (buckets 1-3, 4-7, 8-15,
# 16-31 ratings; 32 and more take the one below's).
CALIBRATION_SIZES: tuple[tuple[int, ...], ...] = ((1, 3), (5,), (10,), (20,))
# The smallest slope a calibration keeps, so that it never flattens or turns a user's order.
MIN_SLOPE = 0.1


@torch.no_grad()
def choose_rating_calibration(
    learner: TasteLearner,
    table: torch.Tensor,
    recommendable: torch.Tensor,
    validation: TaskSet,
    user_table: torch.Tensor,
    seed: int,
) -> dict[str, Any]:
    """Fit ``learner.net.rating_calibration``: per support-size bucket, the least-squares line
    from the predicted to the actual rating of validation users' held-out films (candidates
    only, over :data:`DRAWS` support draws at the bucket's :data:`CALIBRATION_SIZES`). The
    line is fitted on the predictions it is applied to, before any clipping; the calibration
    errors and MAE are those of the predictions clipped to the scale, as they are judged
    (a line fitted on clipped predictions but applied to unclipped ones misplaces the films
    predicted beyond the scale, which a large local step gives). Returns each bucket's line and
    its in-sample calibration error and MAE before and after, and the served lists'
    validation Recall@10 before and after (the floor compares the recalibrated ratings)."""
    net = learner.net
    calibration = net.rating_calibration
    was_training = learner.training
    learner.eval()
    scorer = CatalogueScorer(learner, table, recommendable)
    liked, scale = net.cfg.liked_rating, net.scale

    def recalls() -> list[float]:
        return [
            round(mean_recall(scorer, validation, user_table, liked, size, seed), 5)
            for size in BUCKET_SIZES
        ]

    lines: list[tuple[float, float]] = []
    fits: dict[str, dict[str, float]] = {}
    try:
        net.uncalibrate()
        before = recalls()
        for label, sizes in zip(BUCKET_LABELS, CALIBRATION_SIZES, strict=False):
            raw, actual = heldout_predictions(
                scorer, validation, user_table, sizes, seed, liked, scale, clip=False
            )
            fit = LinearRegression().fit(raw[:, None], actual)
            slope = max(float(fit.coef_[0]), MIN_SLOPE)
            offset = float(actual.mean() - slope * raw.mean())
            lines.append((offset, slope))
            predicted = np.clip(raw, scale.low, scale.high)
            after = np.clip(offset + slope * raw, scale.low, scale.high)
            fits[label] = {
                "offset": round(offset, 5),
                "slope": round(slope, 5),
                "ratings": len(actual),
                "calibration_error": round(M.calibration_error(predicted, actual), 5),
                "calibration_error_after": round(M.calibration_error(after, actual), 5),
                "mae": round(float(np.abs(predicted - actual).mean()), 5),
                "mae_after": round(float(np.abs(after - actual).mean()), 5),
            }
        lines.append(lines[-1])
        calibration.copy_(torch.tensor(lines).to(calibration))
        after_recall = recalls()
    finally:
        learner.train(was_training)
    log.info(
        "ratings recalibrated on validation users per support size: %s; served lists' "
        "Recall@10 from %s ratings %s before, %s after",
        ", ".join(f"{label}: {f['offset']:+.3f} + {f['slope']:.3f} r (calibration error "
                  f"{f['calibration_error']:.3f} -> {f['calibration_error_after']:.3f})"
                  for label, f in fits.items()),
        "/".join(map(str, BUCKET_SIZES)), before, after_recall,
    )  # fmt: skip
    return {
        # As the model holds them (its dtype), so that the metrics and the weights agree.
        "lines": calibration.tolist(),
        "fits": fits,
        "recall@10": {"sizes": list(BUCKET_SIZES), "before": before, "after": after_recall},
    }


def heldout_predictions(
    scorer: CatalogueScorer,
    validation: TaskSet,
    user_table: torch.Tensor,
    sizes: tuple[int, ...],
    seed: int,
    liked: float,
    scale: RatingScale,
    clip: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Every held-out candidate rating of ``validation``'s users over the :data:`DRAWS`
    support draws at each of ``sizes``: the predictions (``clip``: clipped to the scale, as
    they are judged) and the ratings."""
    predicted: list[np.ndarray] = []
    actual: list[np.ndarray] = []
    for size in sizes:
        for draw in range(DRAWS):
            for found in score_episodes(
                scorer, validation, user_table, liked, size, seed * 1000 + draw
            ):
                rows = found.targets
                keep = (rows > 0) & found.allowed.gather(1, rows)
                rating = found.scores.rating.gather(1, rows)
                if clip:
                    rating = rating.clamp(scale.low, scale.high)
                predicted.append(rating[keep].double().cpu().numpy())
                actual.append(found.target_ratings[keep].double().cpu().numpy())
    return np.concatenate(predicted), np.concatenate(actual)


# The fold-in's weight in the blended list (melu.fold_in), per support-size bucket; 0 first:
# a bucket takes the fold-in only where it does strictly better. Fine below 0.5: with the
# coarser (0, 0.25, 0.5, 1, 2) MeLU's validation users chose 0.25, the lowest nonzero, at
# nearly every size, and 1/16-3/16 listed better still on those validation users.
FOLD_IN_WEIGHTS: tuple[float, ...] = (
    0.0,
    1 / 32,
    1 / 16,
    3 / 32,
    1 / 8,
    3 / 16,
    1 / 4,
    3 / 8,
    1 / 2,
    1.0,
    2.0,
)


@torch.no_grad()
def choose_fold_in(
    learner: TasteLearner,
    table: torch.Tensor,
    recommendable: torch.Tensor,
    validation: TaskSet,
    user_table: torch.Tensor,
    ratings: tuple[np.ndarray, np.ndarray, int],
    seed: int,
) -> dict[str, Any]:
    """Fit EDLAE's fold-in into ``learner.net.fold_in`` with the setting ``(p, lambda)``, and
    weigh it per support-size bucket, that list best on validation users (mean Recall@10 over
    :data:`BUCKET_SIZES` and :data:`DRAWS` support draws, each bucket at its best weight of
    :data:`FOLD_IN_WEIGHTS`); the largest bucket takes the weight of the one below it.

    ``ratings``: the training ratings' user ids and item-id vocabulary indices, and the
    vocabulary's size. Returns what was tried; a catalogue of more than
    :data:`melu.fold_in.MAX_ITEMS` rated items is left without a fold-in.
    """
    fold_in = learner.net.fold_in
    assert fold_in is not None, "the model has no fold-in (ModelConfig.fold_in_neighbours)"
    users, items, n_items = ratings
    n_rated = len(np.unique(items))
    if n_rated > MAX_ITEMS:
        log.info("no fold-in: %d rated items, more than %d", n_rated, MAX_ITEMS)
        return {"skipped": f"{n_rated} rated items, more than {MAX_ITEMS}"}
    fold_in.weight.zero_()
    gram = edlae_gram(users, items)
    scorer = CatalogueScorer(learner, table, recommendable)
    liked = learner.net.cfg.liked_rating
    # The model's lists do not depend on the fold-in's setting: scored once per draw, and kept
    # as what the blend needs (not the adapted states, whose co-occurrence is [B, V]).
    draws = {
        size: validation_lists(scorer, validation, user_table, liked, size, seed)
        for size in BUCKET_SIZES
    }
    tried: dict[str, dict[str, list[float]]] = {}
    best: tuple[float, tuple[float, float], list[float]] | None = None
    kept: tuple[torch.Tensor, torch.Tensor] | None = None  # the best setting's lists: no refit
    for dropout in DROPOUTS:
        for l2 in REGULARISERS:
            fold_in.fit(gram, n_items, dropout, l2)
            values = {str(size): _blended_recalls(scorer, draws[size]) for size in BUCKET_SIZES}
            key = f"p={dropout:g}, lambda={l2:g}"
            tried[key] = {size: [round(v, 5) for v in vs] for size, vs in values.items()}
            chosen = [FOLD_IN_WEIGHTS[max(range(len(v)), key=lambda i: (v[i], -i))]
                      for v in values.values()]  # fmt: skip
            overall = sum(max(v) for v in values.values()) / len(values)
            if best is None or overall > best[0]:
                best = (overall, (dropout, l2), chosen)
                kept = (fold_in.index, fold_in.value)
    assert best is not None and kept is not None
    _, (dropout, l2), chosen = best
    fold_in.index, fold_in.value = kept
    chosen.append(chosen[-1])
    fold_in.weight.copy_(torch.tensor(chosen, dtype=fold_in.weight.dtype))
    log.info(
        "fold-in chosen on validation users: EDLAE p=%g, lambda=%g; weight per support size %s",
        dropout, l2,
        ", ".join(f"{s}: {w:g}" for s, w in zip(BUCKET_LABELS,
                                                 chosen, strict=True)),
    )  # fmt: skip
    return {"dropout": dropout, "l2": l2, "weights": chosen, "recall@10": tried}


class _Lists(NamedTuple):
    """A batch of validation lists as the fold-in's choice needs them: the model's scores
    standardised over each user's candidates (the recommendable rows minus the support), its
    floor, the candidates, the relevant rows and the supports."""

    z_rank: torch.Tensor
    above_floor: torch.Tensor | None
    allowed: torch.Tensor
    relevant: torch.Tensor
    support: Support


def validation_lists(
    scorer: CatalogueScorer,
    validation: TaskSet,
    user_table: torch.Tensor,
    liked: float,
    size: int,
    seed: int,
) -> list[_Lists]:
    """The model's lists for ``validation`` from ``size`` ratings, over the :data:`DRAWS`
    support draws the fold-in's choice uses (seeds ``seed * 1000 + draw``)."""
    return [
        _Lists(
            standardised(found.scores.rank, found.allowed),
            found.scores.above_floor,
            found.allowed,
            found.relevant,
            found.state.support,
        )
        for draw in range(DRAWS)
        for found in score_episodes(scorer, validation, user_table, liked, size, seed * 1000 + draw)
        if isinstance(found.state, TasteState)
    ]


def _blended_recalls(scorer: CatalogueScorer, lists: list[_Lists]) -> list[float]:
    """Mean validation Recall@10 of ``lists`` blended with the fold-in at each weight of
    :data:`FOLD_IN_WEIGHTS`, as :func:`melu.fold_in.blend` blends them (at 0: the model's
    order, which standardising does not change)."""
    recalls: list[list[torch.Tensor]] = [[] for _ in FOLD_IN_WEIGHTS]
    for found in lists:
        z_fold = standardised(scorer.fold_in_scores(found.support), found.allowed)
        hits = hits_in_top_blends(found.z_rank, z_fold, FOLD_IN_WEIGHTS, found.allowed,
                                  found.relevant, 10, found.above_floor)  # fmt: skip
        for i, recall in enumerate(recall_of(hits, found.relevant, 10, found.z_rank.dtype)):
            recalls[i].append(recall)
    return [float(torch.cat(r).mean()) if r else 0.0 for r in recalls]

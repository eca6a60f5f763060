"""Validation users only: should the weight of the adapted predicted rating in the list depend
on how many ratings a user gave, and would the local step then carry more of the list?

The served list ranks ``logit + w * predicted rating`` (``ModelConfig.rank_rating_weight``, one
``w`` = 0.5 for every support size, chosen on seed 0's validation users), blends in EDLAE's
fold-in at a weight chosen per support size, and holds the films predicted below the user's own
mean back (the floor). The predicted rating comes from the adapted ``rating_bias`` and
``rating_taste``: with 20 ratings it knows more of the user than with 3, so a larger ``w`` might
pay there, and make the local step (which adapts those fast weights) matter more.

For each taste-model run, support size S in :data:`melu.schedule.BUCKET_SIZES` and the
schedule's :data:`melu.schedule.DRAWS` support draws, every validation user's served list is
scored for each step multiple of :data:`MULTIPLES` (x0: zero local steps), rating weight of
:data:`RATING_WEIGHTS` and fold-in weight of :data:`melu.schedule.FOLD_IN_WEIGHTS` (the run's
EDLAE setting; floor included). The users are split in two halves at random: a setting chosen
on one half (best mean Recall@10) is judged on the other, then the halves swap, so every user
is judged once by a choice made without them. Reported per S, out of sample:

- ``today``: the run's own step multiple and w = 0.5, the fold-in weight chosen on the other
  half (what the run does, its fold-in weight chosen without the judged users);
- ``w per S``: the run's step multiple, (w, fold-in weight) chosen on the other half;
- ``joint``: (step multiple, w, fold-in weight) all chosen on the other half;
- ``zero steps``: x0, (w, fold-in weight) chosen on the other half; ``joint - zero steps`` is
  then what the step adds when each gets its best weights.

    python benchmarks/rating_weight_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/rating_weight_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main, recall_table

from melu.fold_in import standardised
from melu.objectives import candidates, sample_episodes
from melu.predict import recall_of
from melu.ranking import hits_in_top_blends
from melu.schedule import BUCKET_SIZES, DRAWS, FOLD_IN_WEIGHTS
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner, TasteState

MULTIPLES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
RATING_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
TODAY_WEIGHT = 0.5
log = logging.getLogger("rating_weight_probe")


def recalls(path: Path, data_dir: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], Any]:
    """Per support size: Recall@10 ``[M, W, F, N]`` of every (multiple, rating weight, fold-in
    weight) for the N (user, draw) lists with a relevant film, and each list's user index."""
    checkpoint, learner, data, validation = load_run(path, data_dir)
    assert isinstance(learner, TasteLearner)
    if learner.net.fold_in is None:
        raise SystemExit(f"{path}: a taste model without a fold-in")
    table, recommendable = data.catalogue.table, data.catalogue.recommendable
    # Scores without the rating term: the logits; the ratings come beside them.
    learner.net.cfg = dataclasses.replace(learner.net.cfg, rank_rating_weight=0.0)
    scorer = CatalogueScorer(learner, table, recommendable)
    liked = learner.net.cfg.liked_rating
    seed = checkpoint.train.seed
    schedule = learner.net.step_schedule
    chosen = schedule.clone()
    found: dict[int, np.ndarray] = {}
    owners: dict[int, np.ndarray] = {}
    for size in BUCKET_SIZES:
        per_multiple: list[list[torch.Tensor]] = [[] for _ in MULTIPLES]
        users: list[np.ndarray] = []
        for draw in range(DRAWS):
            generator = torch.Generator().manual_seed(seed * 1000 + draw)
            for start in range(0, len(validation), 64):
                index = np.arange(start, min(start + 64, len(validation)))
                ep = sample_episodes(
                    validation.batch(index), data.user_table, table, (size, size), liked,
                    generator=generator,
                )  # fmt: skip
                allowed = candidates(recommendable, ep.rows_spt, ep.mask_spt)
                relevant = torch.zeros_like(allowed)
                relevant.scatter_(1, ep.targets, ep.liked > 0)
                relevant &= allowed
                users.append(index[(relevant.sum(1) > 0).numpy()])
                for m, multiple in enumerate(MULTIPLES):
                    schedule.fill_(multiple)
                    state = scorer.adapt(ep.users, ep.rows_spt, ep.y_spt, ep.mask_spt)
                    assert isinstance(state, TasteState)
                    scores = scorer.scores(state, ep.users, fold_in=False)
                    fold = standardised(scorer.fold_in_scores(state.support), allowed)
                    by_weight = []
                    for weight in RATING_WEIGHTS:
                        # Rows without a rating rank by their logit, as the service ranks.
                        rank = torch.where(torch.isnan(scores.rating), scores.rank,
                                           scores.rank + weight * scores.rating)  # fmt: skip
                        z = standardised(rank, allowed)
                        hits = hits_in_top_blends(z, fold, FOLD_IN_WEIGHTS, allowed, relevant,
                                                  10, scores.above_floor)  # fmt: skip
                        by_weight.append(recall_of(hits, relevant, 10, torch.float64))
                    per_multiple[m].append(torch.stack(by_weight))  # [W, F, n]
        schedule.copy_(chosen)
        found[size] = torch.stack([torch.cat(p, dim=-1) for p in per_multiple]).numpy()
        owners[size] = np.concatenate(users)
    return found, owners, (checkpoint, chosen.tolist(), learner.net.fold_in.weight.tolist())


def out_of_sample(values: np.ndarray, half: np.ndarray, fixed: dict[int, int]) -> dict[str, Any]:
    """``values [..., N]`` over some axes of (multiple, rating weight, fold-in weight), the
    axes in ``fixed`` held at the given index: the setting of the free axes best on one half,
    judged on the other, both ways; returns the mean over all N and each half's choice."""
    view = values
    for axis in sorted(fixed, reverse=True):
        view = np.take(view, fixed[axis], axis=axis)
    judged = np.zeros(values.shape[-1])
    picks = []
    for fitted in (half, ~half):
        means = view[..., fitted].mean(-1)
        # Ties: the first setting (the smallest weight, the smallest multiple).
        best = np.unravel_index(int(np.argmax(means)), means.shape)
        judged[~fitted] = view[best][~fitted]
        picks.append([int(i) for i in best])
    return {"recall@10": float(judged.mean()), "picks": picks}


def probe(path: Path, args: argparse.Namespace) -> Rows:
    found, owners, (checkpoint, schedule, fold_weights) = recalls(path, args.data_dir)
    seed = checkpoint.train.seed
    n_users = max(int(o.max()) for o in owners.values()) + 1
    in_first = np.random.default_rng(seed).permutation(n_users) < n_users // 2
    today = RATING_WEIGHTS.index(TODAY_WEIGHT)
    rows = []
    for bucket, size in enumerate(BUCKET_SIZES):
        values, half = found[size], in_first[owners[size]]
        own = MULTIPLES.index(float(schedule[bucket]))
        zero = MULTIPLES.index(0.0)
        results = {
            "today": out_of_sample(values, half, {0: own, 1: today}),
            "w_per_S": out_of_sample(values, half, {0: own}),
            "joint": out_of_sample(values, half, {}),
            "zero_steps": out_of_sample(values, half, {0: zero}),
            "zero_steps_today_w": out_of_sample(values, half, {0: zero, 1: today}),
        }
        row: dict[str, Any] = {
            "checkpoint": str(path),
            "seed": seed,
            "S": size,
            "schedule_multiple": float(schedule[bucket]),
            "run_fold_in_weight": float(fold_weights[bucket]),
            "lists": int(values.shape[-1]),
            # In-sample, for reference: the run's own step, w = 0.5 and fold-in weight.
            "recall@10_run": float(
                values[own, today, FOLD_IN_WEIGHTS.index(fold_weights[bucket])].mean()
            ),
        }
        for name, result in results.items():
            row[f"recall@10_{name}"] = round(result["recall@10"], 4)
            row[f"picks_{name}"] = result["picks"]
        rows.append(row)
        log.info("%s", row)
    return rows


NAMES = ("run", "today", "w_per_S", "joint", "zero_steps", "zero_steps_today_w")

if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, recall_table(NAMES, 18)))

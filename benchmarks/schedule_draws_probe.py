"""Validation users only: are the step schedule's choices more than the noise of its draws?

``melu.schedule.choose_step_schedule`` gives each support-size bucket the multiple of the
learned step with the best validation Recall@10 over 4 support draws, keeping the learned step
(x1) unless another multiple does strictly better. Differences between multiples are a few
thousandths, about the noise of 4 draws of 265 users. Here each run's served lists (fold-in and
floor included) are scored at every multiple on ``--draws`` fresh support draws (seeds the
schedule never used), each user's Recall@10 averaged over their draws, and each multiple's
difference from zero steps (x0) is given with a 95% bootstrap interval over users.

    python benchmarks/schedule_draws_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/schedule_draws_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main

from melu.predict import hits_at, score_episodes
from melu.schedule import BUCKET_SIZES, MULTIPLES
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

# Draw seeds ``seed * 1000 + FIRST_DRAW + d``: the schedule's are ``seed * 1000 + 0..3``.
FIRST_DRAW = 100
BOOTSTRAP = 2000
log = logging.getLogger("schedule_draws_probe")


def user_recalls(
    scorer: CatalogueScorer, tasks: Any, user_table: torch.Tensor, liked: float, size: int,
    seed: int, draws: int,
) -> np.ndarray:  # fmt: skip
    """``[users]``: each validation user's served Recall@10 averaged over ``draws`` support
    draws (NaN for a user with no relevant film in any draw)."""
    total = np.zeros(len(tasks))
    count = np.zeros(len(tasks))
    for draw in range(draws):
        start = 0
        for found in score_episodes(scorer, tasks, user_table, liked, size,
                                    seed * 1000 + FIRST_DRAW + draw):  # fmt: skip
            n = found.relevant.shape[0]
            keep = (found.relevant.sum(1) > 0).numpy()
            recall = hits_at(found.scores.rank, found.allowed, found.relevant,
                             found.scores.above_floor).double().numpy()  # fmt: skip
            index = np.arange(start, start + n)[keep]
            total[index] += recall
            count[index] += 1
            start += n
    with np.errstate(invalid="ignore"):
        return total / count


def interval(diff: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    picks = rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    means = diff[picks].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def add_paired(
    row: dict[str, Any], values: dict[str, np.ndarray], base: str, label: str,
    real: np.ndarray, rng: np.random.Generator,
) -> None:  # fmt: skip
    """Fill ``row`` with each list's mean Recall@10 over the ``real`` users
    (``recall@10_NAME``) and, for every list but ``base``, its mean difference from ``base``
    with a 95% bootstrap interval over users (``NAME_minus_LABEL``, ``..._ci``)."""
    for name, found in values.items():
        row[f"recall@10_{name}"] = round(float(found[real].mean()), 4)
        if name != base:
            diff = found[real] - values[base][real]
            low, high = interval(diff, rng)
            row[f"{name}_minus_{label}"] = round(float(diff.mean()), 4)
            row[f"{name}_minus_{label}_ci"] = [round(low, 4), round(high, 4)]


def probe(path: Path, args: argparse.Namespace) -> Rows:
    draws, fold_in = args.draws, not args.no_fold_in
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    if not fold_in and learner.net.fold_in is not None:
        # The model's own lists, as the schedule's first choice judges them.
        learner.net.fold_in.weight.zero_()
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    liked = learner.net.cfg.liked_rating
    seed = checkpoint.train.seed
    schedule = learner.net.step_schedule
    chosen = schedule.clone()
    rng = np.random.default_rng(seed)
    rows = []
    for bucket, size in enumerate(BUCKET_SIZES):
        per_multiple = {}
        for multiple in MULTIPLES:
            schedule.fill_(multiple)
            per_multiple[multiple] = user_recalls(
                scorer, validation, data.user_table, liked, size, seed, draws
            )
        schedule.copy_(chosen)
        real = ~np.isnan(per_multiple[0.0])
        row: dict[str, Any] = {
            "checkpoint": str(path),
            "seed": seed,
            "S": size,
            "draws": draws,
            "fold_in": fold_in,
            "users": int(real.sum()),
            "schedule_multiple": float(chosen[bucket]),
        }
        named = {f"x{multiple:g}": values for multiple, values in per_multiple.items()}
        add_paired(row, named, "x0", "x0", real, rng)
        rows.append(row)
        log.info("%s", row)
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draws", type=int, default=16)
    parser.add_argument(
        "--no-fold-in", action="store_true",
        help="the model's own lists, without the fold-in (as the schedule's first choice)",
    )  # fmt: skip


def table(rows: Rows) -> None:
    heads = [f"x{m:g} - x0 [95%]" for m in MULTIPLES if m]
    print(f"{'seed':>4} {'S':>2} {'sched.':>6} {'x0':>7} " + " ".join(f"{h:>26}" for h in heads))
    for r in rows:
        cells = [
            f"{r[f'x{m:g}_minus_x0']:+.4f} [{r[f'x{m:g}_minus_x0_ci'][0]:+.4f}, "
            f"{r[f'x{m:g}_minus_x0_ci'][1]:+.4f}]"
            for m in MULTIPLES
            if m
        ]
        print(f"{r['seed']:>4} {r['S']:>2} {'x' + format(r['schedule_multiple'], 'g'):>6} "
              f"{r['recall@10_x0']:>7.4f} " + " ".join(f"{c:>26}" for c in cells))  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

"""Validation users only: once the step schedule is chosen again on the served lists, should
the fold-in's weights be chosen again too?

``melu.train`` chooses the step schedule on the model's own lists, the fold-in under it, then
the schedule again on the served lists; the fold-in's weights were chosen for the first
schedule's lists. Here each run's fold-in is chosen again under its final schedule
(``melu.schedule.choose_fold_in``, its 4 draws, the ratings at the identity as in training),
and both lists are scored on ``--draws`` fresh support draws (the seeds of
``benchmarks/schedule_draws_probe.py``): each user's served Recall@10 averaged over their
draws, the difference with a 95% bootstrap interval over users.

    python benchmarks/fold_in_again_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/fold_in_again_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from probes import Rows, load_run, main
from schedule_draws_probe import interval, user_recalls

from melu.learners import training_pairs
from melu.schedule import BUCKET_SIZES, choose_fold_in
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

log = logging.getLogger("fold_in_again_probe")


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner) and learner.net.fold_in is not None
    net, seed = learner.net, checkpoint.train.seed
    table, recommendable = data.catalogue.table, data.catalogue.recommendable
    liked = net.cfg.liked_rating
    rng = np.random.default_rng(seed)

    def lists() -> dict[int, np.ndarray]:
        scorer = CatalogueScorer(learner, table, recommendable)
        return {
            size: user_recalls(scorer, validation, data.user_table, liked, size, seed, args.draws)
            for size in BUCKET_SIZES
        }

    before = lists()
    assert net.fold_in is not None
    kept = net.fold_in.weight.tolist()
    line = net.rating_calibration.clone()
    net.uncalibrate()
    with torch.no_grad():
        ratings = training_pairs(data.train_ratings, data.catalogue.rows, table)
        again = choose_fold_in(learner, table, recommendable, validation, data.user_table,
                               ratings, seed)  # fmt: skip
        # The recalibration fits the ratings, which the fold-in does not change.
        net.rating_calibration.copy_(line)
    after = lists()
    fitted = checkpoint.metrics["fold_in"]
    rows = []
    for bucket, size in enumerate(BUCKET_SIZES):
        real = ~np.isnan(before[size])
        diff = after[size][real] - before[size][real]
        low, high = interval(diff, rng)
        rows.append(
            {
                "checkpoint": str(path),
                "seed": seed,
                "S": size,
                "draws": args.draws,
                "schedule": net.step_schedule.tolist(),
                "fold_in_weight_kept": kept[bucket],
                "fold_in_weight_again": again["weights"][bucket],
                "setting_kept": [fitted["dropout"], fitted["l2"]],
                "setting_again": [again["dropout"], again["l2"]],
                "recall@10_kept": round(float(before[size][real].mean()), 4),
                "recall@10_again": round(float(after[size][real].mean()), 4),
                "again_minus_kept": round(float(diff.mean()), 4),
                "again_minus_kept_ci": [round(low, 4), round(high, 4)],
            }
        )
        log.info("%s", rows[-1])
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draws", type=int, default=16)


def table(rows: Rows) -> None:
    print(f"{'seed':>4} {'S':>2} {'weight kept':>11} {'again':>7} {'kept':>7} {'again':>7} "
          f"{'again - kept [95%]':>28}")  # fmt: skip
    for r in rows:
        ci = r["again_minus_kept_ci"]
        print(f"{r['seed']:>4} {r['S']:>2} {r['fold_in_weight_kept']:>11.4g} "
              f"{r['fold_in_weight_again']:>7.4g} {r['recall@10_kept']:>7.4f} "
              f"{r['recall@10_again']:>7.4f} "
              f"{r['again_minus_kept']:>+9.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}]")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

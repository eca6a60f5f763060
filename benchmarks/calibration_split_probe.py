"""Validation users only: should 1, 2 and 3 ratings each have their own rating-calibration line,
instead of one line for the bucket of 1-3 ratings fitted on 1 and 3 ratings together?

For each taste-model run: its predicted ratings without recalibration (the identity line) for
the validation users' held-out candidate films, from 1, 2 and 3 random ratings (the catalogue
protocol's draws, ``melu.evaluation.catalogue.build_cases`` with the run's seed); the users
split in two halves at random; on one half a line fitted by least squares to 1 and 3 ratings
pooled (what ``melu.schedule.choose_rating_calibration`` fits) and one per size; each judged on
the other half by the calibration error over half-star bins (``melu.evaluation.metrics``), then
the halves swapped and the two averaged.

    python benchmarks/calibration_split_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/calibration_split_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from probes import Rows, load_run, main

from melu.evaluation import catalogue as C
from melu.evaluation import metrics as M
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

SIZES: tuple[int, ...] = (1, 2, 3)
POOLED: tuple[int, ...] = (1, 3)
log = logging.getLogger("calibration_split_probe")


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, _ = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    learner.net.uncalibrate()
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    scale = checkpoint.data.scale
    seed = checkpoint.train.seed
    found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for size in SIZES:
        cases = C.build_cases(data, "validation", size, seed)
        lists = C.model_scores(scorer, data.user_table, cases.user_rows, cases.supports)
        rows = cases.heldout_rows
        keep = (rows > 0) & cases.candidates[rows]
        predicted = np.clip(np.take_along_axis(lists.ratings, rows, 1), scale.low, scale.high)
        found[size] = (np.asarray(cases.user_ids), predicted, cases.heldout_ratings, keep)
    users = np.unique(np.concatenate([found[s][0] for s in SIZES]))
    half = np.random.default_rng(seed).permutation(len(users)) < len(users) // 2

    def part(size: int, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids, predicted, actual, keep = found[size]
        mask = keep & chosen[np.searchsorted(users, ids)][:, None]
        return predicted[mask], actual[mask]

    def line(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
        slope, offset = np.polyfit(np.concatenate([p for p, _ in pairs]),
                                   np.concatenate([a for _, a in pairs]), 1)  # fmt: skip
        return float(offset), float(slope)

    errors: dict[int, list[tuple[float, float, float]]] = {size: [] for size in SIZES}
    for fitted in (half, ~half):
        pooled = line([part(size, fitted) for size in POOLED])
        for size in SIZES:
            own = line([part(size, fitted)])
            predicted, actual = part(size, ~fitted)
            moved = [np.clip(o + s * predicted, scale.low, scale.high) for o, s in (pooled, own)]
            errors[size].append(
                (
                    M.calibration_error(predicted, actual),
                    M.calibration_error(moved[0], actual),
                    M.calibration_error(moved[1], actual),
                )
            )
    out: Rows = []
    for size in SIZES:
        raw, pooled_error, own_error = np.mean(errors[size], axis=0)
        out.append(
            {
                "checkpoint": str(path),
                "dataset": checkpoint.data.dataset,
                "seed": seed,
                "S": size,
                "raw": round(float(raw), 4),
                "pooled_1_3_line": round(float(pooled_error), 4),
                "own_line": round(float(own_error), 4),
            }
        )
        log.info("%s", out[-1])
    return out


def table(rows: Rows) -> None:
    print(f"{'dataset':<17} {'seed':>4} {'S':>2} {'raw':>6} {'pooled 1&3':>10} {'own line':>8}")
    for row in rows:
        print(f"{row['dataset']:<17} {row['seed']:>4} {row['S']:>2} {row['raw']:>6.3f} "
              f"{row['pooled_1_3_line']:>10.3f} {row['own_line']:>8.3f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table))

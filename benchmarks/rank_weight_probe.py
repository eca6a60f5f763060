"""The predicted rating's weight in the served ranking, on validation users: Recall@10 and the
coverage of the top 10s (stop 34: without the co-occurrence term the lists cover less of the
catalogue, and the rating term favours acclaimed, popular films).

The ranking score is ``logit + w * predicted rating`` (``ModelConfig.rank_rating_weight``, 0.5
in the default preset, chosen with the co-occurrence term in the model); each ``--weights``
value is served from the same checkpoint (its step schedule, fold-in and recalibration
unchanged), over the :data:`melu.schedule.DRAWS` support draws the schedule is chosen on:

    .venv/bin/python benchmarks/rank_weight_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints /work/runs/q34/default-seed{0,1,2}/checkpoint.pt \\
        --json results/rank_weight_probe.json
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main

from melu.evaluation import metrics as M
from melu.predict import hits_at, score_episodes
from melu.ranking import rank_top
from melu.schedule import BUCKET_SIZES, DRAWS
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

COVERAGE_SIZE = 5  # issue 10's coverage is measured on the lists from 5 ratings


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    catalogue, net = data.catalogue, learner.net
    liked, seed, original = net.cfg.liked_rating, checkpoint.train.seed, net.cfg
    candidates = int(catalogue.recommendable.sum())
    rows = []
    for weight in args.weights:
        net.cfg = dataclasses.replace(original, rank_rating_weight=weight)
        scorer = CatalogueScorer(learner, catalogue.table, catalogue.recommendable)
        row: dict[str, Any] = {"checkpoint": str(path), "seed": seed, "weight": weight}
        for size in BUCKET_SIZES:
            recalls, coverages = [], []
            for draw in range(DRAWS):
                tops, hits = [], []
                for found in score_episodes(
                    scorer, validation, data.user_table, liked, size, seed * 1000 + draw
                ):
                    scores = found.scores
                    hits.append(hits_at(scores.rank, found.allowed, found.relevant,
                                        scores.above_floor))  # fmt: skip
                    tops.append(rank_top(scores.rank, found.allowed, 10, scores.above_floor))
                recalls.append(float(torch.cat(hits).mean()))
                coverages.append(M.coverage(torch.cat(tops).numpy(), candidates))
            row[f"recall@10_S{size}"] = round(float(np.mean(recalls)), 5)
            row[f"coverage_S{size}"] = round(float(np.mean(coverages)), 4)
        rows.append(row)
    net.cfg = original
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])


def table(rows: Rows) -> None:
    names = [f"recall@10_S{s}" for s in BUCKET_SIZES] + [f"coverage_S{COVERAGE_SIZE}"]
    print(f"{'seed':>4} {'w':>5} " + " ".join(f"{n:>16}" for n in names))
    for r in rows:
        print(f"{r['seed']:>4} {r['weight']:>5g} " + " ".join(f"{r[n]:>16.4f}" for n in names))


if __name__ == "__main__":
    raise SystemExit(main(__doc__ or "", probe, table, options))

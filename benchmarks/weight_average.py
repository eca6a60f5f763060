"""Validation-only check behind ``TrainConfig.average_decay``: does judging and keeping a moving
average of the taste model's weights over epochs give better lists than keeping the best
epoch's own weights?

For each seed, the default preset is trained twice on MeLU's data, identically but for
``average_decay`` (0: each epoch's own weights; the decays given): both runs follow the same
training trajectory (the average is only judged and kept, training goes on from the epoch's
own weights), so they differ only in which weights early stopping judges and keeps. Each kept
checkpoint is then judged on validation users with support draws other than those that chose
it (``seed * 1000 + 100 + d``, d < 2; selection draws ``seed``): liked Recall@10 from 3 / 5 /
10 / 20 ratings, (a) as training judges its lists (one step at every size, no fold-in) and (b)
as the checkpoint serves them (its step schedule and fold-in, each chosen on validation users
after training). No new user is read. One torch thread:

    .venv/bin/python benchmarks/weight_average.py --data-dir ../shared/data/movielens \
        --out /tmp/weight-average --json results/weight_average.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.checkpoint import atomic_write_text
from melu.config import PRESETS, DataConfig, TrainConfig
from melu.data import ColdStartData, prepare
from melu.predict import catalogue_recall
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner
from melu.train import train

log = logging.getLogger("weight_average")
SIZES: tuple[int, ...] = (3, 5, 10, 20)
DRAWS = 2


def judge(path: Path, data: ColdStartData, served: bool) -> list[float]:
    """Validation Recall@10 per S of the checkpoint's lists (``served``: as it serves them;
    else as training judges them), on the judging draws."""
    ck = ckpt.load(path)
    learner = ck.learner("cpu")
    assert isinstance(learner, TasteLearner)
    if not served:
        learner.net.step_schedule.fill_(1.0)
        if learner.net.fold_in is not None:
            learner.net.fold_in.weight.zero_()
    scorer = CatalogueScorer(learner.eval(), data.catalogue.table, data.catalogue.recommendable)
    tasks = data.tasks["validation"]
    seed, liked = ck.train.seed, learner.net.cfg.liked_rating
    return [
        float(
            np.mean(
                [
                    catalogue_recall(scorer, tasks, data.user_table, liked, size, seed=s)
                    for s in (seed * 1000 + 100 + d for d in range(DRAWS))
                ]
            )
        )
        for size in SIZES
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decays", type=float, nargs="+", default=[0.5])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    if not all(0 < d < 1 for d in args.decays):
        print("weight_average: --decays must lie in (0, 1)", file=sys.stderr)
        return 2
    preset = PRESETS["default"]
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        data = prepare(args.data_dir, DataConfig.for_dataset("melu", seed=seed))
        for decay in (0.0, *args.decays):
            run = args.out / f"seed{seed}-decay{decay:g}"
            cfg = dataclasses.replace(TrainConfig(seed=seed, device="cpu"), average_decay=decay)
            result = train(data, run, preset.model, preset.meta, cfg, progress=False)
            path = run / "checkpoint.pt"
            rows.append(
                {
                    "seed": seed,
                    "decay": decay,
                    "kept_epoch": result.metrics["best_recall_epoch"],
                    "epochs_run": len(result.metrics["history"]),
                    "selection_recall": result.metrics["best_val_recall"],
                    "training_lists": judge(path, data, served=False),
                    "served_lists": judge(path, data, served=True),
                }
            )
            log.info("%s", rows[-1])
    lines = [f"{'seed':>4} {'decay':>5} {'epoch':>5}  training's lists (S=3/5/10/20, mean)  "
             "served lists (S=3/5/10/20, mean)"]  # fmt: skip
    for r in rows:
        cells = [
            " ".join(f"{v:.4f}" for v in r[k]) + f"  {np.mean(r[k]):.4f}"
            for k in ("training_lists", "served_lists")
        ]
        lines.append(
            f"{r['seed']:>4} {r['decay']:>5g} {r['kept_epoch']:>5}  {cells[0]}  {cells[1]}"
        )
    for decay in args.decays:
        for key in ("training_lists", "served_lists"):
            gains = [
                np.mean(r[key]) - np.mean(base[key])
                for r in rows
                if r["decay"] == decay
                for base in rows
                if base["seed"] == r["seed"] and base["decay"] == 0.0
            ]
            lines.append(
                f"decay {decay:g} minus 0, {key.replace('_', ' ')}: "
                + " / ".join(f"{g:+.4f}" for g in gains)
                + f" (seeds {' / '.join(str(s) for s in args.seeds)})"
            )
    log.info("validation users, judging draws (liked Recall@10):\n%s", "\n".join(lines))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

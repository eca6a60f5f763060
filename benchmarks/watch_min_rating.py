"""Which support ratings should shape the watch model's user vector? Validation users only.

    .venv/bin/python benchmarks/watch_min_rating.py --data-dir ../shared/data/movielens \\
        --runs-dir RUNS [--seeds 0 1 2] [--json results/watch_min_rating_cpu.json]

For each seed it trains the default preset twice (``watch_min_rating`` 0: every rating is
pooled; 3: ratings of 1 and 2 only adapt the rating head), or reuses finished runs in
``RUNS/min{M}-seed{S}``. Each run is then measured on the seed's validation users as
``/recommend`` ranks: liked Recall@10 of the catalogue from 3, 5, 10, 20 ratings; the share of
(5-star, 1-star) support pairs whose ranking scores put the 5 above the 1, from 5 and 10
ratings; and the loved-genre share. The runs trained with every rating are also measured with
low ratings left out at scoring time only (``scoring >= 3``, ``scoring >= 4``).
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
from melu.config import PRESETS, DataConfig, MetaConfig, TrainConfig
from melu.data import ColdStartData, prepare
from melu.evaluation import catalogue as C
from melu.evaluation.rankers import Supports
from melu.evaluation.run import genre_test_rows, no_demographics
from melu.maml import MetaLearner
from melu.train import CHECKPOINT_NAME, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import finished
from support_order import five_above_one

log = logging.getLogger("watch_min_rating")

SIZES = (3, 5, 10, 20)
ORDER_SIZES = (5, 10)
TRAINED = (0.0, 3.0)
SCORING = (3.0, 4.0)  # cuts applied at scoring time to the runs trained with every rating


def run(data_dir: Path, runs: Path, seed: int, minimum: float) -> Path:
    path = runs / f"min{minimum:g}-seed{seed}" / CHECKPOINT_NAME
    if finished(path, TrainConfig().epochs):
        log.info("reusing %s", path)
        return path
    data = prepare(data_dir, DataConfig(seed=seed))
    model = dataclasses.replace(PRESETS["default"], watch_min_rating=minimum)
    train(data, path.parent, model, MetaConfig(), TrainConfig(seed=seed), progress=False)
    return path


def measure(learner: MetaLearner, data: ColdStartData, seed: int) -> dict[str, Any]:
    counts = C.training_counts(data)
    users, items = data.user_table, data.catalogue.table
    row: dict[str, Any] = {}
    for size in SIZES:
        cases = C.build_cases(data, "validation", size, seed)
        scores = C.model_scores(learner, users, items, cases.user_rows, cases.supports)
        result = C.judge(cases, scores, counts)
        row[f"recall@10 S={size}"] = float(result.per_user["liked"]["recall@10"].mean())
        if size in ORDER_SIZES:
            good, pairs = five_above_one(cases, scores)
            row[f"5 above 1 S={size}"] = good / max(pairs, 1)

    def scorer(s: Supports) -> np.ndarray:
        return C.model_scores(learner, users, items, no_demographics(s), s)

    genre = genre_test_rows(data, counts, {"melu": scorer})
    row["loved genre"] = float(np.mean([g.share for g in genre]))
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/movielens"))
    p.add_argument("--runs-dir", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for minimum in TRAINED:
            ck = ckpt.load(run(args.data_dir, args.runs_dir, seed, minimum))
            data = prepare(args.data_dir, ck.data, ck.encoder)
            learner = ck.learner("cpu")
            cuts = [("trained", minimum)]
            if minimum == 0:
                cuts += [("scoring", cut) for cut in SCORING]
            for how, cut in cuts:
                assert learner.watch is not None
                learner.watch.min_rating = cut
                variant = f"{how} >= {cut:g}" if cut else "every rating"
                rows.append({"seed": seed, "variant": variant, **measure(learner, data, seed)})
                log.info("%s", rows[-1])
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    metrics = [k for k in rows[0] if k not in ("seed", "variant")]
    means = {
        v: {m: float(np.mean([r[m] for r in rows if r["variant"] == v])) for m in metrics}
        for v in variants
    }
    sys.stdout.write("| variant | " + " | ".join(metrics) + " |\n")
    sys.stdout.write("|---" * (len(metrics) + 1) + "|\n")
    for v in variants:
        cells = " | ".join(f"{means[v][m]:.3f}" for m in metrics)
        sys.stdout.write(f"| {v} | {cells} |\n")
    if args.json is not None:
        out = {"seeds": args.seeds, "runs_dir": str(args.runs_dir), "rows": rows, "means": means}
        ckpt.atomic_write_text(args.json, json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The fold-in's choice at the end of training (``melu.schedule.choose_fold_in``) ranks every
validation list at each weight of ``FOLD_IN_WEIGHTS`` for each EDLAE setting. Two ways of
counting those lists' hits, side by side in one run on the same lists: one full ranking per
weight (``melu.ranking.hits_in_top``, what the choice did before) and every weight at once
(``melu.ranking.hits_in_top_blends``, what it does now). Their counts must be equal, list by
list, or the script fails.

Reads a trained taste-model run (its step schedule and fold-in as trained), builds its
validation lists at every bucket's support size over the choice's support draws, and times the
two counts on one torch thread, alternated ``--repeats`` times so that the machine's drift
falls on both alike.

    python benchmarks/fold_in_choice.py --checkpoint RUN/checkpoint.pt \\
        --data-dir ../shared/data/movielens --json results/fold_in_choice_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from quality import git_revision, machine

from melu import checkpoint as ckpt
from melu.checkpoint import atomic_write_text
from melu.data import prepare
from melu.fold_in import FoldIn, standardised
from melu.ranking import hits_in_top, hits_in_top_blends
from melu.schedule import BUCKET_SIZES, FOLD_IN_WEIGHTS, validation_lists
from melu.scoring import CatalogueScorer

log = logging.getLogger("fold_in_choice")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    checkpoint = ckpt.load(args.checkpoint)
    data = prepare(args.data_dir, checkpoint.data, checkpoint.encoder)
    learner = checkpoint.learner("cpu").eval()
    validation = data.tasks["validation"].to("cpu", next(learner.parameters()).dtype)
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    liked = learner.net.cfg.liked_rating
    fold_in = learner.net.fold_in
    if not isinstance(fold_in, FoldIn) or not fold_in.fitted:
        raise SystemExit(f"{args.checkpoint}: a taste-model run with a fitted fold-in is needed")
    cases = []
    with torch.no_grad():
        for size in BUCKET_SIZES:
            for found in validation_lists(
                scorer, validation, data.user_table, liked, size, args.seed
            ):
                second = standardised(scorer.fold_in_scores(found.support), found.allowed)
                cases.append((found, second))

    def per_weight(found: Any, second: torch.Tensor) -> torch.Tensor:
        first = found.z_rank
        return torch.stack(
            [
                hits_in_top(first + w * second if w else first, found.allowed, found.relevant,
                            10, found.above_floor)
                for w in FOLD_IN_WEIGHTS
            ]
        )  # fmt: skip

    def at_once(found: Any, second: torch.Tensor) -> torch.Tensor:
        return hits_in_top_blends(found.z_rank, second, FOLD_IN_WEIGHTS, found.allowed,
                                  found.relevant, 10, found.above_floor)  # fmt: skip

    ways = {"one ranking per weight": per_weight, "every weight at once": at_once}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats):
        names = list(ways) if repeat % 2 == 0 else list(ways)[::-1]
        counts = {}
        for name in names:
            started = time.perf_counter()
            counts[name] = [ways[name](found, second) for found, second in cases]
            seconds[name].append(time.perf_counter() - started)
        for a, b in zip(*counts.values(), strict=True):
            if not torch.equal(a, b):
                raise SystemExit("the two ways count different hits")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    base = medians["one ranking per weight"]
    print(
        f"{len(cases)} batches of validation lists x {len(FOLD_IN_WEIGHTS)} weights; counts equal"
    )
    print(f"{'way':<26} {'median s':>9} {'ratio':>6}")
    for name, value in medians.items():
        print(f"{name:<26} {value:>9.3f} {value / base:>6.3f}")
    result = {
        "checkpoint": str(args.checkpoint),
        "batches": len(cases),
        "users": int(sum(int(found.relevant.any(1).sum()) for found, _ in cases)),
        "weights": list(FOLD_IN_WEIGHTS),
        "seconds": seconds,
        "median_seconds": medians,
        "ratio_to_one_ranking_per_weight": {n: v / base for n, v in medians.items()},
        "counts_equal": True,
        "machine": machine(),
        "revision": git_revision(),
    }
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

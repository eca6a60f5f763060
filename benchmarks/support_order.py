"""Are the ratings given reflected? For validation users' supports, the share of (5-star,
1-star) pairs of support items whose ranking scores after adaptation put the 5 above the 1.

    .venv/bin/python benchmarks/support_order.py --checkpoint CKPT [--sizes 5 10] [--json OUT]

Scores are the served ranking scores (:func:`melu.ranking.catalogue_scores`, what
``/recommend`` ranks by), read at the support items themselves.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.data import prepare
from melu.evaluation import catalogue as C

log = logging.getLogger("support_order")


def five_above_one(cases: C.Cases, scores: np.ndarray) -> tuple[int, int]:
    """(pairs ordered right, all pairs) over every user's (5-star, 1-star) support items,
    given each user's scores over every row."""
    at_support = np.take_along_axis(scores, cases.supports.rows, axis=1)
    ratings = cases.supports.ratings
    good = pairs = 0
    for i in range(len(cases)):
        diff = at_support[i][ratings[i] == 5][:, None] - at_support[i][ratings[i] == 1][None, :]
        good += int((diff > 0).sum())
        pairs += diff.size
    return good, pairs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/movielens"))
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    ck = ckpt.load(args.checkpoint)
    data = prepare(args.data_dir, ck.data, ck.encoder)
    learner = ck.learner("cpu")
    rows = []
    for size in args.sizes:
        cases = C.build_cases(data, "validation", size, args.seed)
        scores = C.model_scores(
            learner, data.user_table, data.catalogue.table, cases.user_rows, cases.supports
        )
        good, pairs = five_above_one(cases, scores)
        share = good / max(1, pairs)
        rows.append({"size": size, "pairs": pairs, "five_above_one": share})
        sys.stdout.write(f"S={size:>3}: {pairs:>5} (5, 1) pairs, 5 above 1 in {share:.3f}\n")
    if args.json is not None:
        ckpt.atomic_write_text(
            args.json, json.dumps({"checkpoint": str(args.checkpoint), "rows": rows}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

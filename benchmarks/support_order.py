"""Are the ratings given reflected? For validation and new users' supports, the share of
(5-star, 1-star) pairs of support items whose predicted ratings after adaptation put the 5
above the 1 (issue 17's goal: 95%).

    .venv/bin/python benchmarks/support_order.py --checkpoint CKPT [--sizes 5 10 20] [--json OUT]

The predicted ratings are those of :class:`melu.scoring.CatalogueScorer` (what ``/recommend``
shows beside each film), read at the support items themselves after adapting on them, as
``melu evaluate`` reports them (:func:`melu.evaluation.catalogue.support_pairs`: the scale's
top value against one star or less, so half-star data counts 0.5 and 1.0 as the bottom).
Both the adapted model and the same checkpoint with zero local steps are measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from melu import checkpoint as ckpt
from melu.data import prepare
from melu.evaluation import catalogue as C
from melu.scoring import CatalogueScorer

log = logging.getLogger("support_order")

SCENARIOS = ("validation", "new_user")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/movielens"))
    p.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    ck = ckpt.load(args.checkpoint)
    data = prepare(args.data_dir, ck.data, ck.encoder)
    scorer = CatalogueScorer(ck.learner("cpu"), data.catalogue.table, data.catalogue.recommendable)
    rows = []
    for scenario in SCENARIOS:
        for size in args.sizes:
            cases = C.build_cases(data, scenario, size, args.seed)
            for label, steps in (("adapted", None), ("zero local steps", 0)):
                lists = C.model_scores(
                    scorer, data.user_table, cases.user_rows, cases.supports, steps
                )
                good, pairs = C.support_pairs(cases, lists.ratings, data.scale)
                share = good / pairs if pairs else None
                rows.append(
                    {
                        "scenario": scenario,
                        "size": size,
                        "model": label,
                        "pairs": pairs,
                        "five_above_one": share,
                    }
                )
                text = "-" if share is None else f"{share:.3f}"
                sys.stdout.write(
                    f"{scenario:<11} S={size:>3} {label:<17}: {pairs:>5} (5, 1) pairs, "
                    f"5 above 1 in {text}\n"
                )
    if args.json is not None:
        out = {"checkpoint": str(args.checkpoint), "seed": args.seed, "rows": rows}
        ckpt.atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

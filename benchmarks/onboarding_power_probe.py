"""Validation users only: can an onboarding list between popularity and MeLU's evidence beat
popularity's Recall@10 while showing no more items (issue 13's goal in docs/results.md)?

For each run: the onboarding strategies' per-item scores (``melu.onboarding.item_scores``),
then lists ordered by ``popularity^g x discriminative value`` and ``popularity^g x rating
entropy`` for several ``g`` (g = 1 with the discriminative value is MeLU's evidence; a larger
``g`` leans towards popularity), each walked by the validation users as ``melu evaluate`` does
(``melu.evaluation.onboarding.simulate``: rate what is in one's history, skip the rest, until 5
ratings), the model adapting on those 5 ratings. Prints the items shown and the Recall@10 with
their 95% intervals.

    python benchmarks/onboarding_power_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUN/checkpoint.pt --json results/onboarding_power_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from probes import Rows, load_run, main

from melu import onboarding as O
from melu.evaluation.onboarding import model_scorer, simulate

POWERS: tuple[int, ...] = (1, 2, 3, 4, 6, 8)
log = logging.getLogger("onboarding_power_probe")


def probe(path: Path, args: argparse.Namespace) -> Rows:
    bootstrap = args.bootstrap
    checkpoint, learner, data, _ = load_run(path, args.data_dir, taste=False)
    with torch.no_grad():
        scores = O.item_scores(learner, data)
    popularity = scores.popularity / max(scores.popularity.max(), 1e-12)
    discriminative = scores.discriminative / max(scores.discriminative.max(), 1e-12)
    lists = {"popularity": O.ordered(scores.popularity)}
    for power in POWERS:
        lists[f"popularity^{power} x discriminative"] = O.ordered(
            popularity**power * discriminative
        )
        lists[f"popularity^{power} x entropy"] = O.ordered(popularity**power * scores.entropy)
    seed = checkpoint.train.seed
    with torch.no_grad():
        rows = simulate(data, lists, model_scorer(learner, data), ("validation",), seed=seed,
                        bootstrap=bootstrap)  # fmt: skip
    out = []
    for name in lists:
        found = {r.metric: r for r in rows if r.strategy == name}
        out.append(
            {
                "checkpoint": str(path),
                "seed": seed,
                "list": name,
                **{
                    f"{metric}{part}": round(float(getattr(found[metric], attr)), 4)
                    for metric in ("items_shown", "recall@10")
                    for part, attr in (("", "value"), ("_low", "ci_low"), ("_high", "ci_high"))
                },
            }
        )
        log.info("%s", out[-1])
    return out


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", type=int, default=200)


def table(rows: Rows) -> None:
    print(f"{'seed':>4} {'list':<36} {'items shown':>20} {'Recall@10':>22}")
    for r in rows:
        shown = f"{r['items_shown']:.1f} [{r['items_shown_low']:.1f}, {r['items_shown_high']:.1f}]"
        recall = f"{r['recall@10']:.3f} [{r['recall@10_low']:.3f}, {r['recall@10_high']:.3f}]"
        print(f"{r['seed']:>4} {r['list']:<36} {shown:>20} {recall:>22}")


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

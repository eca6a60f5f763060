"""Onboarding, simulated: each strategy's effort and the list after 5 onboarding ratings.

Runs what ``melu evaluate`` runs for onboarding (``choose_lists`` on validation users, then
the simulation on validation and new users) for one or more checkpoints, and prints the mean
over them::

    .venv/bin/python benchmarks/onboarding.py --checkpoints RUN0/checkpoint.pt RUN1/... \
        --seeds 0 1 --json results/onboarding_cpu.json

``--seeds`` gives each checkpoint's seed (the seed of ``melu train`` and of its evaluation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import pandas as pd
import torch

from melu import checkpoint as ckpt
from melu.data import prepare
from melu.evaluation.onboarding import choose_lists, model_scorer, simulate

log = logging.getLogger("onboarding")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/movielens"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if len(args.seeds) != len(args.checkpoints):
        p.error("give one seed per checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    frames, chosen = [], {}
    for path, seed in zip(args.checkpoints, args.seeds, strict=True):
        ck = ckpt.load(path)
        data = prepare(args.data_dir, ck.data, ck.encoder)
        learner = ck.learner("cpu")
        with torch.no_grad():
            lists, info = choose_lists(learner, data, seed)
        rows = simulate(
            data, lists.rows, model_scorer(learner, data), seed=seed, bootstrap=args.bootstrap
        )
        frames.append(pd.DataFrame([dataclasses.asdict(r) for r in rows]).assign(seed=seed))
        chosen[str(seed)] = info["diverse chosen"]
    frame = pd.concat(frames, ignore_index=True)
    table = (
        frame.groupby(["scenario", "strategy", "metric"], sort=False)["value"]
        .agg(["mean", "std"])
        .unstack("metric")
    )
    shown = ["items_shown", "reached_5", "recall@10", "ndcg@10"]
    lines = [f"{'scenario':<11} {'strategy':<15}" + "".join(f"{m:>18}" for m in shown)]
    for key, row in table.iterrows():
        scenario, strategy = key  # type: ignore[misc]  # a two-level index
        cells = "".join(f"{row[('mean', m)]:>11.3f} ±{row[('std', m)]:>5.3f}" for m in shown)
        lines.append(f"{scenario:<11} {strategy:<15}{cells}")
    sys.stdout.write("\n".join(lines) + f"\ndiverse chosen per seed: {chosen}\n")
    if args.json is not None:
        out = {
            "command": " ".join(["benchmarks/onboarding.py", *(argv or sys.argv[1:])]),
            "diverse_chosen": chosen,
            "rows": frame.to_dict(orient="records"),
        }
        ckpt.atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

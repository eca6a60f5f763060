"""Anchors: every catalogue and shelf baseline of ``melu evaluate``, tuned on validation users,
with what each costs. No checkpoint is needed: the baselines need only the data.

For one seed, on MeLU's data prepared as ``melu train --seed`` prepares it, each baseline is
fitted on the training ratings (:func:`melu.evaluation.run.training_data`), its setting chosen
per S = 3, 5, 10, 20 on validation users (:func:`melu.evaluation.run.tune_rankers`) and applied
to new users (catalogue) or to the new-item shelves. Shelf baselines are content-only and
tuned on the validation users' catalogue lists, as ``melu evaluate`` tunes them. Times are wall
seconds of fit, tuning (every setting of the grid, every S) and scoring (every S of the
evaluated scenarios), one torch and BLAS thread::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anchors.py \\
        --data-dir ../shared/data/movielens --seed 0 --json results/anchors_cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from melu import checkpoint as ckpt
from melu.config import DataConfig
from melu.data import prepare
from melu.evaluation import catalogue as C
from melu.evaluation.anchors import catalogue_baselines, shelf_baselines
from melu.evaluation.rankers import Ranker
from melu.evaluation.run import scenario_cases, training_data, tune_rankers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import git_revision, machine

log = logging.getLogger("anchors")


def measure(
    ranker: Ranker,
    fit_seconds: float,
    validation: dict[int, C.Cases],
    evaluated: dict[str, dict[int, C.Cases]],
    counts: np.ndarray,
) -> dict[str, Any]:
    """Tune ``ranker`` per S on ``validation``, score every ``evaluated`` scenario; liked
    Recall@10 of both, and the seconds each step took."""
    started = time.perf_counter()
    chosen, tuning = tune_rankers([ranker], validation)
    tune_seconds = time.perf_counter() - started
    started = time.perf_counter()
    sizes: dict[str, Any] = {}
    for size in validation:
        setting = chosen[ranker.name][size]
        row: dict[str, Any] = {"setting": setting}
        for scenario, by_size in (("validation", validation), *evaluated.items()):
            scores = ranker.score(by_size[size].supports, setting)
            row[scenario] = C.liked_recall(by_size[size], scores)
            row[f"{scenario}_users"] = len(by_size[size])
        sizes[str(size)] = row
    score_seconds = time.perf_counter() - started
    return {
        "fit_s": round(fit_seconds, 2),
        "tune_s": round(tune_seconds, 2),
        "score_s": round(score_seconds, 2),
        "total_s": round(fit_seconds + tune_seconds + score_seconds, 2),
        "grid": len(ranker.grid()),
        "sizes": sizes,
        "tuning": tuning.get(ranker.name, {}),
    }


def table(results: dict[str, dict[str, Any]], protocol: str, scenarios: list[str]) -> str:
    """Liked Recall@10 per S, validation then each evaluated scenario, setting and seconds."""
    lines = []
    sizes = list(next(iter(results.values()))["sizes"])
    head = f"{'anchor':<26}{'grid':>5}{'fit s':>7}{'tune s':>7}{'score s':>8}  "
    for scenario in ("validation", *scenarios):
        head += f"{scenario:<30}"
    lines.append(head)
    lines.append(f"{'':<53}  " + f"{'S=' + '/'.join(sizes):<30}" * (1 + len(scenarios)))
    for name, r in results.items():
        if r["protocol"] != protocol:
            continue
        cells = (
            f"{name:<26}{r['grid']:>5}{r['fit_s']:>7.1f}{r['tune_s']:>7.1f}{r['score_s']:>8.1f}  "
        )
        for scenario in ("validation", *scenarios):
            values = "/".join(f"{r['sizes'][s][scenario]:.3f}" for s in sizes)
            cells += f"{values:<30}"
        lines.append(cells)
    lines.append("settings chosen on validation users (S: setting):")
    for name, r in results.items():
        if r["protocol"] == protocol and r["grid"] > 1:
            chosen = "; ".join(f"{s}: {json.dumps(r['sizes'][s]['setting'])}" for s in sizes)
            lines.append(f"  {name}: {chosen}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/data/movielens"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    started = time.perf_counter()
    data = prepare(args.data_dir, DataConfig(dataset="melu", seed=args.seed))
    counts = C.training_counts(data)
    sizes = C.SUPPORT_SIZES

    def cases(scenario: str, protocol: str) -> dict[int, C.Cases]:
        return {s: scenario_cases(data, scenario, s, args.seed, protocol) for s in sizes}

    validation = cases("validation", "catalogue")
    plan = {
        "catalogue": {"new_user": cases("new_user", "catalogue")},
        "shelf": {s: cases(s, "shelf") for s in C.SHELF_SCENARIOS},
    }
    results: dict[str, dict[str, Any]] = {}
    with threadpool_limits(1):
        training = training_data(data)
        for protocol, build in (("catalogue", catalogue_baselines), ("shelf", shelf_baselines)):
            fit: dict[str, float] = {}
            rankers = build(training, args.seed, fit)
            for ranker in rankers:
                key = ranker.name if protocol == "catalogue" else f"{ranker.name} (shelf)"
                log.info("%s: tuning and scoring", key)
                measured = measure(
                    ranker, fit.get(ranker.name, 0.0), validation, plan[protocol], counts
                )
                results[key] = {"protocol": protocol, **measured}
                log.info("%s: %.1f s", key, results[key]["total_s"])
    total = time.perf_counter() - started
    out_lines = [
        "catalogue: liked Recall@10, validation users (tuned there) and new users",
        table(results, "catalogue", ["new_user"]),
        "",
        "shelf (new items): validation = the validation users' catalogue lists, content only",
        table(results, "shelf", list(C.SHELF_SCENARIOS)),
        "",
        f"fit + tune + score, every baseline: {sum(r['total_s'] for r in results.values()):.1f} s"
        f" (whole script {total:.1f} s; load average {os.getloadavg()[0]:.1f})",
    ]
    sys.stdout.write("\n".join(out_lines) + "\n")
    if args.json is not None:
        out = {
            "command": " ".join(
                ["benchmarks/anchors.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "seed": args.seed,
            "sizes": list(sizes),
            "metric": "liked Recall@10 (held-out ratings >= 4), mean over users",
            "threads": {"torch": torch.get_num_threads(), "blas": 1},
            "machine": machine(),
            "git": git_revision(),
            "load_average_end": os.getloadavg(),
            "seconds_total": round(total, 1),
            "anchors": results,
        }
        ckpt.atomic_write_text(args.json, json.dumps(out, indent=1, allow_nan=False) + "\n")
        log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

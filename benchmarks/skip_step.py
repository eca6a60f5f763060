"""The model's work per ``/recommend`` at a large catalogue: with the local step taken and with
the step skipped where the schedule scales it by 0 (``CatalogueScorer``'s shortcut), each with
the item side's matrices stored column by column (``melu.scoring.column_major``, what the
scorer does) and row by row (what it did before), side by side in one run.

Reads a release written by ``generate_release.py`` (ml-25m's shape), prepares it and fits the
default preset's co-occurrence as ``scale.py`` does (weights as initialised: the cost does not
depend on them), then times, in this process on one torch thread, what a 5-rating request
costs the model: adapt, score the recommendable rows, take the top 10 with the floor. Two
schedules, alternated twice: x1 at every support size (an untrained schedule, which
``scale.py``'s serve stage keeps) and x0 at 4-7 ratings (what validation chose on MeLU's data);
two layouts of the same values. The rows' scores agree to float rounding (checked here).

    python benchmarks/generate_release.py --ratings 25000095 --out /tmp/gen25m --genome
    python benchmarks/skip_step.py --release /tmp/gen25m --json results/skip_step_cpu.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SCHEDULES: dict[str, list[float]] = {
    "step at every size (x1)": [1.0, 1.0, 1.0, 1.0, 1.0],
    "no step below 8 ratings (x0 at 1-3, 4-7)": [0.0, 0.0, 1.0, 1.0, 1.0],
}

LAYOUTS = ("columns", "rows")

log = logging.getLogger("skip_step")


def _scale_module() -> Any:
    spec = importlib.util.spec_from_file_location("scale", REPO / "benchmarks" / "scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale"] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--support", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from melu import checkpoint as ckpt
    from melu.ranking import top_k_row
    from melu.scoring import CatalogueScorer

    scale = _scale_module()
    data, seconds = scale.prepared(args.release)
    learner, fit_s = scale._taste_learner(data)
    learner.eval()
    table = data.catalogue.table
    recommendable = torch.as_tensor(data.catalogue.recommendable)
    with torch.no_grad():
        scorer = CatalogueScorer(learner, table, recommendable)
    compact = {
        "columns": scorer._compact,
        # The layout before column_major: each item's row contiguous.
        "rows": scorer._compact._replace(
            items=scorer._compact.items._replace(
                out=scorer._compact.items.out.contiguous(),
                taste=scorer._compact.items.taste.contiguous(),
            )
        ),
    }
    pool = torch.nonzero(recommendable).squeeze(1)
    users = torch.zeros((1, data.user_table.shape[1]), dtype=torch.long)
    levels = np.asarray(data.scale.values())

    def request(seed: int) -> tuple[float, torch.Tensor]:
        rng = np.random.default_rng(seed)
        rows = torch.as_tensor(rng.choice(pool.numpy(), args.support, replace=False))[None]
        ratings = torch.as_tensor(rng.choice(levels, args.support), dtype=torch.float32)[None]
        mask = torch.ones_like(rows, dtype=torch.bool)
        started = time.perf_counter()
        with torch.no_grad():
            state = scorer.adapt(users, rows, ratings, mask)
            scores = scorer.scores(state, users, every_row=False)
            floor = None if scores.above_floor is None else scores.above_floor[0]
            top_k_row(scores.rank[0], pool, 10, floor)
        return time.perf_counter() - started, scores.rank[0]

    medians: dict[str, list[float]] = {f"{n}, {lay}": [] for n in SCHEDULES for lay in LAYOUTS}
    largest_difference = 0.0
    for round_ in range(2):
        for name, schedule in SCHEDULES.items():
            with torch.no_grad():
                learner.net.step_schedule.copy_(torch.tensor(schedule))
            ranks = {}
            # Alternate which layout goes first, so that warming the caches favours neither.
            for layout in LAYOUTS if round_ % 2 == 0 else LAYOUTS[::-1]:
                scorer._compact = compact[layout]
                for seed in range(5):
                    request(seed)
                times = []
                for seed in range(args.requests):
                    seconds, rank = request(seed)
                    times.append(seconds)
                    ranks[layout, seed] = rank
                medians[f"{name}, {layout}"].append(float(np.median(times)) * 1e3)
            for seed in range(args.requests):
                a, b = ranks["columns", seed], ranks["rows", seed]
                finite = torch.isfinite(a)
                if not torch.equal(finite, torch.isfinite(b)):
                    raise SystemExit("the two layouts score different rows")
                largest_difference = max(
                    largest_difference, float((a[finite] - b[finite]).abs().max())
                )
    result = {
        "release": str(args.release),
        "rows": int(table.shape[0]),
        "recommendable": int(recommendable.sum()),
        "support": args.support,
        "requests_per_median": args.requests,
        "median_ms": medians,
        "rows_over_columns": {
            name: float(np.median(medians[f"{name}, rows"]))
            / float(np.median(medians[f"{name}, columns"]))
            for name in SCHEDULES
        },
        "largest_score_difference": largest_difference,
        "prepare_s": seconds,
        "cooccurrence_fit_s": fit_s,
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"model work per {args.support}-rating request, {result['rows']:,} rows "
        f"({result['recommendable']:,} recommendable), one thread, median of {args.requests}:"
    )
    for name, values in medians.items():
        print(f"  {name:<51} " + " / ".join(f"{v:.1f} ms" for v in values))
    for name, ratio in result["rows_over_columns"].items():
        print(f"  rows / columns, {name}: {ratio:.2f}x")
    print(f"  largest difference of a score between the layouts: {largest_difference:.2e}")
    print(f"  load average {result['load_average'][0]:.1f}")
    if args.json:
        ckpt.atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Validation-only probes of the served list (the taste model with its EDLAE fold-in): would
it list better (a) with a fold-in weight of its own for requests that give no demographics, or
(b) with a third anchor blended in?

(a) For each checkpoint and each support size the fold-in's choice judges (3/5/10/20 ratings,
its ``DRAWS`` support draws, every validation user): Recall@10 of the blended list at each
weight of ``FOLD_IN_WEIGHTS``, with the users' demographics and with none (user-table row 0),
exactly as ``melu.schedule.choose_fold_in`` computes it. Printed: what a request without
demographics loses at the weight the checkpoint chose, and at the weight those lists would
choose for themselves (in sample, as the fold-in's own choice is).

(b) For each checkpoint, S in 3/5/10/20 and two support draws of the catalogue protocol's
validation users: ``z(served) + w z(anchor)`` for GF-CF, RP3beta, EASE and iALS (``z``:
standardised over each user's candidates; the model's floor kept on top, as the evaluation
keeps it; each anchor's setting tuned on that draw's users, as the evaluation tunes it), ``w``
chosen on one half of the users and judged on the other. Printed: the held-out gain over the
served list, and the best in-sample gain.

No new user is read. One torch thread:

    .venv/bin/python benchmarks/served_list_probe.py --data-dir ../shared/data/movielens \
        --checkpoints RUNS/default-seed0/checkpoint.pt RUNS/default-seed1/checkpoint.pt \
        RUNS/default-seed2/checkpoint.pt --json results/served_list_probe.json
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from blend_probe import checkpoint_arguments, masked_z

from melu import checkpoint as ckpt
from melu.checkpoint import atomic_write_text
from melu.data import ColdStartData, prepare
from melu.evaluation import catalogue as C
from melu.evaluation.anchors import Ease, GfCf, Rp3Beta
from melu.evaluation.rankers import Als, Ranker
from melu.evaluation.run import scenario_cases, training_data
from melu.schedule import BUCKET_SIZES, FOLD_IN_WEIGHTS, _blended_recalls, validation_lists
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

log = logging.getLogger("served_list_probe")
ANCHOR_WEIGHTS: tuple[float, ...] = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0)
ANCHOR_DRAWS = 2
# Above any standardised score: the floor's items first, as the evaluation ranks them.
FLOOR = 1e4


def demographics_rows(
    path: Path, data: ColdStartData, learner: TasteLearner, seed: int
) -> list[dict[str, Any]]:
    """(a): per S, the blended lists' Recall@10 at every weight, with and without
    demographics."""
    validation = data.tasks["validation"].to("cpu", next(learner.parameters()).dtype)
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    fold_in = learner.net.fold_in
    assert fold_in is not None and fold_in.fitted, f"{path}: no fitted fold-in"
    tables = {"given": data.user_table, "none": torch.zeros_like(data.user_table)}
    liked = learner.net.cfg.liked_rating
    rows = []
    for size, chosen in zip(BUCKET_SIZES, fold_in.weight.tolist(), strict=False):
        recalls = {}
        for name, table in tables.items():
            lists = validation_lists(scorer, validation, table, liked, size, seed)
            recalls[name] = _blended_recalls(scorer, lists)
        at = min(range(len(FOLD_IN_WEIGHTS)), key=lambda i: abs(FOLD_IN_WEIGHTS[i] - chosen))
        own = max(range(len(FOLD_IN_WEIGHTS)), key=lambda i: (recalls["none"][i], -i))
        rows.append(
            {
                "checkpoint": str(path),
                "seed": seed,
                "S": size,
                "weight": FOLD_IN_WEIGHTS[at],
                "given": recalls["given"][at],
                "none": recalls["none"][at],
                "own_weight": FOLD_IN_WEIGHTS[own],
                "none_at_own": recalls["none"][own],
                "tried": {k: [round(v, 5) for v in vs] for k, vs in recalls.items()},
            }
        )
        log.info("(a) %s S=%d: %s", path, size, {k: rows[-1][k] for k in list(rows[-1])[3:8]})
    return rows


def anchor_rows(
    path: Path, data: ColdStartData, learner: TasteLearner, seed: int
) -> list[dict[str, Any]]:
    """(b): per S and draw, each anchor blended into the served list."""
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    training = training_data(data)
    anchors: dict[str, Ranker] = {
        "gf_cf": GfCf(training),
        "rp3beta": Rp3Beta(training),
        "ease": Ease(training),
        "als": Als(training, seed),
    }
    rows = []
    for size in BUCKET_SIZES:
        for draw in range(ANCHOR_DRAWS):
            cases = scenario_cases(data, "validation", size, seed * 1000 + draw, "catalogue")
            allowed = cases.allowed()
            served = C.model_scores(scorer, data.user_table, cases.user_rows, cases.supports)
            floor = 0.0 if served.above_floor is None else np.where(served.above_floor, FLOOR, 0.0)
            z_served = masked_z(served.scores, allowed)
            first = np.random.default_rng([size, draw]).permutation(len(cases)) < len(cases) // 2

            def recall(scores: np.ndarray, half: np.ndarray, cases: C.Cases = cases) -> float:
                index = np.flatnonzero(half)
                return C.liked_recall(cases.subset(index), scores[index])

            row: dict[str, Any] = {"checkpoint": str(path), "seed": seed, "S": size, "draw": draw}
            row["served"] = C.liked_recall(cases, z_served + floor)
            for name, anchor in anchors.items():
                setting = max(
                    anchor.grid(),
                    key=lambda s: C.liked_recall(cases, anchor.score(cases.supports, s)),
                )
                z_anchor = masked_z(anchor.score(cases.supports, setting), allowed)
                blended = {w: z_served + w * z_anchor + floor for w in ANCHOR_WEIGHTS}
                half = {w: recall(s, first) for w, s in blended.items()}
                w = max(ANCHOR_WEIGHTS, key=lambda w: (half[w], -w))
                every = {v: C.liked_recall(cases, s) for v, s in blended.items()}
                row[name] = {
                    "setting": setting,
                    "w": w,
                    "held_out_gain": recall(blended[w], ~first) - recall(blended[0.0], ~first),
                    "in_sample_gain": max(every.values()) - every[0.0],
                }
            rows.append(row)
            log.info("(b) %s S=%d draw %d: served %.4f", path, size, draw, row["served"])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = checkpoint_arguments("served_list_probe", __doc__ or "", argv)
    if args is None:
        return 2
    demographics: list[dict[str, Any]] = []
    blends: list[dict[str, Any]] = []
    for path in args.checkpoints:
        ck = ckpt.load(path)
        learner = ck.learner("cpu")
        if not isinstance(learner, TasteLearner) or learner.net.fold_in is None:
            print(f"served_list_probe: {path} is not a taste model with a fold-in", file=sys.stderr)
            return 2
        data = prepare(args.data_dir, ck.data, ck.encoder)
        demographics += demographics_rows(path, data, learner, ck.train.seed)
        blends += anchor_rows(path, data, learner, ck.train.seed)
    lines = ["(a) validation Recall@10, blended list: demographics given / none (loss)"]
    lines.append(f"{'seed':>4} {'S':>3} {'w':>8} {'given':>7} {'none':>7} {'loss':>8} "
                 f"{'own w':>8} {'none':>7} {'loss':>8}")  # fmt: skip
    for r in demographics:
        lines.append(
            f"{r['seed']:>4} {r['S']:>3} {r['weight']:>8.5g} {r['given']:>7.4f} {r['none']:>7.4f} "
            f"{r['given'] - r['none']:>+8.4f} {r['own_weight']:>8.5g} {r['none_at_own']:>7.4f} "
            f"{r['given'] - r['none_at_own']:>+8.4f}"
        )
    for size in BUCKET_SIZES:
        sel = [r for r in demographics if r["S"] == size]
        at_chosen = np.mean([r["given"] - r["none"] for r in sel])
        at_own = np.mean([r["given"] - r["none_at_own"] for r in sel])
        lines.append(f"mean {size:>3} loss at the chosen weight {at_chosen:+.4f}, at its own "
                     f"{at_own:+.4f}")  # fmt: skip
    lines.append("(b) a third anchor blended into the served list: held-out gain (in-sample best)")
    names = [k for k in blends[0] if isinstance(blends[0][k], dict)] if blends else []
    lines.append(f"{'seed':>4} {'S':>3} {'draw':>4} {'served':>7} " + " ".join(
        f"{n:>17}" for n in names))  # fmt: skip
    for r in blends:
        cells = " ".join(
            f"{r[n]['held_out_gain']:>+8.4f} ({r[n]['in_sample_gain']:+.4f})" for n in names
        )
        lines.append(f"{r['seed']:>4} {r['S']:>3} {r['draw']:>4} {r['served']:>7.4f} {cells}")
    lines.append(
        "mean held-out gain over every seed, S and draw: "
        + ", ".join(f"{n} {np.mean([r[n]['held_out_gain'] for r in blends]):+.4f}" for n in names)
    )
    log.info("\n%s", "\n".join(lines))
    if args.json is not None:
        payload = {"demographics": demographics, "anchors": blends}
        atomic_write_text(args.json, json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validation users only: should EDLAE's fold-in read the user's fast weights?

The served list blends the taste model's rank with EDLAE's fold-in ``x B`` of the support, ``x``
binary (:mod:`melu.fold_in`). The taste model keeps a fast weight per support item (its part
of the co-occurrence term, ``support_weights``), which the local step adapts. Here ``x`` takes
those weights instead (adapted, or at their meta-learned start with zero steps), so that the
step shapes the fold-in's part of the list too. Each run's served lists (its own schedule and
floor) are scored on ``--draws`` fresh support draws of the validation users (seeds the
schedule never used), each user's Recall@10 averaged over their draws; differences from the
served list with a 95% bootstrap interval over users. ``--alphas`` scales the run's fold-in
weight (the binary fold-in scaled alike is the control).

    python benchmarks/weighted_fold_in_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/weighted_fold_in_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main
from schedule_draws_probe import add_paired, user_recalls

from melu.fold_in import blend
from melu.schedule import BUCKET_SIZES
from melu.scoring import CatalogueScorer
from melu.taste import TasteNet
from melu.taste_learner import TasteLearner, TasteState

log = logging.getLogger("weighted_fold_in_probe")


def weighted_fold_in(net: TasteNet, state: TasteState) -> torch.Tensor:
    """``[B, V]``: ``x B`` with ``x`` the support's fast weights (0 for padding)."""
    fold_in = net.fold_in
    assert fold_in is not None
    support = state.support
    ids = support.side.ids * support.mask
    weights = state.fast.support_weights * support.mask.to(state.fast.support_weights.dtype)
    neighbours = fold_in.index[ids]
    values = fold_in.value[ids] * weights.unsqueeze(-1).to(fold_in.value.dtype)
    batch = ids.shape[0]
    out = values.new_zeros(batch, fold_in.index.shape[0])
    return out.scatter_add(1, neighbours.reshape(batch, -1), values.reshape(batch, -1))


def patch(scorer: CatalogueScorer, alpha: float, weighted: bool) -> None:
    """Make ``scorer`` blend the fold-in (``weighted``: of the fast weights; else binary, as
    served), its weight times ``alpha``."""
    learner, side = scorer.learner, scorer.side
    assert isinstance(learner, TasteLearner) and side is not None
    net = learner.net

    def _fold_in(state: TasteState, rank: torch.Tensor) -> torch.Tensor:
        weight = net.fold_in_weight(state.support.mask) * alpha
        if not bool((weight != 0).any()):
            return rank
        if weighted:
            scores = weighted_fold_in(net, state)[:, side.items.ids]
        else:
            scores = scorer.fold_in_scores(state.support)
        return blend(rank, scores, scorer.allowed(state), weight).scores

    scorer._fold_in = _fold_in  # type: ignore[method-assign]


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    liked = learner.net.cfg.liked_rating
    catalogue = data.catalogue
    seed = checkpoint.train.seed
    schedule = learner.net.step_schedule
    chosen = schedule.clone()
    rng = np.random.default_rng(seed)
    rows = []
    for bucket, size in enumerate(BUCKET_SIZES):
        found: dict[str, np.ndarray] = {}
        for steps in ("adapted", "zero"):
            schedule.copy_(chosen if steps == "adapted" else torch.zeros_like(chosen))
            variants: list[tuple[str, float | None, bool]] = [("binary", None, False)]
            variants += [(f"binary_a{a:g}", a, False) for a in args.alphas if a != 1]
            variants += [(f"weighted_a{a:g}", a, True) for a in args.alphas]
            for name, alpha, weighted in variants:
                scorer = CatalogueScorer(learner, catalogue.table, catalogue.recommendable)
                if alpha is not None:
                    patch(scorer, alpha, weighted)
                found[f"{name}_{steps}"] = user_recalls(
                    scorer, validation, data.user_table, liked, size, seed, args.draws
                )
        schedule.copy_(chosen)
        real = ~np.isnan(found["binary_adapted"])
        row: dict[str, Any] = {
            "checkpoint": str(path), "seed": seed, "S": size, "draws": args.draws,
            "users": int(real.sum()), "schedule_multiple": float(chosen[bucket]),
        }  # fmt: skip
        add_paired(row, found, "binary_adapted", "served", real, rng)
        rows.append(row)
        log.info("%s", row)
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 2.0])


def table(rows: Rows) -> None:
    names = [k[len("recall@10_") :] for k in rows[0] if k.startswith("recall@10_")]
    print(f"{'seed':>4} {'S':>2} " + " ".join(f"{n:>20}" for n in names))
    for r in rows:
        cells = [
            f"{r['recall@10_' + n]:.4f}"
            + (f" {r[n + '_minus_served']:+.4f}" if n != "binary_adapted" else "")
            for n in names
        ]
        print(f"{r['seed']:>4} {r['S']:>2} " + " ".join(f"{c:>20}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

"""Validation-only probe behind melu.fold_in: does blending EDLAE's fold-in into the taste
model's list help, and at what weight?

For each checkpoint (a trained default run: its seed draws the supports) and S in 3/5/10/20:
MeLU's validation users are split in two halves; EDLAE's setting is tuned on all of them (as
the evaluation tunes the anchor), the blend weight ``alpha`` of ``z(model) + alpha z(EDLAE)``
(``z``: standardised over each user's candidates) on the first half, and the model alone,
EDLAE alone and the blend are judged on the second half (liked Recall@10, every candidate
ranked; the model's own fold-in is left out, so "model" is the taste model's list alone).
Beside it, on all the validation users: EDLAE's list from the dense ``B`` against ``B`` cut
to each item's ``k`` weights of largest magnitude (``FoldIn``'s neighbour lists). No new
user is read.

    .venv/bin/python benchmarks/blend_probe.py --data-dir ../shared/data/movielens \
        --checkpoints RUNS/default-seed0/checkpoint.pt RUNS/default-seed1/checkpoint.pt \
        RUNS/default-seed2/checkpoint.pt --json results/blend_probe.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.checkpoint import atomic_write_text
from melu.data import prepare
from melu.evaluation import catalogue as C
from melu.evaluation.anchors import Edlae
from melu.evaluation.run import scenario_cases, training_data
from melu.fold_in import FoldIn, edlae_gram, standardised
from melu.learners import training_pairs
from melu.objectives import ITEM_ID_COLUMN
from melu.scoring import CatalogueScorer

log = logging.getLogger("blend_probe")
ALPHAS: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)
SIZES: tuple[int, ...] = (3, 5, 10, 20)
NEIGHBOURS: tuple[int, ...] = (256, 512)


def masked_z(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Each row standardised over its ``allowed`` entries, the others pushed out of any list."""
    z = standardised(torch.from_numpy(scores), torch.from_numpy(allowed)).numpy()
    return np.where(allowed, z, -1e9)


def checkpoint_arguments(name: str, doc: str, argv: list[str] | None) -> argparse.Namespace | None:
    """A probe's command line (``--data-dir``, ``--checkpoints``, ``--json``), logging and one
    torch thread; None, after a one-line message, where a checkpoint is missing."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        print(f"{name}: no checkpoint at {', '.join(missing)}", file=sys.stderr)
        return None
    return args


def probe(path: Path, data_dir: Path) -> list[dict[str, Any]]:
    ck = ckpt.load(path)
    seed = ck.train.seed
    data = prepare(data_dir, ck.data, ck.encoder)
    learner = ck.learner("cpu")
    scorer = CatalogueScorer(learner, data.catalogue.table, data.catalogue.recommendable)
    edlae = Edlae(training_data(data))
    rows = []
    for size in SIZES:
        cases = scenario_cases(data, "validation", size, seed, "catalogue")
        allowed = cases.allowed()
        model = C.model_scores(
            scorer, data.user_table, cases.user_rows, cases.supports, fold_in=False
        ).scores
        setting = max(
            edlae.grid(), key=lambda s: C.liked_recall(cases, edlae.score(cases.supports, s))
        )
        anchor = edlae.score(cases.supports, setting)
        z_model, z_anchor = masked_z(model, allowed), masked_z(anchor, allowed)
        first = np.random.default_rng(size).permutation(len(cases)) < len(cases) // 2

        def recall(scores: np.ndarray, half: np.ndarray, cases: C.Cases = cases) -> float:
            index = np.flatnonzero(half)
            return C.liked_recall(cases.subset(index), scores[index])

        users, items, n_items = training_pairs(
            data.train_ratings, data.catalogue.rows, data.catalogue.table
        )
        gram = edlae_gram(users, items)
        cut = {}
        for k in NEIGHBOURS:
            fold_in = FoldIn(1, k)
            fold_in.fit(gram, n_items, float(setting["dropout"]), float(setting["l2"]))
            ids = data.catalogue.table[:, ITEM_ID_COLUMN]
            rows_ids = torch.from_numpy(np.asarray(cases.supports.rows))
            support_ids = ids[rows_ids]
            with torch.no_grad():
                folded = fold_in.scores(support_ids, rows_ids > 0)[:, ids].double().numpy()
            cut[str(k)] = C.liked_recall(cases, folded)
        tried = {a: recall(z_model + a * z_anchor, first) for a in ALPHAS}
        alpha = max(ALPHAS, key=lambda a: (tried[a], -a))
        rows.append(
            {
                "checkpoint": str(path),
                "seed": seed,
                "S": size,
                "users": int((~first).sum()),
                "edlae_setting": setting,
                "alpha": alpha,
                "model": recall(model, ~first),
                "edlae": recall(anchor, ~first),
                "blend": recall(z_model + alpha * z_anchor, ~first),
                "tried_first_half": {str(a): v for a, v in tried.items()},
                "edlae_all_users": C.liked_recall(cases, anchor),
                "edlae_cut_all_users": cut,
            }
        )
        log.info("%s S=%d: %s", path, size, rows[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    args = checkpoint_arguments("blend_probe", __doc__ or "", argv)
    if args is None:
        return 2
    rows = [row for path in args.checkpoints for row in probe(path, args.data_dir)]
    header = f"{'seed':>4} {'S':>3} {'alpha':>6} {'model':>7} {'edlae':>7} {'blend':>7}"
    lines = [header] + [
        f"{r['seed']:>4} {r['S']:>3} {r['alpha']:>6g} {r['model']:>7.4f} {r['edlae']:>7.4f} "
        f"{r['blend']:>7.4f}"
        for r in rows
    ]
    lines.append("EDLAE on all validation users: dense B, then cut to k neighbours")
    for r in rows:
        cut = " ".join(f"k={k} {v:.4f}" for k, v in r["edlae_cut_all_users"].items())
        lines.append(f"{r['seed']:>4} {r['S']:>3} dense {r['edlae_all_users']:.4f} {cut}")
    for size in SIZES:
        sel = [r for r in rows if r["S"] == size]
        lines.append(
            f"mean {size:>3} {'':>6} "
            + " ".join(f"{np.mean([r[k] for r in sel]):>7.4f}" for k in ("model", "edlae", "blend"))
        )
    log.info("validation users, second halves (liked Recall@10):\n%s", "\n".join(lines))
    if args.json is not None:
        atomic_write_text(args.json, json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

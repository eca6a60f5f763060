"""The model's work per ``/recommend`` for one new user, split into its stages, with the
"because" film taken from the blended score (the fold-in's part included) and from the
taste model's logit alone, side by side in one run.

Loads a trained checkpoint whose fold-in takes a weight at the request's number of ratings
(any default-preset run of ``benchmarks/quality.py``), draws one support of recommendable
films, and times in this process, on one torch thread, median over ``--repeats``:
``CatalogueScorer.adapt``, ``scores`` (the list's scores, blended) and ``explain`` of the top
10. The two ways of explaining alternate (``--rounds`` each; the table is the median of the
rounds' medians).

    .venv/bin/python benchmarks/explain_cost.py --checkpoint RUN/checkpoint.pt \
        --json /tmp/explain_cost.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from melu import checkpoint as ckpt
from melu.errors import CheckpointError
from melu.ranking import rank_top
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteState

log = logging.getLogger("explain_cost")
STAGES = ("adapt", "scores", "explain")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a taste-model run")
    parser.add_argument("--ratings", type=int, default=5, help="support size (default 5)")
    parser.add_argument("--repeats", type=int, default=300, help="timed requests per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of each, alternated")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    try:
        checkpoint = ckpt.load(args.checkpoint)
    except CheckpointError as error:
        print(f"explain_cost: {error}", file=sys.stderr)
        return 2
    learner = checkpoint.learner("cpu")
    net = getattr(learner, "net", None)
    if net is None or net.fold_in is None or not net.fold_in.fitted:
        print("explain_cost: the checkpoint has no fitted fold-in", file=sys.stderr)
        return 2
    table, recommendable = checkpoint.catalogue.table, checkpoint.catalogue.recommendable
    scorer = CatalogueScorer(learner, table, recommendable)
    rng = np.random.default_rng(0)
    rows = np.flatnonzero(recommendable.numpy())
    support = [int(r) for r in rng.choice(rows[rows > 0], args.ratings, replace=False)]
    ratings = [float(r) for r in rng.integers(3, 6, args.ratings)]
    users = torch.zeros(1, len(checkpoint.encoder.user_fields), dtype=torch.long)
    mask = torch.ones(1, args.ratings, dtype=torch.bool)
    weight = float(net.fold_in_weight(mask)[0])
    if weight == 0:
        print(f"explain_cost: no fold-in at {args.ratings} ratings", file=sys.stderr)
        return 2

    @torch.no_grad()
    def request(blended: bool) -> list[float]:
        t0 = time.perf_counter()
        state = scorer.adapt(users, torch.tensor([support]), torch.tensor([ratings]), mask)
        assert isinstance(state, TasteState)
        t1 = time.perf_counter()
        scores = scorer.scores(state, users, False)
        t2 = time.perf_counter()
        top = rank_top(scores.rank, scorer.allowed(state), 10, scores.above_floor)[0].tolist()
        if not blended:
            scorer._blended = None  # explain then splits the logit alone
        t3 = time.perf_counter()
        scorer.explain(state, 0, top, support, ratings, 4.0)
        return [t1 - t0, t2 - t1, time.perf_counter() - t3]

    rounds: dict[str, list[np.ndarray]] = {"blended score": [], "logit alone": []}
    for _ in range(args.rounds):
        for name in rounds:
            times = np.array([request(name == "blended score") for _ in range(args.repeats)])
            rounds[name].append(np.median(times, 0) * 1000)
    result = {
        "checkpoint": str(args.checkpoint),
        "ratings": args.ratings,
        "fold_in_weight": weight,
        "repeats": args.repeats,
        "rounds": args.rounds,
        "ms": {
            name: dict(zip(STAGES, np.median(r, 0).round(3).tolist(), strict=True))
            for name, r in rounds.items()
        },
    }
    log.info("%-14s %8s %8s %8s", "because from", *STAGES)
    for name, stages in result["ms"].items():
        log.info("%-14s %8.3f %8.3f %8.3f", name, *stages.values())
    if args.json:
        ckpt.atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Validation users and the loved-genre test only: what do the list's trust in popularity and
in co-occurrence cost the lists that follow a user's taste, and what do they buy on real
users?

The taste model's ranking logit is ``user . out_i + popularity * pop_i + cooccurrence * z_i``;
``popularity`` and ``cooccurrence`` are fast weights (the step adapts them). On the loved-genre
test (a synthetic user rates the 5 most-rated films of a genre 5 and 3 of a far genre 1, no
demographics) the default's top 10 holds 0.22 of the loved genre: the lists are led by the
all-time favourites (Star Wars, The Shawshank Redemption, Schindler's List) whatever was
loved. Here the fast weight ``--part`` is multiplied by ``--multiples`` everywhere (the step's
support loss included, as a served setting would be), and for each multiple the served lists
(fold-in, schedule and floor as the run chose them) are scored on the validation users'
Recall@10 (the schedule's 4 support draws at 3, 5, 10 and 20 ratings) and on the loved-genre
test, as ``melu evaluate`` runs it (the lists ``/recommend`` serves).

    python benchmarks/trust_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --part cooccurrence --json results/trust_probe_cooccurrence.json
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, loved_genre_table, main

from melu.data import ColdStartData
from melu.evaluation import catalogue as C
from melu.evaluation.report import MELU
from melu.evaluation.run import loved_genre_test, model_scorer_for
from melu.schedule import BUCKET_SIZES, mean_recall
from melu.scoring import CatalogueScorer
from melu.taste import FastWeights, ItemSide, TasteNet
from melu.taste_learner import TasteLearner

log = logging.getLogger("trust_probe")


def scale_trust(net: TasteNet, part: str, multiple: float) -> Callable[[], None]:
    """Make ``net``'s logits use ``multiple`` times the fast weight ``part`` (``popularity``
    or ``cooccurrence``); returns the undo."""
    original = net.logits

    def logits(fast: FastWeights, z: torch.Tensor | None, items: ItemSide) -> torch.Tensor:
        scaled = fast._replace(**{part: getattr(fast, part) * multiple})
        return original(scaled, z, items)

    net.logits = logits  # type: ignore[method-assign]

    def undo() -> None:
        net.logits = original  # type: ignore[method-assign]

    return undo


def genre_share(scorer: CatalogueScorer, data: ColdStartData) -> float:
    """The loved-genre share of the scorer's lists, as ``melu evaluate`` measures it (its mean
    over the test's genres)."""
    scores = model_scorer_for(scorer, data.user_table)
    rows = loved_genre_test(data, scores, [], {}, C.training_counts(data), BUCKET_SIZES)
    return float(np.mean([r.share for r in rows if r.method == MELU]))


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    catalogue = data.catalogue
    scorer = CatalogueScorer(learner, catalogue.table, catalogue.recommendable)
    liked, seed = learner.net.cfg.liked_rating, checkpoint.train.seed
    rows = []
    for multiple in args.multiples:
        undo = scale_trust(learner.net, args.part, multiple)
        row: dict[str, Any] = {
            "checkpoint": str(path), "seed": seed, "part": args.part, "multiple": multiple,
        }  # fmt: skip
        for size in BUCKET_SIZES:
            recall = mean_recall(scorer, validation, data.user_table, liked, size, seed)
            row[f"recall@10_S{size}"] = round(recall, 4)
        row["loved_genre_share"] = round(genre_share(scorer, data), 3)
        undo()
        rows.append(row)
        log.info("%s", row)
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--part", choices=("popularity", "cooccurrence"), default="popularity")
    parser.add_argument("--multiples", type=float, nargs="+", default=[1.0, 0.5, 0.0, -1.0])


table = loved_genre_table([("part", "part", 12, ""), ("multiple", "x", 5, "g")])


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

"""Validation users and the loved-genre test only: does EDLAE's fold-in, blended into the list,
lead the lists away from a loved genre, and what would taming its outliers cost?

The served list is ``z(rank) + alpha z(x B)`` (:mod:`melu.fold_in`). For a support of five
blockbusters of one genre, EDLAE's ``x B`` puts the all-time favourites many standard
deviations above every other film, so a small ``alpha`` (1/16 to 3/16) still fills the top 10
with them: stop 36's default model's own lists hold 0.45 of the loved genre on the test, the
served ones 0.25 (``melu evaluate``, mean over seeds 0-2). Here the fold-in's scores pass
through a transform before the blend, ``alpha`` is chosen again per support-size bucket on
validation users (the schedule's 4 support draws at 3, 5, 10 and 20 ratings, as training
chooses it), and the served lists are scored on both:

- ``z``: as served (the checkpoint's setting, its weights chosen again: the same lists);
- ``clipC``: the fold-in's standardised scores capped at ``C`` standard deviations;
- ``powG``: ``sign(x B) |x B|^G`` before standardising (``G`` < 1 shrinks the outliers).

``recall@10_S*`` is the chosen ``alpha``'s validation Recall@10 (in-sample for ``alpha``, as
for every transform alike).

    .venv/bin/python benchmarks/fold_in_clip_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/fold_in_clip_probe.json
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from probes import Rows, load_run, loved_genre_table, main

from melu.evaluation import catalogue as C
from melu.evaluation.report import MELU
from melu.evaluation.run import loved_genre_test, model_scorer_for
from melu.fold_in import standardised
from melu.schedule import BUCKET_SIZES, FOLD_IN_WEIGHTS, _blended_recalls, validation_lists
from melu.scoring import CatalogueScorer
from melu.taste import Support
from melu.taste_learner import TasteLearner

log = logging.getLogger("fold_in_clip_probe")


def transform(name: str, raw: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The fold-in's scores ``raw [B, R]`` through the transform ``name`` (see the module
    docstring); ``candidates [R]``: the rows the standardising is taken over."""
    if name == "z":
        return raw
    if name.startswith("clip"):
        return standardised(raw, candidates.expand_as(raw)).clamp(max=float(name[4:]))
    if name.startswith("pow"):
        return raw.sign() * raw.abs() ** float(name[3:])
    raise SystemExit(f"--transforms: unknown transform {name!r} (z, clipC, powG)")


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    net, catalogue = learner.net, data.catalogue
    if net.fold_in is None or not net.fold_in.fitted:
        raise SystemExit(f"{path}: the model has no fitted fold-in")
    seed, liked = checkpoint.train.seed, net.cfg.liked_rating
    weight = net.fold_in.weight
    weight.zero_()
    scorer = CatalogueScorer(learner, catalogue.table, catalogue.recommendable)
    raw: Callable[[Support], torch.Tensor] = scorer.fold_in_scores
    candidates = scorer.recommendable.to(net.mean.device)
    draws = {
        size: validation_lists(scorer, validation, data.user_table, liked, size, seed)
        for size in BUCKET_SIZES
    }
    rows = []
    for name in args.transforms:

        def folded(support: Support, name: str = name) -> torch.Tensor:
            return transform(name, raw(support), candidates)

        scorer.fold_in_scores = folded  # type: ignore[method-assign]
        row: dict[str, object] = {"checkpoint": str(path), "seed": seed, "transform": name}
        chosen = []
        for size in BUCKET_SIZES:
            values = _blended_recalls(scorer, draws[size])
            best = max(range(len(values)), key=lambda i: (values[i], -i))
            chosen.append(FOLD_IN_WEIGHTS[best])
            row[f"recall@10_S{size}"] = round(values[best], 4)
        weight.copy_(torch.tensor([*chosen, chosen[-1]], dtype=weight.dtype))
        scores = model_scorer_for(scorer, data.user_table)
        genre = loved_genre_test(data, scores, [], {}, C.training_counts(data), BUCKET_SIZES)
        row["weights"] = chosen
        row["loved_genre_share"] = round(
            float(np.mean([r.share for r in genre if r.method == MELU])), 3
        )
        weight.zero_()
        rows.append(row)
        log.info("%s", row)
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transforms", nargs="+", default=["z", "clip2", "clip3", "clip5", "pow0.5"]
    )


table = loved_genre_table([("transform", "transform", 9, "")])


if __name__ == "__main__":
    with torch.no_grad():
        raise SystemExit(main(__doc__, probe, table, options))

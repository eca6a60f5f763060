"""Validation users only: can each user's own support choose how far their local step goes?

The step schedule (``melu.schedule.choose_step_schedule``) sets one multiple of the learned
step per support size for everyone. Here each user picks their own, at serving time and from
their ratings alone: for every support position holding a liked rating, the model adapts on
the other ratings with each multiple, scores the catalogue as the service does (fold-in and
floor included), and the left-out film's place among the candidates (the recommendable rows
minus the rest of the support) is scored, either as a top-10 hit (``hits``) or as
-log(1 + films ranked above it) (``logrank``, which separates users whose left-out films all
miss the top 10). The multiple with the best total wins (ties: the schedule's). Reported:
validation Recall@10 of the served lists with zero steps (x0), with the schedule's multiple,
with each user's leave-one-out choice, and the per-user best multiple in hindsight (an upper
bound that the draws' noise inflates), over the schedule's support draws.

    python benchmarks/loo_step_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/loo_step_probe.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main

from melu.objectives import Episode, candidates, sample_episodes
from melu.predict import hits_at
from melu.ranking import hits_in_top
from melu.schedule import BUCKET_SIZES, DRAWS, MULTIPLES
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner

log = logging.getLogger("loo_step_probe")


def left_out_scores(
    scorer: CatalogueScorer, ep: Episode, liked: float, criterion: str
) -> torch.Tensor:
    """Each user's total over their liked support films of the left-out film's score
    (``criterion``) when the model adapts on the rest of the support."""
    recommendable = scorer.recommendable
    users = torch.arange(len(ep.users))
    total = torch.zeros(len(ep.users), dtype=torch.float64)
    for j in range(ep.rows_spt.shape[1]):
        held = ep.mask_spt[:, j] & (ep.y_spt[:, j] >= liked)
        if not held.any():
            continue
        mask = ep.mask_spt.clone()
        mask[:, j] = False
        scores = scorer.scores(scorer.adapt(ep.users, ep.rows_spt, ep.y_spt, mask), ep.users)
        allowed = candidates(recommendable, ep.rows_spt, mask)
        if criterion == "hits":
            relevant = torch.zeros_like(allowed)
            relevant[users, ep.rows_spt[:, j]] = held
            found = hits_in_top(scores.rank, allowed, relevant & allowed, 10, scores.above_floor)
            total += found.to(torch.float64)
        else:
            own = scores.rank.gather(1, ep.rows_spt[:, j : j + 1])
            above = ((scores.rank > own) & allowed).sum(1).to(torch.float64)
            total += torch.where(held, -torch.log1p(above), torch.zeros_like(above))
    return total


def probe(path: Path, args: argparse.Namespace) -> Rows:
    criterion = args.criterion
    multiples = MULTIPLES + tuple(m for m in args.extra_multiples if m not in MULTIPLES)
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    table, recommendable = data.catalogue.table, data.catalogue.recommendable
    scorer = CatalogueScorer(learner, table, recommendable)
    liked = learner.net.cfg.liked_rating
    seed = checkpoint.train.seed
    schedule = learner.net.step_schedule
    chosen = schedule.clone()
    rows: list[dict[str, Any]] = []
    for bucket, size in enumerate(BUCKET_SIZES):
        scheduled = multiples.index(float(chosen[bucket]))
        # Ties go to the schedule's multiple: a nudge below any real difference.
        nudge = torch.zeros(len(multiples), 1, dtype=torch.float64)
        nudge[scheduled] = 0.5 if criterion == "hits" else 1e-9
        found: dict[str, list[torch.Tensor]] = {"x0": [], "schedule": [], "loo": [], "best": []}
        picked: list[torch.Tensor] = []
        for draw in range(DRAWS):
            generator = torch.Generator().manual_seed(seed * 1000 + draw)
            for start in range(0, len(validation), 64):
                batch = validation.batch(np.arange(start, min(start + 64, len(validation))))
                ep = sample_episodes(
                    batch, data.user_table, table, (size, size), liked, generator=generator
                )
                allowed = candidates(recommendable, ep.rows_spt, ep.mask_spt)
                relevant = torch.zeros_like(allowed)
                relevant.scatter_(1, ep.targets, ep.liked > 0)
                relevant &= allowed
                keep = relevant.sum(1) > 0
                recalls, totals = [], []
                for multiple in multiples:
                    schedule.fill_(multiple)
                    state = scorer.adapt(ep.users, ep.rows_spt, ep.y_spt, ep.mask_spt)
                    scores = scorer.scores(state, ep.users)
                    recalls.append(hits_at(scores.rank, allowed, relevant, scores.above_floor))
                    totals.append(left_out_scores(scorer, ep, liked, criterion)[keep])
                recall = torch.stack(recalls)  # [M, users with a relevant row]
                pick = (torch.stack(totals) + nudge).argmax(0)
                found["x0"].append(recall[multiples.index(0.0)])
                found["schedule"].append(recall[scheduled])
                found["loo"].append(recall.gather(0, pick[None])[0])
                found["best"].append(recall.max(0).values)
                picked.append(pick)
        schedule.copy_(chosen)
        choices = torch.cat(picked)
        row = {
            "checkpoint": str(path),
            "seed": seed,
            "S": size,
            "criterion": criterion,
            "multiples": list(multiples),
            "schedule_multiple": float(chosen[bucket]),
            **{f"recall@10_{k}": round(float(torch.cat(v).mean()), 4) for k, v in found.items()},
            "users_per_multiple": [int((choices == i).sum()) for i in range(len(multiples))],
        }
        rows.append(row)
        log.info("%s", row)
    return rows


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--criterion", choices=("logrank", "hits"), default="logrank")
    parser.add_argument(
        "--extra-multiples", type=float, nargs="*", default=[],
        help="multiples of the learned step to offer beside the schedule's own",
    )  # fmt: skip


def table(rows: Rows) -> None:
    print(
        f"{'seed':>4} {'S':>2} {'schedule':>8} {'x0':>7} {'sched.':>7} {'own LOO':>7} {'best':>7}"
    )
    for r in rows:
        print(f"{r['seed']:>4} {r['S']:>2} {'x' + format(r['schedule_multiple'], 'g'):>8} "
              f"{r['recall@10_x0']:>7.4f} {r['recall@10_schedule']:>7.4f} "
              f"{r['recall@10_loo']:>7.4f} {r['recall@10_best']:>7.4f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, table, options))

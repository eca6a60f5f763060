"""Validation users only: is the local step short of earning its place because its sizes are
meta-learned on the training users, whose ratings also trained the item embeddings?

The taste model's step sizes (``TasteNet.step_size``, one per fast weight, a vector for the
two vectors) and their function of the support's size (``TasteNet.step_gate``) are learned
with everything else on the training users' episodes, where a step pays at every support
size; on validation users it pays only from 8-16 ratings, so the schedule switches it off
below. If the gap is the training users' familiarity, step sizes learned on users the model
never saw should go further where new users gain and stop where they lose.

For each taste-model run the validation users are split in two halves at random. On one half
only the step sizes and gates are learned again (everything else frozen, the schedule at x1,
no dropout), on the meta-objective of training (each user an episode of 3 to 20 ratings, the
query loss after the step, second order), from the run's values; the other half judges the
served lists (fold-in and floor as the run chose them), Recall@10 over the schedule's 4
support draws at each of :data:`melu.schedule.BUCKET_SIZES`; then the halves swap. Lists:
``run`` (the run as it is), ``x0`` (zero steps), ``run x1`` (the run's step at every size),
``held-out x1`` (the relearned step at every size), ``held-out scheduled`` (the relearned step
with a schedule chosen on the learning half, as ``melu.schedule.choose_step_schedule`` does).

    python benchmarks/heldout_step_probe.py --data-dir ../shared/data/movielens \\
        --checkpoints RUNS/default-seed{0,1,2}/checkpoint.pt \\
        --json results/heldout_step_probe.json
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probes import Rows, load_run, main, recall_table

from melu.objectives import sample_episodes
from melu.schedule import BUCKET_SIZES, choose_step_schedule, mean_recall
from melu.scoring import CatalogueScorer
from melu.tasks import TaskSet
from melu.taste_learner import TasteLearner

ITERATIONS = int(os.environ.get("PROBE_ITERATIONS", "300"))
LR = 0.01
EPISODE_SIZES = (3, 20)
LISTS = ("run", "x0", "run_x1", "heldout_x1", "heldout_scheduled")
log = logging.getLogger("heldout_step_probe")


def step_parameters(learner: TasteLearner) -> list[torch.nn.Parameter]:
    return [*learner.net.step_size.values(), *learner.net.step_gate.values()]


def relearn(
    learner: TasteLearner, tasks: TaskSet, user_table: torch.Tensor, table: torch.Tensor,
    recommendable: torch.Tensor, seed: int,
) -> list[float]:  # fmt: skip
    """Learn the step sizes and gates again on ``tasks`` (the rest frozen, no dropout);
    returns the meta-loss every 25 iterations."""
    for p in learner.parameters():
        p.requires_grad_(False)
    params = step_parameters(learner)
    for p in params:
        p.requires_grad_(True)
    optimiser = torch.optim.Adam(params, lr=LR)
    generator = torch.Generator().manual_seed(seed)
    batch = tasks.batch(np.arange(len(tasks)))
    liked = learner.net.cfg.liked_rating
    trace = []
    learner.eval()
    for iteration in range(ITERATIONS):
        ep = sample_episodes(batch, user_table, table, EPISODE_SIZES, liked, generator=generator)
        # Validation users also rated films without training ratings: neither a softmax target
        # (they are not candidates) nor a rating target (their item side is not computed).
        known = recommendable[ep.targets] & ep.target_mask
        ep = ep._replace(target_mask=known, liked=ep.liked * known)
        loss = learner.losses(ep, table, recommendable).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if iteration % 25 == 0 or iteration == ITERATIONS - 1:
            trace.append(round(float(loss), 4))
    for p in params:
        p.requires_grad_(False)
    return trace


def served(
    scorer: CatalogueScorer, tasks: TaskSet, user_table: torch.Tensor, seed: int
) -> dict[int, float]:
    """Each support size's served Recall@10 over the schedule's draws, as it judges them."""
    liked = scorer.learner.net.cfg.liked_rating
    return {
        size: mean_recall(scorer, tasks, user_table, liked, size, seed) for size in BUCKET_SIZES
    }


def probe(path: Path, args: argparse.Namespace) -> Rows:
    checkpoint, learner, data, validation = load_run(path, args.data_dir)
    assert isinstance(learner, TasteLearner)
    table, recommendable = data.catalogue.table, data.catalogue.recommendable
    user_table = data.user_table
    seed = checkpoint.train.seed
    net = learner.net
    original = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    schedule = original["net.step_schedule"]
    first = np.random.default_rng(seed).permutation(len(validation)) < len(validation) // 2
    results: dict[str, dict[int, list[float]]] = {name: {} for name in LISTS}
    extra: list[dict[str, Any]] = []
    for fitted in (first, ~first):
        learn = validation.subset(np.flatnonzero(fitted))
        judge = validation.subset(np.flatnonzero(~fitted))
        scorer = CatalogueScorer(learner, table, recommendable)
        lists: dict[str, dict[int, float]] = {}
        learner.load_state_dict(original)
        lists["run"] = served(scorer, judge, user_table, seed)
        net.step_schedule.fill_(0.0)
        lists["x0"] = served(scorer, judge, user_table, seed)
        net.step_schedule.fill_(1.0)
        lists["run_x1"] = served(scorer, judge, user_table, seed)
        trace = relearn(learner, learn, user_table, table, recommendable, seed)
        net.step_schedule.fill_(1.0)
        lists["heldout_x1"] = served(scorer, judge, user_table, seed)
        with torch.no_grad():
            choose_step_schedule(learner, table, recommendable, learn, user_table, seed)
        chosen = net.step_schedule.tolist()
        lists["heldout_scheduled"] = served(scorer, judge, user_table, seed)
        extra.append(
            {
                "loss_trace": trace,
                "heldout_schedule": chosen,
                "step_size_user_mean": {
                    "run": float(original["net.step_size.user"].mean()),
                    "heldout": float(net.step_size["user"].mean()),
                },
                "step_gates": {
                    name: [round(float(v), 4) for v in net.step_gate[name]]
                    for name in net.step_gate
                },
                "run_step_gates": {
                    name: [round(float(v), 4) for v in original[f"net.step_gate.{name}"]]
                    for name in net.step_gate
                },
            }
        )
        for name, by_size in lists.items():
            for size, value in by_size.items():
                results[name].setdefault(size, []).append(value)
        log.info("%s half: %s %s", path, lists, extra[-1])
    learner.load_state_dict(original)
    rows = []
    halves = [int((~first).sum()), int(first.sum())]
    for bucket, size in enumerate(BUCKET_SIZES):
        row: dict[str, Any] = {
            "checkpoint": str(path),
            "seed": seed,
            "S": size,
            "run_schedule_multiple": float(schedule[bucket]),
        }
        for name in LISTS:
            # Each half's mean over its users, weighed by its size: the mean over all users.
            values = results[name][size]
            row[f"recall@10_{name}"] = round(float(np.average(values, weights=halves)), 4)
        row["halves"] = extra
        rows.append(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main(__doc__, probe, recall_table(LISTS, 17)))

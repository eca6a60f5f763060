"""Onboarding: MeLU's evidence score against a per-item loop, the strategies by hand, the
simulated walk's skip rule, the simulation and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from test_maml import make_batch, make_learner

from melu import checkpoint as ckpt
from melu import onboarding as O
from melu.cli import main
from melu.config import RatingScale
from melu.data import ColdStartData
from melu.evaluation.onboarding import RANDOM, choose_lists, model_scorer, simulate, walk
from melu.maml import masked_mse, support_stats

pytestmark = pytest.mark.usefixtures("one_thread")


def _loop_grad_norm(learner, user, item, rating, steps) -> float:  # type: ignore[no-untyped-def]
    """MeLU's get_weight_avg_norm for one rating, one plain autograd step at a time."""
    net = learner.net
    fast = {n: p.detach().clone().requires_grad_(True) for n, p in net.head.named_parameters()}
    y, mask = rating.reshape(1), torch.ones(1, dtype=torch.bool)
    mean, context = support_stats(y, mask)
    offset = mean if net.cfg.residual else torch.zeros_like(mean)
    with torch.no_grad():
        task, feats = net.encoder(user, item.unsqueeze(0), context)
    total = 0.0
    for _ in range(steps):
        pred = torch.func.functional_call(net.head, fast, (task, feats)) + offset
        loss = masked_mse(pred, y, mask)
        unit = loss / loss.detach()
        grads = torch.autograd.grad(unit, list(fast.values()))
        total += sum(float(torch.linalg.vector_norm(g)) for g in grads)
        fast = {
            n: (w - learner.cfg.local_lr * g).detach().requires_grad_(True)
            for (n, w), g in zip(fast.items(), grads, strict=True)
        }
    return total / steps


@pytest.mark.parametrize("hidden", [(8, 8), (8,), ()])
def test_evidence_gradient_norms_match_a_per_item_loop(hidden: tuple[int, ...]) -> None:
    learner = make_learner(hidden=hidden).eval()
    batch = make_batch(n_tasks=6, support=3)
    users = batch.users
    items = batch.x_spt[:, 0]
    ratings = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0, 5.0], dtype=torch.float64)
    steps = learner.cfg.local_steps
    with torch.no_grad():
        closed = O._head_grad_norms(learner, users, items, ratings, steps)
        vmapped = O._grad_norms(learner, users, items, ratings, steps)
    loop = torch.tensor(
        [_loop_grad_norm(learner, users[i], items[i], ratings[i], steps) for i in range(6)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(closed, loop, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(vmapped, loop, rtol=1e-10, atol=1e-10)
    assert (loop > 0).all()


def test_rating_stats_popularity_and_entropy_by_hand() -> None:
    ratings = pd.DataFrame(
        {"user_id": [1, 2, 3, 4, 1, 2], "item_id": [10, 10, 10, 10, 20, 20],
         "rating": [1, 5, 1, 5, 3, 3]}
    )  # fmt: skip
    count, entropy = O.rating_stats(ratings, {10: 1, 20: 2}, 3)
    np.testing.assert_allclose(count, [0, 4, 2])
    np.testing.assert_allclose(entropy, [0, np.log(2), 0])  # split 1/5 vs unanimous 3s


def test_rating_entropy_counts_half_stars_on_their_own() -> None:
    """On half stars each value is its own bin: 4.5 is neither 4 nor 5, and 0.5 is not 1."""
    ratings = pd.DataFrame(
        {"user_id": [1, 2, 3, 4, 5, 6], "item_id": [10, 10, 10, 10, 20, 20],
         "rating": [0.5, 1.0, 4.5, 4.5, 4.0, 5.0]}
    )  # fmt: skip
    _, entropy = O.rating_stats(ratings, {10: 1, 20: 2}, 3, RatingScale(0.5, 5.0, 0.5))
    quarter, half = -0.25 * np.log(0.25), -0.5 * np.log(0.5)
    np.testing.assert_allclose(entropy, [0, 2 * quarter + half, np.log(2)])
    # Read on whole stars, 0.5 and 1.0 merge (and 4.5 rounds to 4): less spread than there is.
    _, whole = O.rating_stats(ratings, {10: 1, 20: 2}, 3)
    assert whole[1] < entropy[1]


def test_ordered_and_diverse_lists() -> None:
    scores = np.array([0.0, 0.9, 0.9, 0.8, 0.1, 0.0])
    np.testing.assert_array_equal(O.ordered(scores), [1, 2, 3, 4])  # ties by row; 0 dropped
    # Rows 1 and 2 are the same film twice (identical content); 3 and 4 differ.
    vectors = sparse.csr_matrix(np.array([[0, 0], [1, 0], [1, 0], [0, 1], [0.6, 0.8], [0, 0]]))
    np.testing.assert_array_equal(O.diverse(scores, vectors, penalty=0.0), [1, 2, 3, 4])
    np.testing.assert_array_equal(O.diverse(scores, vectors, penalty=1.0)[:2], [1, 3])


def test_walk_rates_what_the_user_has_seen_and_skips_the_rest() -> None:
    history = {7: 5.0, 3: 2.0, 11: 4.0, 5: 1.0, 13: 3.0, 2: 4.0}
    shown = [1, 7, 4, 3, 9, 11, 5, 8, 2, 13]
    got = walk(history, shown, wanted=5)
    assert got.rows.tolist() == [7, 3, 11, 5, 2]
    assert got.ratings.tolist() == [5.0, 2.0, 4.0, 1.0, 4.0]
    assert got.shown == 9  # the 5th rating came at the 9th item shown
    short = walk(history, [1, 7, 4, 3], wanted=5)
    assert short.rows.tolist() == [7, 3] and short.shown == 4  # the whole list, counted


def test_simulation_and_stored_lists(small_checkpoint: Path, melu_data: ColdStartData) -> None:
    ck = ckpt.load(small_checkpoint)
    learner = ck.learner("cpu")
    with torch.no_grad():
        lists, info = choose_lists(learner, melu_data)
    assert set(lists.rows) == set(O.STRATEGIES)
    for rows in lists.rows.values():
        assert len(rows) == O.LIST_LENGTH and len(set(rows.tolist())) == O.LIST_LENGTH
    popular = lists.rows["popularity"]
    counts, _ = O.rating_stats(
        melu_data.train_ratings, melu_data.catalogue.rows, len(popular) + 4000
    )
    assert (np.diff(counts[popular]) <= 0).all()
    # The evidence scores' time is reported (how long it took belongs to benchmarks: a bound
    # here failed a CI run whose machine was twice as slow as usual).
    assert 0 < info["evidence_seconds"] < float("inf")
    rows = simulate(
        melu_data, {"popularity": popular}, model_scorer(learner, melu_data), ("validation",),
        bootstrap=50,
    )  # fmt: skip
    by = {(r.strategy, r.metric): r for r in rows}
    assert by[(RANDOM, "items_shown")].value == 5.0
    assert by[("popularity", "items_shown")].value > 5.0  # skipped items count as effort
    assert 0.9 < by[("popularity", "reached_5")].value <= 1.0
    assert by[("popularity", "recall@10")].n_users == by[(RANDOM, "recall@10")].n_users


def test_cli_onboarding(
    small_checkpoint: Path, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "checkpoint.pt"
    shutil.copy(small_checkpoint, path)
    code = main(["onboarding", "--checkpoint", str(path)])
    assert code == 2 and "no onboarding lists stored" in capsys.readouterr().err
    args = ["onboarding", "--checkpoint", str(path), "--data-dir", str(shared_data), "--save"]
    assert main([*args, "--top", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert ckpt.load(path).onboarding["lists"]["evidence"]
    assert (
        main(["onboarding", "--checkpoint", str(path), "--json", "--strategy", "popularity"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["strategy"] == "popularity" and len(out["items"]) == 20
    assert out["items"][0]["title"]

"""The watch objective (melu.objectives, melu.watch): episodes, the multinomial likelihood and
the combined ranking score, checked against per-task loops in float64 and on real data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from melu import checkpoint as ckpt
from melu.config import PRESETS, MetaConfig, ModelConfig, TrainConfig
from melu.data import ColdStartData
from melu.features import FieldSpec
from melu.maml import MetaLearner, TaskFeatures, gather
from melu.model import MeLUNet
from melu.objectives import (
    ITEM_ID_COLUMN,
    WatchEpisode,
    multinomial_nll,
    sample_episodes,
    support_order_loss,
)
from melu.tasks import TaskBatch, TaskSet
from melu.train import train

USER_SPECS = [FieldSpec("gender", 3, 0, 1, False), FieldSpec("age", 8, 1, 1, False)]
N_IDS = 12  # item ids 1..11 known; the catalogue also has 3 new items (id 0)
ITEM_SPECS = [
    FieldSpec("item", N_IDS, ITEM_ID_COLUMN, 1, False),
    FieldSpec("rate", 5, 1, 1, False),
    FieldSpec("genre", 7, 2, 3, True),
]


def catalogue() -> torch.Tensor:
    """Row 0 padding, rows 1..11 known items, rows 12..14 new items (id 0, content only)."""
    g = torch.Generator().manual_seed(5)
    rows = 15
    ids = torch.cat([torch.arange(N_IDS), torch.zeros(3, dtype=torch.long)])
    rate = torch.randint(1, 5, (rows,), generator=g)
    genre = torch.randint(0, 7, (rows, 3), generator=g)
    table = torch.cat([ids[:, None], rate[:, None], genre], dim=1)
    table[0] = 0
    return table


def make_learner(**meta: object) -> MetaLearner:
    torch.manual_seed(0)
    model_cfg = ModelConfig(
        embedding_dim=4,
        hidden=(8, 8),
        item_fields=("rate", "genre"),
        user_fields=("gender", "age"),
        embedding_dropout=0.0,
        item_id_dropout=0.0,
        objective="rating+watch",
        watch_dim=6,
        watch_id_dropout=0.0,
        rank_rating_weight=0.7,
    )
    meta_cfg = dataclasses.replace(MetaConfig(local_steps=3, local_lr=0.1), **meta)  # type: ignore[arg-type]
    learner = MetaLearner(MeLUNet(USER_SPECS, ITEM_SPECS, model_cfg), meta_cfg).double()
    with torch.no_grad():  # rating weights away from their init, so that a bug shows
        assert learner.watch is not None
        learner.watch.rating_scale.copy_(torch.linspace(-1.0, 1.5, 6))
        learner.watch.rating_shift.normal_(0.0, 0.3)
    return learner


def make_tasks(n_tasks: int = 5, seed: int = 1) -> TaskBatch:
    """Id-only tasks over rows 1..11 of :func:`catalogue`, ragged supports, 4 queries each."""
    g = torch.Generator().manual_seed(seed)
    support, query = 7, 4
    rows = torch.stack(
        [torch.randperm(11, generator=g)[: support + query] + 1 for _ in range(n_tasks)]
    )
    sizes = torch.randint(3, support + 1, (n_tasks,), generator=g)
    mask_spt = torch.arange(support).unsqueeze(0) < sizes.unsqueeze(1)
    ratings = torch.randint(1, 6, (n_tasks, support + query), generator=g).double()
    return TaskBatch(
        users=torch.randint(1, 4, (n_tasks,), generator=g),
        x_spt=rows[:, :support] * mask_spt,
        y_spt=ratings[:, :support] * mask_spt,
        mask_spt=mask_spt,
        x_qry=rows[:, support:],
        y_qry=ratings[:, support:],
        mask_qry=torch.ones(n_tasks, query, dtype=torch.bool),
    )


USER_TABLE = torch.tensor([[0, 0], [1, 2], [2, 5], [1, 7]])


def features(tasks: TaskBatch, table: torch.Tensor) -> TaskFeatures:
    return TaskFeatures(
        USER_TABLE[tasks.users], table[tasks.x_spt], tasks.y_spt, tasks.mask_spt,
        table[tasks.x_qry], tasks.y_qry, tasks.mask_qry,
    )  # fmt: skip


def grads(learner: MetaLearner, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    learner.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}


def one(values: WatchEpisode | TaskFeatures, t: int, n: int) -> object:
    """Task ``t`` of a batch with its support cut to its ``n`` real entries."""
    out = []
    for name, v in zip(values._fields, values, strict=True):
        v = v[t : t + 1]
        if name in ("x_spt", "y_spt", "mask_spt", "rows_spt"):
            v = v[:, :n]
        out.append(v)
    return type(values)(*out)


@pytest.mark.parametrize("first_order", [False, True])
def test_watch_meta_gradient_equals_per_task_loop(first_order: bool) -> None:
    """Query MSE + watch NLL of a padded batch: the same gradients as one task at a time."""
    learner = make_learner(first_order=first_order, watch_weight=0.5, watch_order_weight=0.3)
    table = catalogue()
    tasks = make_tasks()
    episode = sample_episodes(
        tasks, USER_TABLE, table, (2, 5), generator=torch.Generator().manual_seed(0)
    )
    batch = features(tasks, table)
    batched = grads(learner, learner.meta_loss(batch, None, episode, table))
    assert any(k.startswith("net.watch.") for k in batched)
    losses = []
    for t in range(len(tasks)):
        f = one(batch, t, int(batch.mask_spt[t].sum()))
        e = one(episode, t, int(episode.mask_spt[t].sum()))
        losses.append(learner.task_losses(f, None, e, table))  # type: ignore[arg-type]
    looped = grads(learner, torch.cat(losses).mean())
    assert batched.keys() == looped.keys()
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("first_order", [False, True])
def test_rank_score_and_its_gradient_equal_per_task_loop(first_order: bool) -> None:
    """The served score (watch logit + weight x rating) batched over tasks and item features
    equals one task at a time, values and gradients w.r.t. every meta-parameter."""
    learner = make_learner(first_order=first_order).eval()
    table = catalogue()
    tasks = make_tasks()
    b = features(tasks, table)
    items = learner.item_features(table)
    weight = torch.linspace(0.5, 1.5, table.shape[0], dtype=torch.float64)

    adaptation = learner.adapt(b.users, b.x_spt, b.y_spt, b.mask_spt)
    scores = learner.rank_scores(adaptation, b.users, items)
    batched = grads(learner, (scores * weight).sum())
    rows = []
    for t in range(len(tasks)):
        f = one(b, t, int(b.mask_spt[t].sum()))
        assert isinstance(f, TaskFeatures)
        a = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt)
        rows.append(learner.rank_scores(a, f.users, learner.item_features(table)))
    looped_scores = torch.cat(rows)
    looped = grads(learner, (looped_scores * weight).sum())
    torch.testing.assert_close(scores.detach(), looped_scores.detach(), rtol=1e-12, atol=1e-12)
    for name in batched:
        torch.testing.assert_close(batched[name], looped[name], rtol=1e-10, atol=1e-12, msg=name)
    # ... and it is the watch logit plus the weighted predicted rating.
    with torch.no_grad():
        rating = learner.predict_from_features(adaptation, b.users, items)
        logit = learner.watch_logits(adaptation, items)
        torch.testing.assert_close(scores.detach(), logit + 0.7 * rating)


def test_multinomial_nll_matches_a_hand_computation() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    allowed = torch.tensor([[False, True, True, False]])
    targets = torch.tensor([[2, 1, 0]])
    weights = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    # softmax over rows 1 and 2 only: p(2) = e^2 / (e + e^2), p(1) = e / (e + e^2)
    z = np.log(np.e + np.e**2)
    expected = -((2.0 - z) + (1.0 - z)) / 2.0
    got = multinomial_nll(logits, allowed, targets, weights)
    assert got.item() == pytest.approx(expected)


def test_support_order_loss_counts_each_differently_rated_pair_once() -> None:
    scores = torch.tensor([[2.0, 0.0, 1.0, 9.0]], dtype=torch.float64)
    ratings = torch.tensor([[5.0, 1.0, 5.0, 1.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False]])  # the last item is padding
    # pairs (higher, lower): (0, 1) margin 2, (2, 1) margin 1
    expected = (np.log1p(np.exp(-2.0)) + np.log1p(np.exp(-1.0))) / 2
    assert support_order_loss(scores, ratings, mask).item() == pytest.approx(expected)
    none = support_order_loss(scores, torch.full_like(ratings, 3.0), mask)
    assert none.item() == 0.0


def test_episodes_split_every_rating_into_support_or_target() -> None:
    table = catalogue()
    tasks = make_tasks(n_tasks=50).pad_tasks(52)  # two empty tasks, as --compile pads
    ep = sample_episodes(tasks, USER_TABLE, table, (2, 5), 4.0, torch.Generator().manual_seed(3))
    assert not ep.mask_spt[50:].any() and not ep.weights[50:].any()
    ep = WatchEpisode(*(v[:50] for v in ep))
    sizes = ep.mask_spt.sum(1)
    assert int(sizes.min()) == 2 and int(sizes.max()) == 5
    for t in range(50):
        real = torch.cat([tasks.x_spt[t][tasks.mask_spt[t]], tasks.x_qry[t]])
        rating = dict(
            zip(
                real.tolist(),
                torch.cat([tasks.y_spt[t][tasks.mask_spt[t]], tasks.y_qry[t]]).tolist(),
                strict=True,
            )
        )
        support = ep.rows_spt[t][ep.mask_spt[t]].tolist()
        targets = ep.targets[t][ep.weights[t] > 0].tolist()
        assert not set(support) & set(targets)
        assert set(support) <= set(real.tolist())
        # Targets: exactly the other ratings of 4 or more.
        assert sorted(targets) == sorted(
            r for r in real.tolist() if r not in support and rating[r] >= 4.0
        )
        assert ep.y_spt[t][ep.mask_spt[t]].tolist() == [rating[r] for r in support]


def test_explain_points_at_the_support_item_behind_a_recommendation() -> None:
    learner = make_learner().eval()
    table = catalogue()
    tasks = make_tasks()
    b = features(tasks, table)
    with torch.no_grad():
        adaptation = learner.adapt(b.users, b.x_spt, b.y_spt, b.mask_spt)
        items = learner.item_features(table)
        rows = torch.tensor([1, 5, 12])
        index = learner.explain(adaptation, b.users, items, rows)
        assert index.shape == (len(tasks), 3)
        assert adaptation.evidence is not None
        out = items[rows, -7:-1]  # the watch output embeddings (dim 6), bias dropped
        for t in range(len(tasks)):
            n = int(b.mask_spt[t].sum())
            parts = adaptation.evidence[t, :n] @ out.t()
            assert (index[t] < n).all()
            torch.testing.assert_close(parts.argmax(0), index[t])


def test_ratings_below_the_minimum_leave_the_user_vector_alone() -> None:
    """With ``watch_min_rating`` 3 a support item rated 1 or 2 changes neither the user vector
    nor the explanations, yet still adapts the rating head; at 0 it counts like the others."""
    table = catalogue()
    b = features(make_tasks(), table)
    low = (b.y_spt < 3) & b.mask_spt
    assert low.any() and (b.mask_spt & ~low).any(1).all()
    results = {}
    for minimum in (0.0, 3.0):
        learner = make_learner().eval()
        assert learner.watch is not None
        learner.watch.min_rating = minimum
        with torch.no_grad():
            full = learner.adapt(b.users, b.x_spt, b.y_spt, b.mask_spt)
            kept = learner.adapt(b.users, b.x_spt, b.y_spt, b.mask_spt & ~low)
        results[minimum] = (full, kept)
    full, kept = results[3.0]
    assert full.user is not None and kept.user is not None and full.evidence is not None
    torch.testing.assert_close(full.user, kept.user)
    assert (full.evidence[low] == 0).all()
    # Explanations point at kept items only; a support of low ratings alone has none.
    items = learner.item_features(table)
    rows = torch.tensor([1, 5, 12])
    with torch.no_grad():
        picked = learner.explain(full, b.users, items, rows)
        only_low = learner.adapt(b.users, b.x_spt, b.y_spt, low)
        nothing = learner.explain(only_low, b.users, items, rows)
    assert not low.gather(1, picked).any()
    assert (nothing == b.x_spt.shape[1]).all()
    # The rating head still sees every rating: its fast weights differ without the low ones.
    assert any(not torch.equal(full.fast[name], kept.fast[name]) for name in full.fast)
    full, kept = results[0.0]
    assert full.user is not None and kept.user is not None
    assert not torch.allclose(full.user, kept.user)


# A small model's share of (5-star, 1-star) support pairs ordered right; 3 epochs on 480 users
# reach about 0.72 with whole supports (the full default model: 0.85-0.9 from 5-10 ratings).
THRESHOLD_PAIRS = 0.65


@pytest.fixture(scope="module")
def trained(melu_data: ColdStartData, tmp_path_factory: pytest.TempPathFactory) -> ckpt.Checkpoint:
    """The default watch model, 3 epochs on 480 training users of the real data."""
    rng = np.random.default_rng(0)
    tasks = dict(melu_data.tasks)
    tasks["warm"] = tasks["warm"].subset(rng.choice(len(tasks["warm"]), 480, replace=False))
    data = dataclasses.replace(melu_data, tasks=tasks)
    run = tmp_path_factory.mktemp("watch-run")
    cfg = TrainConfig(epochs=3, device="cpu", seed=0)
    return train(data, run, PRESETS["default"], MetaConfig(), cfg, progress=False)


def test_trained_model_ranks_liked_items_above_disliked_ones(
    melu_data: ColdStartData, trained: ckpt.Checkpoint
) -> None:
    """Validation users (never trained on): within each support, items rated 5 get a higher
    ranking score than items rated 1 after adaptation, in most pairs."""
    learner = trained.learner()
    val = melu_data.tasks["validation"]
    table = melu_data.catalogue.table
    with torch.no_grad():
        f = features_of(val, melu_data)
        adaptation = learner.adapt(f.users, f.x_spt, f.y_spt, f.mask_spt)
        scores = learner.rank_scores(adaptation, f.users, learner.item_features(table))
    support_scores = scores.gather(1, val.batch_all.x_spt)
    liked = (f.y_spt == 5) & f.mask_spt
    disliked = (f.y_spt == 1) & f.mask_spt
    pairs = liked.unsqueeze(2) & disliked.unsqueeze(1)
    above = support_scores.unsqueeze(2) > support_scores.unsqueeze(1)
    assert int(pairs.sum()) > 1000
    # An untrained model orders these pairs at chance (0.5).
    assert float((above & pairs).sum() / pairs.sum()) > THRESHOLD_PAIRS
    # Recall@10 from 5 ratings: about 0.24 here (popularity: 0.23; random order: under 0.01).
    assert trained.metrics["best_val_recall"] > 0.2


def features_of(tasks: TaskSet, data: ColdStartData) -> TaskFeatures:
    return gather(tasks.batch_all, data.user_table, data.catalogue.table)


@pytest.mark.usefixtures("one_thread")
def test_resumed_watch_run_equals_uninterrupted_run(
    melu_data: ColdStartData, tmp_path: Path
) -> None:
    """Episodes are drawn from torch's generator, whose state the checkpoint keeps; each part
    keeps its own best epoch (rating: validation MAE, watch: validation recall).

    One thread: with two, the embedding tables' gradients are accumulated in an order that
    varies from run to run, so not even two uninterrupted runs are bit-equal."""
    rng = np.random.default_rng(1)
    tasks = dict(melu_data.tasks)
    tasks["warm"] = tasks["warm"].subset(rng.choice(len(tasks["warm"]), 160, replace=False))
    tasks["validation"] = tasks["validation"].subset(np.arange(48))
    data = dataclasses.replace(melu_data, tasks=tasks)
    cfg = TrainConfig(epochs=2, device="cpu", seed=4, patience=5)
    root = tmp_path
    model, meta = PRESETS["default"], MetaConfig()
    full = train(data, root / "full", model, meta, cfg, progress=False)
    train(data, root / "part", model, meta, cfg, progress=False, stop_after_epoch=1)
    resumed = train(data, root / "part", model, meta, cfg, resume=True, progress=False)
    assert [r["val_recall"] for r in resumed.metrics["history"]] == [
        r["val_recall"] for r in full.metrics["history"]
    ]
    assert resumed.metrics["best_recall_epoch"] == full.metrics["best_recall_epoch"]
    for name, value in full.state.items():
        assert torch.equal(value, resumed.state[name]), name

"""EDLAE's fold-in (melu.fold_in): its weights, its scores, the blend, and the checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melu import checkpoint as ckpt
from melu.data import ColdStartData
from melu.evaluation import catalogue as C
from melu.evaluation.anchors import Edlae
from melu.evaluation.run import training_data
from melu.fold_in import FoldIn, blend, edlae_gram, edlae_weights, standardised
from melu.ranking import rank_top
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner


def _ratings(seed: int = 0, users: int = 60, items: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Random (user, item-index) pairs over items 1..items (0 is the unknown item), with
    repeats (a rating given twice counts once)."""
    rng = np.random.default_rng(seed)
    pairs = rng.integers([0, 1], [users, items + 1], size=(400, 2))
    return pairs[:, 0] * 7 + 3, pairs[:, 1]  # user ids need not be 0..n-1


def _edlae(users: np.ndarray, items: np.ndarray, n: int, dropout: float, l2: float) -> np.ndarray:
    """EDLAE's B over item indices 0..n-1, from Steck's formula with a plain inverse."""
    x = np.zeros((users.max() + 1, n))
    x[users, items] = 1.0
    gram = x.T @ x
    rated = np.flatnonzero(np.diag(gram) > 0)
    g = gram[np.ix_(rated, rated)]
    p = np.linalg.inv(g + np.diag(dropout / (1 - dropout) * np.diag(g) + l2))
    b = np.eye(len(rated)) - p / np.diag(p)[None, :]
    out = np.zeros((n, n))
    out[np.ix_(rated, rated)] = b
    return out


def test_weights_are_edlae() -> None:
    users, items = _ratings()
    gram = edlae_gram(users, items)
    before = gram.matrix.clone()
    weights = edlae_weights(gram, 0.9, 3.0)
    expected = _edlae(users, items, 26, 0.9, 3.0)
    rated = gram.rated
    assert np.array_equal(rated, np.unique(items))
    # The gram serves every setting: left as it was.
    assert torch.equal(gram.matrix, before)
    np.testing.assert_allclose(weights.numpy(), expected[np.ix_(rated, rated)], atol=1e-10)
    assert np.all(np.diag(weights) == 0)


def test_scores_are_the_support_times_b() -> None:
    """With every neighbour kept, a support's scores are ``x B`` (x binary; padding and the
    unknown item add nothing)."""
    users, items = _ratings(1)
    fold_in = FoldIn(5, neighbours=100)
    fold_in.fit(edlae_gram(users, items), 30, 0.8, 10.0)
    b = _edlae(users, items, 30, 0.8, 10.0)
    ids = torch.tensor([[3, 7, 0, 0], [12, 0, 5, 9]])
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    got = fold_in.scores(ids, mask).double().numpy()
    x = np.zeros((2, 30))
    x[0, [3, 7]] = 1.0
    x[1, [12, 5, 9]] = 1.0
    np.testing.assert_allclose(got, x @ b, atol=1e-5)


def test_neighbour_lists_keep_the_largest_magnitudes() -> None:
    users, items = _ratings(2)
    k = 6
    fold_in = FoldIn(5, neighbours=k)
    fold_in.fit(edlae_gram(users, items), 26, 0.9, 3.0)
    b = _edlae(users, items, 26, 0.9, 3.0)
    for item in np.unique(items):
        kept = set(fold_in.index[item].tolist())
        cut = np.sort(np.abs(b[item]))[::-1][k - 1]
        assert {int(j) for j in np.flatnonzero(np.abs(b[item]) > cut + 1e-9)} <= kept
        np.testing.assert_allclose(
            fold_in.value[item].double().numpy(), b[item, fold_in.index[item].numpy()], atol=1e-5
        )
    assert not fold_in.index[0].any() and not fold_in.value[0].any()


def test_blend_weight_zero_leaves_the_scores_and_otherwise_adds_the_standardised_fold_in() -> None:
    rank = torch.tensor([[3.0, 1.0, 2.0, -torch.inf], [0.5, 0.1, 0.3, 0.2]])
    folded = torch.tensor([[0.0, 4.0, 1.0, 2.0], [1.0, 0.0, 2.0, 5.0]])
    allowed = torch.tensor([[True, True, True, False], [True, True, True, False]])
    same = blend(rank, folded, allowed, torch.zeros(2))
    assert same.scores is rank and not same.scale.any()
    blended = blend(rank, folded, allowed, torch.tensor([0.0, 2.0]))
    mixed = blended.scores
    assert torch.equal(mixed[0], rank[0])
    z_rank, z_fold = standardised(rank, allowed), standardised(folded, allowed)
    # In the rank's units: the order of z(rank) + 2 z(fold-in), scaled back by the rank's
    # spread over the allowed entries.
    spread = float(rank[1, :3].std(unbiased=False))
    assert torch.allclose(mixed[1], rank[1] + 2.0 * spread * z_fold[1])
    # What one unit of the fold-in adds: the weight times the two spreads' ratio (0: none).
    fold_spread = float(folded[1, :3].std(unbiased=False))
    assert blended.scale[0] == 0.0
    assert float(blended.scale[1]) == pytest.approx(2.0 * spread / fold_spread, rel=1e-6)
    order = torch.argsort(mixed[1, :3], descending=True)
    assert torch.equal(order, torch.argsort(z_rank[1, :3] + 2.0 * z_fold[1, :3], descending=True))
    # Over the allowed entries: mean 0, standard deviation 1.
    kept = z_fold[1, :3]
    assert float(kept.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(kept.std(unbiased=False)) == pytest.approx(1.0, abs=1e-6)
    assert mixed[0, 3] == -torch.inf


def test_a_fitted_fold_in_loads_into_an_empty_one() -> None:
    """The lists' shape is the fitted catalogue's: a fresh model (empty buffers) takes it from
    the saved state."""
    users, items = _ratings(3)
    fitted = FoldIn(5, neighbours=8)
    fitted.fit(edlae_gram(users, items), 26, 0.95, 1.0)
    fitted.weight.fill_(0.5)
    fresh = FoldIn(5, neighbours=8)
    assert not fresh.fitted
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.fitted
    for name, value in fitted.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    # A float64 model keeps its dtype: the saved float32 lists are copied into it.
    wide = FoldIn(5, neighbours=8).double()
    wide.load_state_dict(fitted.state_dict())
    assert wide.value.dtype == torch.float64 and wide.index.dtype == torch.long
    assert torch.equal(wide.value.float(), fitted.value)


def test_a_heavy_fold_in_lists_what_the_edlae_anchor_lists(
    small_checkpoint: Path, melu_data: ColdStartData
) -> None:
    """The checkpoint's fold-in is the evaluation's EDLAE anchor with the setting it stores:
    weighed far above the taste model's scores, the model's lists are the anchor's (up to the
    neighbour lists' cut)."""
    ck = ckpt.load(small_checkpoint)
    learner = ck.learner()
    assert isinstance(learner, TasteLearner) and learner.net.fold_in is not None
    chosen = ck.metrics["fold_in"]
    setting = {"dropout": chosen["dropout"], "l2": chosen["l2"]}
    cases = C.build_cases(melu_data, "new_user", 5, 0, "catalogue").subset(np.arange(100))
    allowed = torch.from_numpy(cases.allowed())
    scorer = CatalogueScorer(learner, melu_data.catalogue.table, melu_data.catalogue.recommendable)

    def top(scores: np.ndarray) -> np.ndarray:
        return rank_top(torch.from_numpy(scores), allowed, 10).numpy()

    anchor = top(Edlae(training_data(melu_data)).score(cases.supports, setting))
    with torch.no_grad():
        learner.net.fold_in.weight.fill_(1e4)
    heavy = top(
        C.model_scores(scorer, melu_data.user_table, cases.user_rows, cases.supports).scores
    )
    with torch.no_grad():
        learner.net.fold_in.weight.zero_()
    alone = top(
        C.model_scores(scorer, melu_data.user_table, cases.user_rows, cases.supports).scores
    )

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))

    assert overlap(heavy, anchor) >= 0.95
    assert overlap(alone, anchor) < 0.8

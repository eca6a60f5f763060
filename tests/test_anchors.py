"""The stronger baselines (issue 17) against closed forms and hand-built references on toy
data: GF-CF's filters, RP3beta's walk, EDLAE's emphasised diagonal, the content prior's ridge
and its leave-one-out, Mult-DAE's fold-in; and every ranker's scores have the right shape."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from sklearn.linear_model import Ridge

from melu.evaluation.anchors import (
    DENSE_ARRAYS,
    ContentPrior,
    ContentPriorKnn,
    Edlae,
    GfCf,
    MemoryBudget,
    MultDae,
    Rp3Beta,
    catalogue_baselines,
    dense_bytes,
    shelf_baselines,
)
from melu.evaluation.rankers import ContentKnn, Ease, Supports, TrainingData
from melu.fold_in import edlae_inverse

pytestmark = pytest.mark.usefixtures("one_thread")

# Two users' supports on the toy catalogue (row 0 is padding).
SUPPORTS = Supports(np.array([[1, 4, 0], [2, 3, 12]]), np.array([[5.0, 1, 0], [3, 4, 2]]))


def _rated(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """The toy's dense training matrix over its rated rows, and the supports over them."""
    rated = np.flatnonzero(data.counts > 0)
    return data.matrix.toarray().astype(np.float64)[:, rated], SUPPORTS.matrix(13).toarray()[
        :, rated
    ]


def test_gf_cf_is_the_linear_filter_plus_the_ideal_low_pass(toy_training: TrainingData) -> None:
    r, x = _rated(toy_training)
    users, items = r.sum(1), r.sum(0)
    norm = r / np.sqrt(users)[:, None] / np.sqrt(items)[None, :]  # D_U^-1/2 R D_I^-1/2
    gf = GfCf(toy_training)
    linear = x @ norm.T @ norm
    got = gf.score(SUPPORTS, {"alpha": 0.0, "rank": 0})
    np.testing.assert_allclose(got[:, 1:], linear, atol=1e-12)
    assert (got[:, 0] == 0).all()
    # The top 4 right singular vectors (the 4th and 5th singular values are apart).
    v = np.linalg.svd(norm)[2][:4].T
    ideal = x @ np.diag(items**-0.5) @ v @ v.T @ np.diag(items**0.5)
    got = gf.score(SUPPORTS, {"alpha": 0.3, "rank": 4})
    np.testing.assert_allclose(got[:, 1:], linear + 0.3 * ideal, atol=1e-10)


def test_rp3beta_is_the_popularity_discounted_walk(toy_training: TrainingData) -> None:
    r, x = _rated(toy_training)
    alpha, beta, k = 0.8, 0.3, 3
    p_ui = r / r.sum(1, keepdims=True)
    p_iu = r.T / r.T.sum(1, keepdims=True)
    w = (p_iu**alpha) @ (p_ui**alpha) * r.sum(0) ** -beta
    np.fill_diagonal(w, 0.0)
    ranked = -np.sort(-w, axis=1)
    assert (ranked[:, k - 1] > ranked[:, k]).all()  # no tie decides who is kept
    w[w < ranked[:, k - 1 : k]] = 0.0
    w /= w.sum(1, keepdims=True)
    rp3 = Rp3Beta(toy_training)
    most = {"alpha": alpha, "beta": beta, "neighbours": max(rp3.NEIGHBOURS)}
    first = rp3.score(SUPPORTS, most)
    got = rp3.score(SUPPORTS, {"alpha": alpha, "beta": beta, "neighbours": k})
    np.testing.assert_allclose(got[:, 1:], x @ w, atol=1e-7)  # neighbours kept in float32
    # Rows are L1-normalised: each support item hands out a weight of 1. Scoring again with
    # every neighbour gives the same scores (the neighbour cache is never written to).
    np.testing.assert_allclose(got.sum(1), x.sum(1), rtol=1e-6)
    np.testing.assert_array_equal(rp3.score(SUPPORTS, most), first)


def test_edlae_is_ease_with_a_dropout_emphasised_diagonal(toy_training: TrainingData) -> None:
    r, x = _rated(toy_training)
    gram = r.T @ r

    def closed_form(p: float, l2: float) -> np.ndarray:
        p_inv = np.linalg.inv(gram + np.diag(p / (1 - p) * np.diag(gram)) + l2 * np.eye(len(gram)))
        b = np.eye(len(gram)) - p_inv / np.diag(p_inv)
        np.fill_diagonal(b, 0.0)
        return x @ b

    edlae = Edlae(toy_training)
    for p in edlae.DROPOUTS:
        got = edlae.score(SUPPORTS, {"dropout": p, "l2": 7.0})
        np.testing.assert_allclose(got[:, 1:], closed_form(p, 7.0), atol=1e-9)
    # p = 0 is EASE.
    np.testing.assert_allclose(
        Ease(toy_training).score(SUPPORTS, {"l2": 7.0})[:, 1:], closed_form(0.0, 7.0), atol=1e-9
    )
    # Products kept for the last supports never leak into other supports' scores.
    other = Supports(np.array([[5, 6, 7]]), np.ones((1, 3)))
    setting = {"dropout": edlae.DROPOUTS[0], "l2": 7.0}
    fresh = Edlae(toy_training).score(other, setting)
    np.testing.assert_array_equal(edlae.score(other, setting), fresh)


def test_the_ease_inverse_is_symmetric_to_the_bit() -> None:
    """EASE and EDLAE score with ``P``'s transpose, ``P``'s numbers in row order (a copy per
    score cost seconds): that is ``P`` only while torch's inverse fills both triangles from
    one. A Gram matrix of 300 items, large enough for LAPACK's blocked code paths."""
    rng = np.random.default_rng(0)
    x = (rng.random((400, 300)) < 0.05).astype(np.float64)
    gram = torch.from_numpy(x.T @ x)
    for p, l2 in ((0.0, 5.0), (0.9, 30.0)):
        inverse = edlae_inverse(gram, p, l2).numpy()
        np.testing.assert_array_equal(inverse, inverse.T)
    data = TrainingData.build(
        pd.DataFrame(
            [(u, int(i) + 1, 4.0) for u, i in zip(*np.nonzero(x), strict=True)],
            columns=["user_id", "item_id", "rating"],
        ),
        {i: i for i in range(1, 301)},
        301,
        sparse.csr_matrix(np.eye(301)),
    )
    supports = Supports(np.array([[1, 2, 3], [4, 5, 0]]), np.ones((2, 3)))
    ease = Ease(data)
    rated = np.flatnonzero(data.counts > 0)
    dense = supports.matrix(301).toarray()[:, rated]
    p_inv = np.linalg.inv(data.matrix[:, rated].T.toarray() @ data.matrix[:, rated].toarray()
                          + 5.0 * np.eye(len(rated)))  # fmt: skip
    want = dense - (dense @ p_inv) / np.diag(p_inv)
    np.testing.assert_allclose(ease.score(supports, {"l2": 5.0})[:, rated], want, atol=1e-9)


def _planted() -> tuple[TrainingData, np.ndarray]:
    """40 rated items whose counts follow their content (log(1 + count) linear in it), and 6
    unrated ones; returns the data and the planted log-popularity of every row."""
    rng = np.random.default_rng(3)
    n_rows, rated = 47, np.arange(1, 41)
    content = (rng.random((n_rows, 8)) < 0.4).astype(np.float64)
    planted = 1.0 + content @ np.array([1.5, -0.5, 0.8, 0.0, 1.0, -0.3, 0.4, 0.6])
    counts = np.maximum(np.round(np.expm1(planted[rated])), 1).astype(int)
    frame = pd.DataFrame(
        [(u, int(i), 4.0) for i, c in zip(rated, counts, strict=True) for u in range(c)],
        columns=["user_id", "item_id", "rating"],
    )
    data = TrainingData.build(
        frame, {i: i for i in range(1, n_rows)}, n_rows, sparse.csr_matrix(content)
    )
    return data, planted


class _LightPenalties(ContentPrior):
    ALPHAS = (0.1, 1.0, 30.0)


def test_content_prior_is_a_ridge_with_leave_one_out_for_rated_items() -> None:
    data, planted = _planted()
    prior = _LightPenalties(data)
    seen = np.flatnonzero(data.counts > 0)
    unseen = np.flatnonzero(data.counts == 0)
    x, y = data.content.toarray(), np.log1p(data.counts)
    for alpha in prior.ALPHAS:
        scores = prior.score(SUPPORTS, {"alpha": alpha})
        assert scores.shape == (2, 47) and (scores[0] == scores[1]).all()
        # New items: the ridge fitted on every rated item.
        full = Ridge(alpha=alpha).fit(x[seen], y[seen])
        np.testing.assert_allclose(scores[0, unseen], full.predict(x[unseen]), atol=1e-8)
        # Rated items: their prediction by the ridge fitted without them.
        for i in seen[::7]:
            rest = seen[seen != i]
            loo = Ridge(alpha=alpha).fit(x[rest], y[rest]).predict(x[[i]])[0]
            assert scores[0, i] == pytest.approx(loo, abs=1e-8)
    # The planted relation is recovered: new items' priors track their planted popularity.
    best = prior.score(SUPPORTS, {"alpha": prior.ALPHAS[0]})[0]
    assert np.corrcoef(best[unseen], planted[unseen])[0, 1] > 0.99
    assert np.abs(best[unseen] - planted[unseen]).max() < 0.1


def test_content_prior_knn_adds_weighted_content_knn(toy_training: TrainingData) -> None:
    prior, knn = ContentPrior(toy_training), ContentKnn(toy_training)
    both = ContentPriorKnn(prior, knn)
    setting = both.grid()[-1]
    want = prior.score(SUPPORTS, {"alpha": setting["alpha"]}) + setting["weight"] * knn.score(
        SUPPORTS, {}
    )
    np.testing.assert_allclose(both.score(SUPPORTS, setting), want)


class _SmallDae(MultDae):
    HIDDEN = (16, 8)
    EPOCHS = (1, 15)
    BATCH = 16
    LR = 1e-2


def test_mult_dae_folds_in_what_it_learned() -> None:
    """Two groups of users, each rating within its own half of the catalogue: a support in
    one half ranks that half's other items above every item of the other half."""
    rng = np.random.default_rng(0)
    rows = [
        (u, int(i), 4.0)
        for u in range(80)
        for i in rng.choice(np.arange(1, 7) + 6 * (u % 2), size=4, replace=False)
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])
    data = TrainingData.build(
        frame, {i: i for i in range(1, 13)}, 13, sparse.csr_matrix(np.eye(13))
    )
    with torch.no_grad():  # training does not depend on the caller's grad mode
        dae = _SmallDae(data, seed=0)
    support = Supports(np.array([[1, 2], [7, 8]]), np.full((2, 2), 4.0))
    scores = dae.score(support, {"epochs": 15})
    assert scores.shape == (2, 13) and np.isfinite(scores).all() and (scores[:, 0] == 0).all()
    assert scores[0, 3:7].min() > scores[0, 7:13].max()
    assert scores[1, 9:13].min() > scores[1, 1:7].max()
    # The grid's epochs are different weights.
    assert not np.allclose(dae.score(support, {"epochs": 1}), scores)


def test_every_baseline_scores_every_row(toy_training: TrainingData) -> None:
    seconds: dict[str, float] = {}
    rankers = [
        *catalogue_baselines(toy_training, 0, seconds),
        *shelf_baselines(toy_training, 0, seconds),
    ]
    names = {r.name for r in rankers}
    assert {"gf_cf", "rp3beta", "edlae", "mult_dae", "content_prior", "content_prior_knn"} <= names
    assert set(seconds) <= names and all(s >= 0 for s in seconds.values())
    for ranker in rankers:
        grid = ranker.grid()
        assert grid and all(isinstance(s, dict) for s in grid)
        for setting in (grid[0], grid[-1]):
            scores = ranker.score(SUPPORTS, setting)
            assert scores.shape == (2, 13), ranker.name
            assert np.isfinite(scores).all(), ranker.name


def test_dense_anchors_are_left_out_where_memory_cannot_hold_them(
    toy_training: TrainingData,
) -> None:
    """A line-up fits a ranker with dense item-item arrays only where the budget holds it
    (ml-25m's 55k items need about 24 GB per array); the others are fitted, and each one left
    out is named with what it needed."""
    gf_cf, rp3beta = dense_bytes("gf_cf", toy_training), dense_bytes("rp3beta", toy_training)
    # What GF-CF keeps, plus RP3beta's transient walk: room for those two, not for EASE.
    room = gf_cf[0] + rp3beta[1]
    assert sum(dense_bytes("ease", toy_training)) > room > 0
    budget = MemoryBudget(room)
    catalogue = catalogue_baselines(toy_training, 0, budget=budget)
    shelf = shelf_baselines(toy_training, 0, budget=budget)
    assert [r.name for r in catalogue] == [
        "popularity", "item_mean", "gf_cf", "rp3beta", "als", "item_knn", "mult_dae", "random",
    ]  # fmt: skip
    assert [r.name for r in shelf] == ["random"]
    assert sorted(budget.skipped) == [
        "content_knn", "content_prior", "content_prior_knn", "ease", "edlae",
    ]  # fmt: skip
    assert budget.skipped["ease"].startswith("skipped: its dense item-item arrays need about")
    assert budget.skipped["content_prior_knn"] == (
        "skipped: content_knn and content_prior did not fit in memory"
    )
    assert budget.resident == gf_cf[0] and budget.transient == rp3beta[1]
    roomy = MemoryBudget(10**12)
    names = [r.name for r in catalogue_baselines(toy_training, 0, budget=roomy)]
    assert "ease" in names and "edlae" in names and roomy.skipped == {}
    # 55k rated items, as ml-25m's: EASE alone needs far more than this machine has.
    rated = 55_148
    resident, transient = DENSE_ARRAYS["ease"][:2]
    assert (resident + transient) * rated * rated * 8 > 100e9

"""The catalogue protocol: ranking metrics and the calibration error by hand, the shared ranking
order and its floor, support draws, the baselines against their definitions, the predicted
ratings' measures on hand-made cases, and that rated items never reach a list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import sparse

from melu import checkpoint as ckpt
from melu.config import RatingScale
from melu.data import ColdStartData
from melu.evaluation import catalogue as C
from melu.evaluation.metrics import (
    calibration_error,
    coverage,
    popularity_percentile,
    ranking_metrics,
)
from melu.evaluation.rankers import Ease, ItemKnn, Popularity, Supports, TrainingData
from melu.ranking import hits_in_top, hits_in_top_blends, rank, rank_top, top_k_row
from melu.scoring import CatalogueScorer

pytestmark = pytest.mark.usefixtures("one_thread")


# --- metrics by hand ----------------------------------------------------------------------------


def test_ranking_metrics_by_hand() -> None:
    hits = np.zeros((3, 20), dtype=bool)
    hits[0, [0, 2]] = True  # 2 relevant, both in the top 3
    hits[1, [12]] = True  # 4 relevant, one at rank 13
    # user 2: 1 relevant, ranked 40th (outside the list)
    out = ranking_metrics(hits, np.array([2, 4, 1]), np.array([1, 13, 40]))
    np.testing.assert_allclose(out["recall@10"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out["recall@20"], [1.0, 0.25, 0.0])
    ideal0 = 1 + 1 / np.log2(3)
    np.testing.assert_allclose(out["ndcg@10"], [(1 + 1 / np.log2(4)) / ideal0, 0.0, 0.0])
    np.testing.assert_allclose(out["hitrate@10"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out["mrr"], [1.0, 1 / 13, 1 / 40])

    # Recall divides by min(k, relevant): 12 relevant, 5 of them in the top 10 -> 0.5.
    many = np.zeros((1, 20), dtype=bool)
    many[0, :5] = True
    assert ranking_metrics(many, np.array([12]), np.array([1]))["recall@10"][0] == 0.5
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(many, np.array([0]), np.array([1]))


def test_calibration_error_by_hand() -> None:
    # Half-star bins of the prediction: 1.1 and 1.2 fall in the 1.0 bin (mean 1.15 against
    # ratings 1 and 2: 0.35 off), 3.0 and 3.1 in the 3.0 bin (3.05 against 3 and 5: 0.95 off);
    # each bin holds half the ratings.
    predicted = np.array([1.1, 1.2, 3.0, 3.1])
    actual = np.array([1.0, 2.0, 3.0, 5.0])
    assert calibration_error(predicted, actual) == pytest.approx(0.5 * 0.35 + 0.5 * 0.95)
    # Errors inside a bin cancel (calibrated, however wrong each rating is); MAE would not.
    assert calibration_error(np.array([3.0, 3.0]), np.array([1.0, 5.0])) == 0.0
    # One bin per prediction: the mean absolute error.
    assert calibration_error(np.array([1.0, 4.0]), np.array([2.0, 3.5])) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="no ratings"):
        calibration_error(np.array([]), np.array([]))


def test_coverage_and_popularity_percentile() -> None:
    assert coverage(np.array([[1, 2], [2, 3]]), 6) == pytest.approx(0.5)
    counts = np.array([0.0, 10, 20, 20, 40])
    pct = popularity_percentile(counts, np.array([1, 2, 3, 4]))
    np.testing.assert_allclose(pct, [0, 12.5, 50, 50, 87.5])


# --- the one ranking order ----------------------------------------------------------------------


def test_rank_orders_by_score_then_item_and_puts_disallowed_last() -> None:
    scores = torch.tensor([[0.0, 3.0, 1.0, 3.0, float("nan"), 2.0]])
    allowed = torch.tensor([False, True, True, True, True, False])
    order, n = rank(scores, allowed)
    assert int(n[0]) == 4
    assert order[0, :4].tolist() == [1, 3, 2, 4]  # 3.0 tie: row 1 first; NaN last
    assert set(order[0, 4:].tolist()) == {0, 5}


def test_top_k_row_is_the_batched_order() -> None:
    rng = np.random.default_rng(0)
    # Coarse scores so that many items tie, as identical ratings do.
    scores = torch.from_numpy(rng.integers(0, 5, size=(4, 300)).astype(np.float64))
    allowed = torch.from_numpy(rng.random((4, 300)) > 0.2)
    allowed[:, 0] = False
    order, n = rank(scores, allowed)
    for b in range(4):
        pool = torch.nonzero(allowed[b]).squeeze(1)
        for k in (1, 10, 37, 400):
            expected = order[b, : min(k, int(n[b]))]
            assert top_k_row(scores[b], pool, k).tolist() == expected.tolist()


def test_rank_top_is_the_first_k_of_rank() -> None:
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(rng.integers(0, 4, size=(6, 200)).astype(np.float64))
    scores[rng.random((6, 200)) < 0.3] = float("nan")
    allowed = torch.from_numpy(rng.random((6, 200)) > 0.5)
    order, _ = rank(scores, allowed)
    for k in (1, 10, 20, int(allowed.sum(1).min())):
        assert rank_top(scores, allowed, k).tolist() == order[:, :k].tolist()
    with pytest.raises(ValueError, match="allowed"):
        rank_top(scores, allowed, 200)
    # Users whose k-th best is not tied (most, in practice) beside users whose ties must be
    # broken by row order: the two take different paths.
    mixed = scores.clone()
    mixed[::2] = torch.from_numpy(rng.random((3, 200)))
    order, _ = rank(mixed, allowed)
    for k in (1, 10, 20):
        assert rank_top(mixed, allowed, k).tolist() == order[:, :k].tolist()


def test_blended_hits_are_each_blends_own_list() -> None:
    """hits_in_top_blends counts, for every weight, the relevant rows of the list that ranking
    the blend in full gives: with and without the floor, users short of rows above it, ties
    on the list's last score (integer scores), few candidates, and non-finite scores."""
    rng = np.random.default_rng(3)
    weights = (0.0, 1 / 32, 3 / 16, 0.5, 1.0, 2.0)

    def expected(first: torch.Tensor, second: torch.Tensor, *rest: Any) -> list[list[int]]:
        return [hits_in_top(first + w * second if w else first, *rest).tolist() for w in weights]

    for case in range(6):
        shape = (12, 300)
        if case % 2:  # ties everywhere: the list's end falls inside runs of equal scores
            first = torch.from_numpy(rng.integers(0, 5, size=shape).astype(np.float64))
            second = torch.from_numpy(rng.integers(0, 3, size=shape).astype(np.float64))
        else:
            first = torch.from_numpy(rng.standard_normal(shape))
            second = torch.from_numpy(rng.standard_normal(shape))
        allowed = torch.from_numpy(rng.random(shape) > 0.2)
        allowed[0, 12:] = False  # a user with barely more candidates than the list
        allowed[1, 5:] = False  # and one with fewer
        relevant = allowed & torch.from_numpy(rng.random(shape) < 0.1)
        above = torch.from_numpy(rng.random(shape) > 0.9)  # most users short of 10 above it
        above[2:6] = True
        if case >= 4:  # a NaN and an infinite score: ranked in full, as rank() does
            first[3, 7], second[4, 9] = float("nan"), float("inf")
        for floor in (None, above):
            for k in (1, 10):
                got = hits_in_top_blends(first, second, weights, allowed, relevant, k, floor)
                assert got.tolist() == expected(first, second, allowed, relevant, k, floor)


def test_judge_keeps_the_floor(melu_data: ColdStartData) -> None:
    """A row below the user's own mean never enters the top 10 while 10 rows clear it, however
    high its score; first-hit positions (MRR) count the rows above the floor first."""
    counts = C.training_counts(melu_data)
    cases = C.build_cases(melu_data, "new_user", 5, seed=0).subset(np.arange(30))
    columns = np.flatnonzero(cases.candidates)
    allowed = cases.allowed()
    liked = cases.relevant("liked")
    rng = np.random.default_rng(0)
    scores = rng.random((len(cases), len(counts)))
    above = np.zeros_like(scores, dtype=bool)
    best_below = np.zeros(len(cases), dtype=np.int64)
    for i in range(len(cases)):
        free = columns[allowed[i, columns] & ~liked[i, columns]]
        clear = rng.choice(free, size=10, replace=False)
        above[i, clear] = True
        # The best-scored allowed row is below the floor, and so is every liked row.
        best_below[i] = next(r for r in free if r not in set(clear.tolist()))
        scores[i, best_below[i]] = 10.0
    result = C.judge(cases, scores, counts, above)
    for i in range(len(cases)):
        assert set(result.top[i].tolist()) == set(np.flatnonzero(above[i]).tolist())
        assert best_below[i] not in result.top[i]
    # Without the floor the best-scored row leads every list.
    plain = C.judge(cases, scores, counts)
    assert (plain.top[:, 0] == best_below).all()
    # Liked rows all lie below the floor: the first hit comes after the 10 rows above it.
    members = result.members["liked"]
    assert (result.per_user["liked"]["mrr"] <= 1 / 11).all() and len(members) > 0
    assert (result.per_user["liked"]["recall@10"] == 0).all()
    # The measures are those of rank()'s order with the floor, sorting every candidate.
    order, _ = rank(
        torch.from_numpy(scores[:, columns]),
        torch.from_numpy(allowed[:, columns]),
        torch.from_numpy(above[:, columns]),
    )
    ranked = np.take_along_axis(liked[:, columns], order.numpy(), axis=1)[members]
    np.testing.assert_array_equal(result.per_user["liked"]["mrr"], 1.0 / (ranked.argmax(1) + 1.0))


def _tiny_cases(candidates: np.ndarray) -> C.Cases:
    """Two users over rows 1..6: supports and held-out ratings chosen by hand."""
    return C.Cases(
        scenario="new_user",
        protocol="catalogue",
        size=4,
        user_ids=np.array([7, 8]),
        user_rows=np.array([1, 2]),
        supports=Supports(
            np.array([[1, 2, 3, 4], [1, 2, 0, 0]]),
            np.array([[5.0, 5.0, 1.0, 3.0], [5.0, 4.0, 0, 0]]),
        ),
        heldout_rows=np.array([[5, 6], [3, 0]]),
        heldout_ratings=np.array([[4.0, 2.0], [1.0, 0.0]]),
        candidates=candidates,
    )


def test_predicted_ratings_measures_by_hand() -> None:
    scale = RatingScale(1.0, 5.0, 1.0)
    cases = _tiny_cases(np.array([False, True, True, True, True, True, False]))
    #                      row: 0    1    2    3    4    5    6
    ratings = np.array(
        [
            [0.0, 4.0, 3.0, 3.5, 2.0, 4.5, 9.0],  # user 7: 5-stars at 4.0 and 3.0, 1-star 3.5
            [0.0, 4.0, 4.0, 0.2, 3.0, 3.0, 3.0],
        ]
    )
    fit = C.rating_fit(cases, ratings, scale)
    # User 7: row 6 is not a candidate (the model knows nothing of it); row 5: 4.5 vs 4.
    # User 8: row 3 predicted 0.2, clipped to the scale's 1.0, rated 1.
    np.testing.assert_allclose(fit.mae, [0.5, 0.0])
    np.testing.assert_allclose(fit.predicted, [4.5, 1.0])
    np.testing.assert_allclose(fit.actual, [4.0, 1.0])
    assert fit.calibration_error() == pytest.approx(0.25)
    # (5-star, 1-star) support pairs: user 7 has two, one ordered right (4.0 > 3.5); user 8
    # rated nothing 1 star.
    assert C.support_pairs(cases, ratings, scale) == (1, 2)
    # On half stars, 1 star or less is the bottom: 0.5 and 1.0 both count.
    half = RatingScale(0.5, 5.0, 0.5)
    cases.supports.ratings[0, 3] = 0.5
    assert C.support_pairs(cases, ratings, half) == (3, 4)
    top = np.array([[5, 1], [4, 5]])
    above = ratings >= 3.5
    assert C.share_above(top, above) == pytest.approx(0.5)


# --- support draws ------------------------------------------------------------------------------


def test_cases_draw_seeded_supports_and_hold_out_the_rest(melu_data: ColdStartData) -> None:
    cases = C.build_cases(melu_data, "new_user", 5, seed=0)
    again = C.build_cases(melu_data, "new_user", 5, seed=0)
    other = C.build_cases(melu_data, "new_user", 5, seed=1)
    np.testing.assert_array_equal(cases.supports.rows, again.supports.rows)
    assert not np.array_equal(cases.supports.rows, other.supports.rows)
    assert cases.supports.rows.shape == (len(cases), 5) and len(cases) > 600
    ratings = melu_data.ratings[melu_data.ratings["split"] == "new_user"]
    for i in (0, 17, len(cases) - 1):
        history = ratings[ratings["user_id"] == cases.user_ids[i]]
        rows = set(history["item_id"].map(melu_data.catalogue.rows))
        support = set(cases.supports.rows[i].tolist())
        held = set(cases.heldout_rows[i][cases.heldout_rows[i] > 0].tolist())
        assert support | held == rows and not support & held
        assert melu_data.user_rows[int(cases.user_ids[i])] == cases.user_rows[i]
    # Relevant items are held out, candidates, and (liked) rated >= 4.
    liked = cases.relevant("liked")
    assert not liked[np.arange(len(cases))[:, None], cases.supports.rows].any()
    assert liked.sum() < cases.relevant("watched").sum()


def test_shelf_draws_new_items_only(melu_data: ColdStartData) -> None:
    cases = C.build_cases(melu_data, "new_item", 5, seed=0, protocol="shelf")
    counts = C.training_counts(melu_data)
    assert (counts[cases.supports.rows] == 0).all()
    assert (counts[cases.candidates] == 0).all() and cases.candidates.sum() == 740
    held = cases.heldout_rows[cases.heldout_rows > 0]
    assert (counts[held] == 0).all()


# --- baselines against their definitions --------------------------------------------------------


def test_ease_scores_match_the_closed_form(toy_training: TrainingData) -> None:
    data = toy_training
    x = data.matrix.toarray()[:, 1:]
    l2 = 7.0
    p = np.linalg.inv(x.T @ x + l2 * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    supports = Supports(np.array([[1, 4, 0], [2, 3, 12]]), np.array([[5.0, 1, 0], [3, 4, 2]]))
    want = supports.matrix(13).toarray()[:, 1:] @ b
    got = Ease(data).score(supports, {"l2": l2})
    np.testing.assert_allclose(got[:, 1:], want, atol=1e-9)
    assert (got[:, 0] == 0).all()


def test_item_knn_and_popularity_use_the_training_matrix(toy_training: TrainingData) -> None:
    data = toy_training
    supports = Supports(np.array([[1, 2]]), np.array([[5.0, 4.0]]))
    np.testing.assert_array_equal(Popularity(data).score(supports, {})[0], data.counts)
    knn = ItemKnn(data).score(supports, {"neighbours": 100})
    norm = data.matrix.toarray() / np.maximum(np.linalg.norm(data.matrix.toarray(), axis=0), 1e-12)
    cosine = norm.T @ norm
    want = cosine[1] + cosine[2]
    # implicit drops each item's similarity to itself; compare elsewhere.
    mask = np.ones(13, dtype=bool)
    mask[[0, 1, 2]] = False
    np.testing.assert_allclose(knn[0, mask], want[mask], rtol=1e-5)


def test_tune_picks_the_best_setting_on_validation(melu_data: ColdStartData) -> None:
    counts = C.training_counts(melu_data)
    cases = C.build_cases(melu_data, "validation", 5, seed=0)
    cases = cases.subset(np.arange(80))
    content = sparse.csr_matrix((len(counts), 1))
    data = TrainingData.build(
        melu_data.train_ratings, melu_data.catalogue.rows, len(counts), content
    )
    ease = Ease(data)
    other = C.build_cases(melu_data, "validation", 10, seed=0).subset(np.arange(80))
    chosen, tried = C.tune(ease, {5: cases, 10: other})
    for size, by_size in ((5, cases), (10, other)):
        assert chosen[size] == max(tried[size], key=lambda t: t[1])[0]
        assert [s for s, _ in tried[size]] == ease.grid()
        values = [v for _, v in tried[size]]
        assert max(values) > min(values)
        # Each value is the setting's Recall@10 scored on its own.
        setting, value = tried[size][2]
        assert value == C.liked_recall(by_size, Ease(data).score(by_size.supports, setting))


def _full_sort_metrics(cases: C.Cases, scores: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """The reference: every candidate sorted by :func:`rank`, hits and first hit read off."""
    columns = np.flatnonzero(cases.candidates)
    order, _ = rank(
        torch.from_numpy(scores[:, columns]), torch.from_numpy(cases.allowed()[:, columns])
    )
    order_np = columns[order.numpy()]
    out = {}
    for relevance in C.RELEVANCE:
        rel = cases.relevant(relevance)
        keep = rel.sum(1) > 0
        ranked = np.take_along_axis(rel[keep], order_np[keep], axis=1)
        first = ranked.argmax(1) + 1.0
        out[relevance] = ranking_metrics(ranked[:, :20], rel.sum(1)[keep], first)
    return out


def test_judge_and_tuning_measure_rank_order(melu_data: ColdStartData) -> None:
    """judge (the first 20 rows and the first hit) and tuning's Recall@10 give what sorting
    every candidate with rank() gives, exactly: ties, NaN and all."""
    counts = C.training_counts(melu_data)
    catalogue = C.build_cases(melu_data, "validation", 5, seed=0).subset(np.arange(120))
    shelf = C.build_cases(melu_data, "new_item", 5, seed=0, protocol="shelf")
    rng = np.random.default_rng(0)
    shape = (120, len(counts))
    popular = np.broadcast_to(counts + rng.integers(0, 2, size=len(counts)), shape).copy()
    coarse = rng.integers(0, 3, size=shape).astype(np.float64)  # ties everywhere
    holes = rng.random(shape)
    holes[rng.random(shape) < 0.5] = np.nan
    for cases, scores in (
        *((catalogue, s) for s in (popular, coarse, holes, np.zeros(shape))),
        (shelf.subset(np.arange(120)), coarse),
    ):
        result = C.judge(cases, scores, counts)
        want = _full_sort_metrics(cases, scores)
        for relevance in C.RELEVANCE:
            for metric, values in want[relevance].items():
                np.testing.assert_array_equal(result.per_user[relevance][metric], values)
        assert C.liked_recall(cases, scores) == want["liked"]["recall@10"].mean()


# --- what is served is what is evaluated --------------------------------------------------------


def test_model_lists_never_hold_a_rated_item(
    small_checkpoint: Path, melu_data: ColdStartData
) -> None:
    ck = ckpt.load(small_checkpoint)
    scorer = _scorer(ck, melu_data)
    cases = C.build_cases(melu_data, "new_user", 5, seed=0).subset(np.arange(40))
    counts = C.training_counts(melu_data)
    lists = C.model_scores(scorer, melu_data.user_table, cases.user_rows, cases.supports)
    assert lists.above_floor is not None  # the default model keeps the floor
    # Give every rated item the best score, above the floor: the ranking must still leave it
    # out.
    scores, above = lists.scores.copy(), lists.above_floor.copy()
    np.put_along_axis(scores, cases.supports.rows, 1e9, axis=1)
    np.put_along_axis(above, cases.supports.rows, True, axis=1)
    result = C.judge(cases, scores, counts, above)
    for i in range(len(cases)):
        assert not set(result.top[i].tolist()) & set(cases.supports.rows[i].tolist())
        assert cases.candidates[result.top[i]].all()


def _scorer(ck: ckpt.Checkpoint, data: ColdStartData) -> CatalogueScorer:
    return CatalogueScorer(ck.learner("cpu"), data.catalogue.table, data.catalogue.recommendable)


def test_genre_cases_follow_their_definition(melu_data: ColdStartData) -> None:
    counts = C.training_counts(melu_data)
    genres = C.item_genres(melu_data)
    cases = C.genre_cases(melu_data, counts)
    assert len(cases) == 10 and len({c.loved for c in cases}) == 10
    for case in cases:
        rows, ratings = case.supports.rows[0], case.supports.ratings[0]
        assert ratings.tolist() == [5.0] * 5 + [1.0] * 3
        assert all(case.loved in genres[r] and case.far not in genres[r] for r in rows[:5])
        assert all(case.far in genres[r] and case.loved not in genres[r] for r in rows[5:])


def test_genre_cases_use_the_datas_scale(latest_small_data: ColdStartData) -> None:
    """Half stars: the synthetic user loves at the scale's top (5.0) and hates at its bottom
    (0.5), and every rating is one the model was trained on."""
    scale = latest_small_data.scale
    assert scale == RatingScale(0.5, 5.0, 0.5)
    cases = C.genre_cases(latest_small_data, C.training_counts(latest_small_data))
    assert len(cases) == 10
    for case in cases:
        ratings = case.supports.ratings[0].tolist()
        assert ratings == [5.0] * (len(ratings) - 3) + [0.5] * 3
        assert all(scale.contains(r) for r in ratings)


def test_evaluation_ranks_exactly_as_the_service_serves(
    small_checkpoint: Path, melu_data: ColdStartData
) -> None:
    from service.recommender import Recommender
    from service.schemas import RecommendRequest
    from service.settings import Settings

    ck = ckpt.load(small_checkpoint)
    recommender = Recommender(ck, torch.device("cpu"), local_steps=None)
    settings = Settings(checkpoint=small_checkpoint)
    cases = C.build_cases(melu_data, "new_user", 5, seed=0).subset(np.arange(12))
    # Served: one request per user, without demographics, all ranked in one batch.
    item_ids = melu_data.catalogue.item_ids
    jobs = []
    for i in range(len(cases)):
        ratings = [
            {"item_id": int(item_ids[r]), "rating": float(v)}
            for r, v in zip(cases.supports.rows[i], cases.supports.ratings[i], strict=True)
        ]
        request = RecommendRequest.model_validate({"ratings": ratings, "k": 10})
        jobs.append(recommender.recommend_job(request, settings))
    served = [[it.row for it in outcome.items] for outcome in recommender.run(jobs)]
    # Evaluated: the same supports and (unknown) users through the catalogue protocol, with
    # the model's floor.
    unknown = np.zeros(len(cases), dtype=np.int64)
    lists = C.model_scores(_scorer(ck, melu_data), melu_data.user_table, unknown, cases.supports)
    counts = C.training_counts(melu_data)
    result = C.judge(cases, lists.scores, counts, lists.above_floor)
    for i in range(len(cases)):
        # The service may also list items without training ratings; compare on candidates.
        listed = [r for r in served[i] if cases.candidates[r]]
        assert listed == result.top[i][: len(listed)].tolist()
        assert len(listed) >= 5

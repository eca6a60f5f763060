"""Encoders with the fields a dataset has, the CSV releases' tags, and the tag genome."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melu.data import ColdStartData
from melu.evaluation.rankers import TrainingData
from melu.features import (
    MAX_TAGS_PER_ITEM,
    FeatureEncoder,
    GenomeBlock,
    content_matrix,
    item_tags,
)

TAGS = pd.DataFrame(
    {
        "user_id": [1, 2, 3, 1, 2, 9, 9],
        "item_id": [10, 10, 10, 20, 20, 30, 10],
        "tag": ["funny", "funny", "dark", "dark", "pixar", "funny", "late"],
        "timestamp": [100, 101, 102, 103, 104, 500, 501],
    }
)


def test_item_tags_keep_the_top_tags_known_at_the_cutoff() -> None:
    ids = pd.Series([30, 20, 10, 40])
    # Up to t=200: funny 2, dark 2, pixar 1; the top 2 are dark and funny (ties by name).
    assert item_tags(TAGS, ids, until=200, top=2) == [[], ["dark"], ["funny", "dark"], []]
    # Item 30's and the "late" tag come after the cutoff; without one they count.
    assert item_tags(TAGS, ids, until=None, top=10) == [
        ["funny"], ["dark", "pixar"], ["funny", "dark", "late"], []
    ]  # fmt: skip


def test_item_tags_cap_per_item() -> None:
    many = pd.DataFrame(
        {"user_id": 1, "item_id": 5, "tag": [f"t{i:02d}" for i in range(30)], "timestamp": 0}
    )
    (tags,) = item_tags(many, pd.Series([5]), until=None, top=100)
    assert tags == [f"t{i:02d}" for i in range(MAX_TAGS_PER_ITEM)]


def test_encoder_without_user_fields_round_trips(latest_small_data: ColdStartData) -> None:
    enc = latest_small_data.encoder
    assert enc.user_fields == () and enc.multi_fields == ("genre", "director", "actor", "tag")
    again = FeatureEncoder.from_dict(enc.to_dict())
    assert again == enc and again.item_specs() == enc.item_specs()
    assert enc.encode_user({"gender": "F"}) == []
    assert enc.ignored_user_values({"gender": "F", "age": None}) == ["gender"]
    assert enc.unknown_user_values({"gender": "F"}) == []
    # Tags are content: items sharing one share a column of the table.
    spec = next(s for s in enc.item_specs() if s.name == "tag")
    table = latest_small_data.catalogue.table
    tagged = (table[:, spec.start : spec.start + spec.width] > 0).any(dim=1)
    assert 100 < int(tagged.sum()) < len(table) // 2


def test_melu_encoder_keeps_its_layout(melu_data: ColdStartData) -> None:
    enc = melu_data.encoder
    assert enc.user_fields == ("gender", "age", "occupation", "zip")
    assert [s.name for s in enc.item_specs()] == [
        "item", "rate", "year", "genre", "director", "actor",
    ]  # fmt: skip
    assert tuple(melu_data.user_table.shape) == (6_041, 4)


def test_genome_block() -> None:
    catalogue_ids = np.array([-1, 3, 5, 8, 13])
    scores = np.array([[0.9, 0.1], [0.2, 0.2], [0.1, 0.9]], dtype=np.float32)
    block = GenomeBlock.align(("a", "b"), np.array([5, 6, 13]), scores, catalogue_ids)
    assert block.rows.tolist() == [2, 4]  # id 6 is not in the catalogue
    dense = block.dense(5)
    np.testing.assert_array_equal(dense[[0, 1, 3]], 0)
    np.testing.assert_array_equal(dense[[2, 4]], scores[[0, 2]])
    vectors = block.vectors(5).toarray()
    np.testing.assert_allclose(np.linalg.norm(vectors[[2, 4]], axis=1), 1.0, rtol=1e-6)
    assert vectors[2] @ vectors[4] == pytest.approx(-1.0)  # opposite once the mean is out
    assert not vectors[[0, 1, 3]].any()


def test_the_genome_is_content_for_the_shelf(toy_training: TrainingData) -> None:
    """Where a release has the tag genome (ml-25m, ml-32m), the shelf's content kNN and content
    prior read it beside the features: two films with the same genome and no feature in
    common become similar, a film outside the genome keeps its features' vector, and the
    prior's regression gets the genome's columns."""
    from dataclasses import replace

    from melu.evaluation.anchors import ContentPrior
    from melu.evaluation.rankers import ContentKnn

    # toy_training: identity content, so no two rows share a feature. Rows 1 and 2 get the
    # same genome vector, rows 3 and 4 others; row 5 is outside the genome.
    rng = np.random.default_rng(0)
    scores = rng.random((4, 6)).astype(np.float32)
    scores[1] = scores[0]
    ids = np.arange(13)
    block = GenomeBlock.align(tuple("abcdef"), np.array([1, 2, 3, 4]), scores, ids)
    with_genome = replace(toy_training, genome=block)
    before = ContentKnn(toy_training).similarity()
    after = ContentKnn(with_genome).similarity()
    assert before[1, 2] == pytest.approx(0.0)
    assert after[1, 2] == pytest.approx(0.5)  # the mean of 0 and the genome's cosine of 1
    np.testing.assert_allclose(after[5, 5], 1.0, rtol=1e-6)  # outside: its features alone
    assert after[5, 1] == pytest.approx(0.0)
    assert with_genome.content_columns().shape[1] == 13 + 6
    prior_before = ContentPrior(toy_training).priors[10.0]
    prior_after = ContentPrior(with_genome).priors[10.0]
    assert not np.allclose(prior_before, prior_after)


def test_content_of_the_csv_releases(latest_small_data: ColdStartData) -> None:
    """The baselines' content matrix holds genres, years and tags; the training ratings feed
    the baselines' TrainingData as MeLU's do."""
    data = latest_small_data
    specs = data.encoder.item_specs()
    content = content_matrix(data.catalogue.table, specs)
    widths = {s.name: s.vocab_size for s in specs}
    assert content.shape == (len(data.catalogue.item_ids), sum(widths.values()) - widths["item"])
    tag_cols = content[:, content.shape[1] - widths["tag"] :]
    assert 100 < tag_cols.getnnz(axis=1).astype(bool).sum() < len(data.catalogue)
    training = TrainingData.build(
        data.train_ratings, data.catalogue.rows, len(data.catalogue.item_ids), content
    )
    assert training.matrix.shape == (439, len(data.catalogue.item_ids))
    assert training.matrix.nnz == len(data.train_ratings)
    assert 0.5 <= training.global_mean <= 5.0

"""Cold-start scenarios and tasks: MeLU's real split, synthetic ML-1M data, batching, padding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from melu import movielens
from melu.config import DataConfig, from_dict, to_dict
from melu.data import ColdStartData, prepare_frames
from melu.errors import MeluError
from melu.tasks import COLD_SCENARIOS, SCENARIOS, TaskBatch, TaskSet, select_tasks

# Task counts of MeLU's release under the default config (13..100 ratings per user, 10 queries).
MELU_TASKS = {
    "warm": 2_388,
    "validation": 265,
    "new_user": 668,
    "new_item": 2_863,
    "new_user_new_item": 723,
}


def task_items(data: ColdStartData, name: str) -> set[int]:
    """Raw ids of every item in a scenario's tasks, support and query, padding excluded."""
    batch = data.tasks[name].batch_all
    rows = torch.cat([batch.x_spt[batch.mask_spt], batch.x_qry[batch.mask_qry]]).numpy()
    return set(data.catalogue.item_ids[rows].tolist())


def query_sets(ts: TaskSet) -> list[frozenset[int]]:
    return [frozenset(row) for row in ts.batch_all.x_qry.tolist()]


# --- MeLU's release -------------------------------------------------------------------------------


def test_melu_task_counts(melu_data: ColdStartData) -> None:
    assert {name: len(melu_data.tasks[name]) for name in SCENARIOS} == MELU_TASKS
    warm_users = len(melu_data.tasks["warm"]) + len(melu_data.tasks["validation"])
    assert warm_users == 2_653
    assert len(melu_data.tasks["validation"]) == round(0.1 * warm_users)


@pytest.mark.parametrize("name", SCENARIOS)
def test_melu_task_shapes(melu_data: ColdStartData, name: str) -> None:
    ts = melu_data.tasks[name]
    b = ts.batch_all
    n = len(ts)
    assert b.x_qry.shape == b.y_qry.shape == b.mask_qry.shape == (n, 10)
    assert bool(b.mask_qry.all())
    assert bool((b.x_qry > 0).all())
    sizes = b.mask_spt.sum(dim=1).numpy()
    np.testing.assert_array_equal(sizes, ts.support_sizes)
    assert sizes.min() >= 3 and sizes.max() <= 90
    assert b.x_spt.shape[1] == sizes.max()
    # The mask is a prefix: real entries first, then padding (row 0, rating 0).
    assert bool(((b.x_spt > 0) == b.mask_spt).all())
    assert bool((b.y_spt[~b.mask_spt] == 0).all())
    assert bool(((b.y_spt[b.mask_spt] >= 1) & (b.y_spt[b.mask_spt] <= 5)).all())
    assert bool(((b.y_qry >= 1) & (b.y_qry <= 5)).all())
    # One task per user, and no item both in a task's support and its query.
    assert len(set(ts.user_ids.tolist())) == n
    for spt, mask, qry in zip(b.x_spt.tolist(), b.mask_spt.tolist(), b.x_qry.tolist(), strict=True):
        support = {x for x, m in zip(spt, mask, strict=True) if m}
        assert len(set(qry)) == 10
        assert not support & set(qry)


def test_melu_tasks_match_ratings(melu_data: ColdStartData) -> None:
    """Each task holds exactly its user's ratings of that scenario (when 13..100 of them)."""
    ratings = melu_data.ratings
    rows = melu_data.catalogue.rows
    for name in SCENARIOS:
        ts = melu_data.tasks[name]
        frame = ratings[ratings["split"] == name]
        sizes = frame.groupby("user_id").size()
        assert sorted(sizes[(sizes >= 13) & (sizes <= 100)].index) == sorted(ts.user_ids.tolist())
        b = ts.batch_all
        sample = range(0, len(ts), 97)  # a spread sample keeps this fast
        picked = frame[frame["user_id"].isin(ts.user_ids[list(sample)])]
        by_user = {int(str(u)): g for u, g in picked.groupby("user_id")}
        for t in sample:
            g = by_user[int(ts.user_ids[t])]
            expected = sorted(zip(g["item_id"].map(rows), g["rating"], strict=True))
            k = int(ts.support_sizes[t])
            got = list(zip(b.x_spt[t, :k].tolist(), b.y_spt[t, :k].tolist(), strict=True))
            got += list(zip(b.x_qry[t].tolist(), b.y_qry[t].tolist(), strict=True))
            assert sorted(got) == expected


def test_melu_cold_users_never_meta_train(melu_data: ColdStartData) -> None:
    warm = set(melu_data.tasks["warm"].user_ids.tolist())
    for name in ("validation", "new_user", "new_user_new_item"):
        overlap = warm & set(melu_data.tasks[name].user_ids.tolist())
        assert not overlap, f"{len(overlap)} {name} users among warm task users"
    # Validation users are held out of the ratings that baselines may learn from, too.
    val = set(melu_data.tasks["validation"].user_ids.tolist())
    assert not val & set(melu_data.train_ratings["user_id"])


def test_melu_new_items_never_meta_train(melu_data: ColdStartData) -> None:
    ratings = melu_data.ratings
    new_items = set(
        ratings.loc[ratings["split"].isin(["new_item", "new_user_new_item"]), "item_id"]
    )
    assert len(new_items) == 740
    for name in ("warm", "validation", "new_user"):
        leaked = new_items & task_items(melu_data, name)
        assert not leaked, f"{len(leaked)} new items in {name} tasks, e.g. {sorted(leaked)[:5]}"
    for name in ("new_item", "new_user_new_item"):
        assert task_items(melu_data, name) <= new_items


def test_melu_split_labels(melu_data: ColdStartData) -> None:
    counts = melu_data.ratings["split"].value_counts().to_dict()
    assert sum(counts.values()) == 1_000_209
    assert counts["warm"] + counts["validation"] == 640_448
    val_users = set(melu_data.ratings.loc[melu_data.ratings["split"] == "validation", "user_id"])
    assert val_users == set(melu_data.tasks["validation"].user_ids.tolist())


def test_melu_split_reproducible(
    melu_data: ColdStartData, melu_frames: movielens.MovieLens
) -> None:
    again = prepare_frames(melu_frames, DataConfig(dataset="melu"))
    for name in SCENARIOS:
        a, b = melu_data.tasks[name], again.tasks[name]
        np.testing.assert_array_equal(a.user_ids, b.user_ids)
        np.testing.assert_array_equal(a.support_sizes, b.support_sizes)
        for field in ("users", "x_spt", "y_spt", "mask_spt", "x_qry", "y_qry", "mask_qry"):
            assert torch.equal(getattr(a.batch_all, field), getattr(b.batch_all, field)), field
    assert torch.equal(melu_data.catalogue.table, again.catalogue.table)
    assert torch.equal(melu_data.user_table, again.user_table)


def test_melu_seed_changes_queries(
    melu_data: ColdStartData, melu_frames: movielens.MovieLens
) -> None:
    other = prepare_frames(melu_frames, DataConfig(dataset="melu", seed=1))
    # MeLU's scenarios are fixed by the release; the seed moves validation users and queries.
    assert set(other.tasks["validation"].user_ids) != set(melu_data.tasks["validation"].user_ids)
    for name in COLD_SCENARIOS:
        a, b = melu_data.tasks[name], other.tasks[name]
        np.testing.assert_array_equal(a.user_ids, b.user_ids)
        same = sum(x == y for x, y in zip(query_sets(a), query_sets(b), strict=True))
        assert same < 0.05 * len(a), f"{name}: {same} of {len(a)} query sets unchanged"


# --- synthetic ML-1M-format data ------------------------------------------------------------------

N_USERS, YEARS, PER_YEAR = 50, range(1980, 2000), 5


@pytest.fixture(scope="module")
def synthetic_ml1m(tmp_path_factory: pytest.TempPathFactory) -> movielens.MovieLens:
    """100 movies, five per year 1980..1999; each user rates 16 of the newest 20 and 30 others.

    The newest four years hold exactly 20% of the rated movies, so they are the new items, and
    every user has enough ratings on both sides to make a task in every scenario.
    """
    folder = tmp_path_factory.mktemp("ml-1m")
    items = [(i + 1, year) for i, year in enumerate(y for y in YEARS for _ in range(PER_YEAR))]
    newest = [i for i, year in items if year >= 1996]
    older = [i for i, year in items if year < 1996]
    rng = np.random.default_rng(7)
    lines = []
    for user in range(1, N_USERS + 1):
        picked = [*rng.choice(newest, 16, replace=False), *rng.choice(older, 30, replace=False)]
        for k, item in enumerate(rng.permutation(picked)):
            lines.append(f"{user}::{item}::{rng.integers(1, 6)}::{978300000 + 60 * k}")
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    (folder / "movies.dat").write_text(
        "".join(f"{i}::Movie {i} ({year})::Drama|Comedy\n" for i, year in items), encoding="latin-1"
    )
    (folder / "users.dat").write_text(
        "".join(f"{u}::{'MF'[u % 2]}::25::{u % 21}::{10000 + u}\n" for u in range(1, N_USERS + 1)),
        encoding="latin-1",
    )
    return movielens.read_ml1m(folder)


def test_synthetic_scenarios(synthetic_ml1m: movielens.MovieLens) -> None:
    data = prepare_frames(synthetic_ml1m, DataConfig(dataset="ml-1m"))
    ratings = data.ratings
    new_items = set(
        ratings.loc[ratings["split"].isin(["new_item", "new_user_new_item"]), "item_id"]
    )
    assert new_items == set(range(81, 101))  # the movies of 1996..1999
    new_users = set(
        ratings.loc[ratings["split"].isin(["new_user", "new_user_new_item"]), "user_id"]
    )
    assert len(new_users) == round(0.2 * N_USERS)
    # A user is new or not across all their ratings; an item likewise.
    by_user = ratings.groupby("user_id")["split"].agg(set)
    for user, splits in by_user.items():
        cold = {"new_user", "new_user_new_item"}
        assert splits <= cold if user in new_users else not splits & cold
    warm_users = N_USERS - len(new_users)
    assert {name: len(data.tasks[name]) for name in SCENARIOS} == {
        "warm": warm_users - round(0.1 * warm_users),
        "validation": round(0.1 * warm_users),
        "new_user": len(new_users),
        "new_item": warm_users,
        "new_user_new_item": len(new_users),
    }
    for name in ("warm", "validation", "new_user"):
        assert not task_items(data, name) & new_items
    for name in ("new_item", "new_user_new_item"):
        assert task_items(data, name) <= new_items
    warm = set(data.tasks["warm"].user_ids.tolist())
    assert not warm & new_users
    assert not warm & set(data.tasks["validation"].user_ids.tolist())


def test_synthetic_new_users_follow_seed(synthetic_ml1m: movielens.MovieLens) -> None:
    def new_users(seed: int) -> set[int]:
        data = prepare_frames(synthetic_ml1m, DataConfig(dataset="ml-1m", seed=seed))
        return set(data.tasks["new_user"].user_ids.tolist())

    assert new_users(0) == new_users(0)
    assert new_users(0) != new_users(1)


def test_synthetic_new_item_fraction(synthetic_ml1m: movielens.MovieLens) -> None:
    # Whole years are taken newest first until they cover the share: 30% -> six years.
    data = prepare_frames(synthetic_ml1m, DataConfig(dataset="ml-1m", new_item_fraction=0.3))
    ratings = data.ratings
    new_items = set(
        ratings.loc[ratings["split"].isin(["new_item", "new_user_new_item"]), "item_id"]
    )
    assert new_items == set(range(71, 101))


# --- batching and padding -------------------------------------------------------------------------


@pytest.mark.parametrize(("bucket", "shuffle"), [(1, False), (1, True), (4, False), (4, True)])
def test_batches_cover_every_task_once(
    melu_data: ColdStartData, bucket: int, shuffle: bool
) -> None:
    ts = melu_data.tasks["warm"]
    generator = np.random.default_rng(3) if shuffle else None
    batches = ts.batches(32, generator=generator, bucket=bucket)
    assert len(batches) == -(-len(ts) // 32)
    users = torch.cat([b.users for b in batches])
    assert sorted(users.tolist()) == sorted(ts.batch_all.users.tolist())
    row_of_task = {int(u): t for t, u in enumerate(ts.batch_all.users.tolist())}
    for b in batches:
        sizes = ts.support_sizes[[row_of_task[int(u)] for u in b.users]]
        # Trimmed to the batch's longest support, with masks still matching the sizes.
        assert b.x_spt.shape[1] == sizes.max()
        np.testing.assert_array_equal(b.mask_spt.sum(dim=1).numpy(), sizes)
        assert b.x_qry.shape[1] == 10
    if bucket > 1:
        # Bucketing exists to cut padding: less of it than plain batches of the same order.
        def padding(bs: list[TaskBatch]) -> int:
            return sum(int((~b.mask_spt).sum()) for b in bs)

        plain = ts.batches(32, generator=np.random.default_rng(3) if shuffle else None)
        assert padding(batches) < padding(plain)


def test_batch_untrimmed_keeps_full_width(melu_data: ColdStartData) -> None:
    ts = melu_data.tasks["new_item"]
    b = ts.batch([0, 1, 2], trim=False)
    assert b.x_spt.shape[1] == ts.batch_all.x_spt.shape[1]
    assert torch.equal(b.mask_spt, ts.batch_all.mask_spt[:3])


def test_pad_support(melu_data: ColdStartData) -> None:
    ts = melu_data.tasks["new_user"]
    b = ts.batch(np.arange(8))
    width = b.x_spt.shape[1]
    padded = b.pad_support(width + 7)
    assert padded.x_spt.shape == padded.y_spt.shape == padded.mask_spt.shape == (8, width + 7)
    assert torch.equal(padded.x_spt[:, :width], b.x_spt)
    assert torch.equal(padded.y_spt[:, :width], b.y_spt)
    assert torch.equal(padded.mask_spt[:, :width], b.mask_spt)
    assert not padded.mask_spt[:, width:].any()
    assert not padded.x_spt[:, width:].any() and not padded.y_spt[:, width:].any()
    assert padded.mask_spt.dtype == torch.bool
    for field in ("users", "x_qry", "y_qry", "mask_qry"):
        assert torch.equal(getattr(padded, field), getattr(b, field))
    assert torch.equal(b.pad_support(width).x_spt, b.x_spt)
    with pytest.raises(ValueError, match="fewer columns"):
        b.pad_support(width - 1)


def test_batch_to_dtype(melu_data: ColdStartData) -> None:
    b = melu_data.tasks["validation"].batch([0, 1]).to("cpu", torch.float64)
    assert b.y_spt.dtype == b.y_qry.dtype == torch.float64
    assert b.x_spt.dtype == torch.long and b.mask_spt.dtype == torch.bool


def test_resampled_queries_keep_each_users_ratings(melu_data: ColdStartData) -> None:
    tasks = melu_data.tasks["warm"].subset(np.arange(64))
    fresh = tasks.resample_queries(np.random.default_rng(0))
    again = tasks.resample_queries(np.random.default_rng(0))
    a, b = tasks.batch_all, fresh.batch_all
    assert torch.equal(b.x_qry, again.batch_all.x_qry)  # seeded
    assert (a.x_qry != b.x_qry).any()
    assert torch.equal(a.mask_spt.sum(1), b.mask_spt.sum(1))
    assert bool(b.mask_qry.all())
    for t in range(len(tasks)):
        k = int(tasks.support_sizes[t])
        assert bool(b.mask_spt[t, :k].all()) and not bool(b.mask_spt[t, k:].any())

        def pairs(x: TaskBatch, t: int = t, k: int = k) -> list[tuple[int, float]]:
            items = torch.cat([x.x_spt[t, :k], x.x_qry[t]]).tolist()
            return sorted(zip(items, torch.cat([x.y_spt[t, :k], x.y_qry[t]]).tolist(), strict=True))

        assert pairs(a) == pairs(b)


# --- ml-latest-small: the time split --------------------------------------------------------------

# Task counts of the real ml-latest-small under DataConfig.for_dataset (README, Data section).
LATEST_SMALL_TASKS = {
    "warm": 439,
    "validation": 49,
    "new_user": 122,
    "new_item": 9,
    "new_user_new_item": 45,
}


def test_latest_small_task_counts(latest_small_data: ColdStartData) -> None:
    data = latest_small_data
    assert {name: len(data.tasks[name]) for name in SCENARIOS} == LATEST_SMALL_TASKS
    assert data.config.long_users == "truncate"
    assert data.config.split_time == 1_436_943_744  # 2015-07-15 07:02:24 UTC


def test_latest_small_split_follows_its_definition(latest_small_data: ColdStartData) -> None:
    """The scenarios and tasks, rebuilt here with plain pandas from the definition."""
    data, cfg = latest_small_data, latest_small_data.config
    ratings = data.ratings
    first_user = ratings.groupby("user_id")["timestamp"].min()
    first_item = ratings.groupby("item_id")["timestamp"].min()
    cutoff = first_user.sort_values().iloc[int(0.8 * (len(first_user) - 1))]
    assert cfg.split_time == cutoff
    new_users = set(first_user.index[first_user > cutoff])
    new_items = set(first_item.index[first_item > cutoff])
    assert len(new_users) == round(0.2 * 610)
    user_new = ratings["user_id"].isin(new_users)
    item_new = ratings["item_id"].isin(new_items)
    expected = np.select(
        [~user_new & ~item_new, user_new & ~item_new, ~user_new & item_new],
        ["warm", "new_user", "new_item"],
        "new_user_new_item",
    )
    got = ratings["split"].astype(str).replace("validation", "warm").to_numpy()
    np.testing.assert_array_equal(got, expected)
    # Tasks: every (scenario, user) with at least 13 ratings; the longer ones truncated.
    for name in SCENARIOS:
        sizes = ratings[ratings["split"] == name].groupby("user_id").size()
        assert sorted(sizes.index[sizes >= 13]) == sorted(data.tasks[name].user_ids.tolist())


def test_latest_small_no_leaks(latest_small_data: ColdStartData) -> None:
    data = latest_small_data
    ratings = data.ratings
    new_users = set(
        ratings.loc[ratings["split"].isin(["new_user", "new_user_new_item"]), "user_id"]
    )
    new_items = set(
        ratings.loc[ratings["split"].isin(["new_item", "new_user_new_item"]), "item_id"]
    )
    warm = set(data.tasks["warm"].user_ids.tolist())
    val = set(data.tasks["validation"].user_ids.tolist())
    assert not warm & val and not (warm | val) & new_users
    assert set(data.train_ratings["user_id"]) == warm
    assert not set(data.train_ratings["item_id"]) & new_items
    for name in ("warm", "validation", "new_user"):
        assert not task_items(data, name) & new_items, name
    for name in ("new_item", "new_user_new_item"):
        assert task_items(data, name) <= new_items
    for name in ("new_user", "new_user_new_item"):
        assert set(data.tasks[name].user_ids.tolist()) <= new_users
    # Validation users were drawn from the warm side: 10% of its task users.
    assert len(val) == round(0.1 * (len(warm) + len(val)))


def test_latest_small_truncates_to_first_ratings(latest_small_data: ColdStartData) -> None:
    """A user with more than 100 ratings in a scenario keeps the first 100 in time."""
    data = latest_small_data
    ratings, rows = data.ratings, data.catalogue.rows
    ts = data.tasks["new_user"]
    sizes = ts.support_sizes + 10
    assert sizes.max() == 100 and (sizes == 100).sum() > 20
    long_user = int(ts.user_ids[int(np.argmax(sizes))])
    mine = ratings[(ratings["user_id"] == long_user) & (ratings["split"] == "new_user")]
    assert len(mine) > 100
    first = mine.sort_values("timestamp", kind="stable").head(100)
    t = int(np.argmax(sizes))
    b = ts.batch_all
    got = set(b.x_spt[t, : ts.support_sizes[t]].tolist()) | set(b.x_qry[t].tolist())
    assert got == {rows[int(i)] for i in first["item_id"]}
    assert set(mine.loc[mine["in_task"], "item_id"]) == set(first["item_id"])


def test_latest_small_half_stars_no_user_fields(latest_small_data: ColdStartData) -> None:
    data = latest_small_data
    assert data.config.rating_scale == (0.5, 5.0, 0.5)
    assert data.scale.values() == tuple(x / 2 for x in range(1, 11))
    values = set(data.tasks["warm"].batch_all.y_qry.unique().tolist())
    assert {0.5, 4.5} <= values <= set(data.scale.values())
    assert data.user_fields == () and data.encoder.user_specs() == []
    assert tuple(data.user_table.shape) == (611, 0)
    assert [s.name for s in data.encoder.item_specs()][-1] == "tag"


def test_latest_small_flat_tasks(latest_small_data: ColdStartData) -> None:
    for name in SCENARIOS:
        flat, ts = latest_small_data.flat_tasks[name], latest_small_data.tasks[name]
        np.testing.assert_array_equal(flat.user_ids, ts.user_ids)
        np.testing.assert_array_equal(flat.support_sizes, ts.support_sizes)
        b = ts.batch_all
        for t in range(0, len(ts), 7):
            lo, k = int(flat.offsets[t]), int(ts.support_sizes[t])
            assert flat.items[lo : lo + k].tolist() == b.x_spt[t, :k].tolist()
            assert flat.items[lo + k : flat.offsets[t + 1]].tolist() == b.x_qry[t].tolist()
            assert flat.ratings[lo : lo + k].tolist() == b.y_spt[t, :k].tolist()


def test_latest_small_checkpoint_config_reproduces(
    latest_small_data: ColdStartData, shared_data: Path
) -> None:
    """The pinned config and encoder (what a checkpoint stores) rebuild the same tasks; another
    release's scale is refused."""
    data = latest_small_data
    restored = from_dict(DataConfig, to_dict(data.config))
    assert restored == data.config
    frames = movielens.load("ml-latest-small", shared_data)
    again = prepare_frames(frames, restored, data.encoder)
    assert again.config == data.config
    for name in SCENARIOS:
        assert torch.equal(again.tasks[name].batch_all.x_qry, data.tasks[name].batch_all.x_qry)
    assert torch.equal(again.catalogue.table, data.catalogue.table)
    with pytest.raises(MeluError, match=r"ratings such as 0.5 are off the checkpoint's scale "
                                        r"1..5 in steps of 1"):  # fmt: skip
        prepare_frames(frames, replace(restored, rating_scale=(1.0, 5.0, 1.0)), data.encoder)


def test_old_data_config_loads() -> None:
    """A checkpoint's data config from before the CSV releases loads with MeLU's behaviour."""
    old = {"dataset": "melu", "min_ratings": 13, "max_ratings": 100, "query_size": 10,
           "validation_fraction": 0.1, "new_user_fraction": 0.2, "new_item_fraction": 0.2,
           "seed": 0}  # fmt: skip
    cfg = from_dict(DataConfig, old)
    assert (cfg.long_users, cfg.split_time, cfg.rating_scale) == ("drop", None, (1.0, 5.0, 1.0))
    assert cfg == DataConfig() == DataConfig.for_dataset("melu")


@pytest.mark.parametrize("rule", ["drop", "truncate"])
def test_select_tasks_by_hand(rule: str) -> None:
    """Four users; the count rule is 2..3 ratings per (scenario, user)."""
    users = np.array([7, 7, 7, 7, 3, 3, 9, 5, 5, 5, 3], dtype=np.int32)
    codes = np.array([0, 0, 0, 0, 2, 2, 0, 3, 0, 3, 2], dtype=np.int8)
    times = np.array([40, 10, 30, 20, 5, 1, 0, 2, 2, 1, 3], dtype=np.int64)
    cfg = DataConfig(min_ratings=2, max_ratings=3, long_users=rule)  # type: ignore[arg-type]
    sel = select_tasks(users, codes, times, cfg)
    assert sel.user_ids.tolist() == [3, 5, 7, 9]
    pos, starts, task_users = sel.tasks("warm")
    if rule == "drop":  # user 7 has 4 warm ratings: left out; user 9 has 1, user 5 one warm
        assert pos.tolist() == [] and task_users.tolist() == [] and starts.tolist() == []
    else:  # user 7 keeps the 3 earliest, in time order
        assert pos.tolist() == [1, 3, 2] and task_users.tolist() == [7]
    pos, starts, task_users = sel.tasks("new_user")
    # In time order when truncating (positions 5, 4, 10 at times 1, 5, 3), else file order.
    expected = [5, 10, 4] if rule == "truncate" else [4, 5, 10]
    assert pos.tolist() == expected and task_users.tolist() == [3] and starts.tolist() == [0]
    pos, starts, task_users = sel.tasks("new_item")
    assert sorted(pos.tolist()) == [7, 9] and task_users.tolist() == [5]
    sel.relabel(np.array([3, 8]), "new_user", "validation")
    assert sel.tasks("new_user")[0].tolist() == []
    assert sel.tasks("validation")[0].tolist() == expected


def test_flat_tasks_stream_the_same_batches_as_the_padded_set(melu_data: ColdStartData) -> None:
    """Streaming training builds each batch from the flat tasks alone: the same rows, ratings
    and masks as the padded task set, and every task exactly once per pass."""
    flat = melu_data.flat_tasks["warm"]
    padded = flat.to_taskset()
    index = np.array([5, 0, 17, 3])
    a, b = flat.batch(index), padded.batch(index, trim=True)
    for name in ("users", "x_spt", "y_spt", "mask_spt", "x_qry", "y_qry", "mask_qry"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    seen = np.concatenate(
        [batch.users.numpy() for batch in flat.batches(32, np.random.default_rng(0), bucket=4)]
    )
    assert sorted(seen.tolist()) == sorted(flat.user_rows.tolist())

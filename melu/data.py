"""From raw files to everything meta-training needs: scenarios, encoders, feature tables, tasks.

Data flows one way: files -> frames (:mod:`melu.movielens`) -> scenarios and tasks
(:mod:`melu.tasks`) -> encoded tables (:mod:`melu.features`). Nothing here touches the model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import movielens
from melu.config import CSV_DATASETS, DataConfig, RatingScale
from melu.errors import MeluError
from melu.features import OPTIONAL_MULTI_ITEM_FIELDS, FeatureEncoder, GenomeBlock, item_tags
from melu.objectives import recommendable_rows
from melu.tasks import (
    SCENARIO_INDEX,
    SCENARIOS,
    FlatTasks,
    PaddedTasks,
    TaskSet,
    assign_scenarios,
    build_flat_tasks,
    select_tasks,
    time_cutoff,
    time_scenarios,
    validation_users,
)

log = logging.getLogger(__name__)

# The ``split`` column: a category per scenario, one byte a rating instead of a string.
SPLIT_DTYPE = pd.CategoricalDtype(list(SCENARIOS))


@dataclass(frozen=True)
class Catalogue:
    """Items in row order; row 0 is the padding item. Carried in checkpoints for serving."""

    item_ids: np.ndarray  # raw id per row, -1 at row 0
    titles: list[str]
    table: torch.Tensor  # [n_items + 1, item_width] feature ids
    # Shown beside recommendations: the release year ("" where unknown; two films share the
    # title "Titanic") and the genres. Empty for checkpoints written before they were stored.
    years: list[str] = field(default_factory=list)
    genres: list[list[str]] = field(default_factory=list)
    # [n_items + 1] bool: the rows a list may hold, the items with training ratings. One set,
    # stored here, for training's model selection, evaluation and /recommend; new items reach
    # a user through the new-releases shelf or a request's explicit candidates.
    recommendable: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))

    def __post_init__(self) -> None:
        rows = {int(i): r for r, i in enumerate(self.item_ids.tolist()) if r > 0}
        object.__setattr__(self, "_rows", rows)
        if self.recommendable.numel() != self.table.shape[0]:
            object.__setattr__(self, "recommendable", recommendable_rows(self.table))

    @property
    def rows(self) -> dict[int, int]:
        """Raw item id -> row."""
        return self._rows  # type: ignore[attr-defined]

    def __len__(self) -> int:
        """Number of real items (row 0 excluded)."""
        return len(self.item_ids) - 1

    def year(self, row: int) -> int | None:
        value = self.years[row] if row < len(self.years) else ""
        return int(value) if value.isdigit() else None

    def genres_of(self, row: int) -> list[str]:
        return list(self.genres[row]) if row < len(self.genres) else []

    @classmethod
    def build(cls, items: pd.DataFrame, encoder: FeatureEncoder) -> Catalogue:
        items = items.sort_values("item_id", kind="stable")
        table = encoder.encode_items(items)
        padded = torch.cat([torch.zeros(1, table.shape[1], dtype=torch.long), table])
        ids = np.concatenate([[-1], items["item_id"].to_numpy(dtype=np.int64)])
        return cls(
            item_ids=ids,
            titles=["", *items["title"].astype(str)],
            table=padded,
            years=["", *items["year"].astype(str)],
            genres=[[], *([str(g) for g in gs] for gs in items["genre"])],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_ids": self.item_ids.tolist(),
            "titles": self.titles,
            "table": self.table,
            "years": self.years,
            "genres": self.genres,
            "recommendable": self.recommendable,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalogue:
        return cls(
            np.asarray(data["item_ids"], dtype=np.int64),
            list(data["titles"]),
            data["table"],
            list(data.get("years", [])),
            [list(g) for g in data.get("genres", [])],
            data.get("recommendable", torch.zeros(0, dtype=torch.bool)),
        )


@dataclass(frozen=True)
class ColdStartData:
    """A dataset prepared for meta-learning under one :class:`DataConfig`.

    ``config`` is the configuration the data were prepared under, with what prepare() read
    from the data pinned in it (the rating scale, the time split's cutoff): it is what a
    checkpoint stores. ``flat_tasks`` are the tasks as prepared, flat with offsets
    (:class:`~melu.tasks.FlatTasks`): the taste model's training streams its batches from
    them; ``tasks`` the same as padded task sets, padded per scenario when first read
    (:class:`~melu.tasks.PaddedTasks`: evaluation, MeLU's training).
    :meth:`restrict` keeps some tasks of a scenario in both.
    """

    config: DataConfig
    encoder: FeatureEncoder
    catalogue: Catalogue
    user_table: torch.Tensor  # [n_users + 1, len(encoder.user_fields)], row 0 = unknown user
    user_rows: dict[int, int]
    tasks: Mapping[str, TaskSet]
    # Every rating with its scenario (``split``, categorical over SCENARIOS), before the count
    # rule; "validation" marks the ratings of carved-out validation users. ``in_task`` is True
    # for the ratings the tasks hold (the count rule may leave a user out, or truncate one).
    ratings: pd.DataFrame
    flat_tasks: dict[str, FlatTasks] = field(default_factory=dict)
    # The tag genome aligned to catalogue rows (ml-25m, ml-32m); None elsewhere.
    genome: GenomeBlock | None = None

    def restrict(self, name: str, index: np.ndarray) -> ColdStartData:
        """The same data with only tasks ``index`` of scenario ``name`` (small runs, tests):
        in the padded and the flat tasks alike."""
        tasks = dict(self.tasks)
        tasks[name] = tasks[name].subset(index)
        flat = dict(self.flat_tasks)
        if name in flat:
            flat[name] = flat[name].subset(index)
        return replace(self, tasks=tasks, flat_tasks=flat)

    @property
    def scale(self) -> RatingScale:
        """The ratings' scale (0.5..5.0 in halves for the CSV releases, 1..5 otherwise)."""
        return self.config.scale

    @property
    def user_fields(self) -> tuple[str, ...]:
        """The user fields that exist (none for the CSV releases)."""
        return self.encoder.user_fields

    @property
    def train_ratings(self) -> pd.DataFrame:
        """Ratings of the meta-training tasks: what baselines may learn from."""
        r = self.ratings
        return r[(r["split"] == "warm").to_numpy() & r["in_task"].to_numpy()]


def prepare(
    data_dir: Path, cfg: DataConfig, encoder: FeatureEncoder | None = None
) -> ColdStartData:
    """Read ``cfg.dataset`` under ``data_dir`` and build the task sets of :data:`SCENARIOS`.

    Pass a checkpoint's ``encoder`` to encode exactly as the model was trained.
    """
    return prepare_frames(movielens.load(cfg.dataset, data_dir), cfg, encoder)


def rating_scale_of(values: np.ndarray) -> RatingScale:
    """The scale ratings use: their lowest and highest value, and the largest step (to a
    thousandth of a star) that every value is a whole number of steps above the lowest."""
    distinct = np.unique(pd.unique(np.asarray(values, dtype=np.float64)))
    if not len(distinct):
        return RatingScale()
    thousandths = np.round((distinct - distinct[0]) * 1000).astype(np.int64)
    step = int(np.gcd.reduce(thousandths)) / 1000 or 1.0
    return RatingScale(float(distinct[0]), float(distinct[-1]), step)


def _pin_scale(cfg: DataConfig, values: np.ndarray, fitted: bool) -> DataConfig:
    """``cfg`` with the data's rating scale; for a checkpoint's config (``fitted``) the data
    must lie on the scale it was trained on."""
    if not fitted:
        found = rating_scale_of(values)
        return replace(cfg, rating_scale=(found.low, found.high, found.step))
    distinct = pd.unique(np.asarray(values, dtype=np.float64))
    off = sorted(float(v) for v in distinct if not cfg.scale.contains(float(v)))
    if off:
        raise MeluError(
            f"{cfg.dataset}: ratings such as {off[0]:g} are off the checkpoint's scale "
            f"{cfg.scale.describe()}: prepare the data the checkpoint was trained on"
        )
    return cfg


def _scenario_codes(
    ml: movielens.MovieLens, ratings: pd.DataFrame, cfg: DataConfig
) -> tuple[np.ndarray, DataConfig]:
    """Each rating's scenario as an index into SCENARIOS, and ``cfg`` with the time split's
    cutoff pinned where the dataset splits by time."""
    if "split" in ratings.columns:  # MeLU's release ships its split
        names = pd.Categorical(ratings["split"], dtype=SPLIT_DTYPE)
        return names.codes.astype(np.int8), cfg
    if cfg.dataset in CSV_DATASETS:
        cutoff = time_cutoff(ratings, cfg)
        return time_scenarios(ratings, cutoff), replace(cfg, split_time=cutoff)
    names = pd.Categorical(assign_scenarios(ratings, ml.items, cfg), dtype=SPLIT_DTYPE)
    return names.codes.astype(np.int8), cfg


def _rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows (1-based: row 0 is padding) of ``ids`` in ``sorted_ids``, all of which are there."""
    return np.searchsorted(sorted_ids, ids).astype(np.int64) + 1


def prepare_frames(
    ml: movielens.MovieLens, cfg: DataConfig, encoder: FeatureEncoder | None = None
) -> ColdStartData:
    """Scenarios, the count rule, vocabularies, tasks: linear in the number of ratings but
    for one sort, without Python objects per rating (25M ratings: seconds, under 3 GB)."""
    ratings = ml.ratings
    known = (
        ratings["item_id"].isin(ml.items["item_id"]).to_numpy()
        & ratings["user_id"].isin(ml.users["user_id"]).to_numpy()
    )
    if not known.all():
        log.warning("dropping %d ratings of users or items without metadata", int((~known).sum()))
        ratings = ratings[known].reset_index(drop=True)
    del known
    cfg = _pin_scale(cfg, ratings["rating"].to_numpy(), fitted=encoder is not None)
    codes, cfg = _scenario_codes(ml, ratings, cfg)
    user_col = ratings["user_id"].to_numpy()
    timestamps = ratings["timestamp"].to_numpy() if "timestamp" in ratings.columns else None
    selection = select_tasks(user_col, codes, timestamps, cfg)

    # Validation users: a seeded share of the warm task users, relabelled everywhere.
    warm_tasks = selection.tasks("warm")[2]
    val_users = np.sort(np.fromiter(validation_users(warm_tasks.tolist(), cfg), dtype=np.int64))
    selection.relabel(val_users, "warm", "validation")
    codes[np.isin(user_col, val_users, kind="table") & (codes == SCENARIO_INDEX["warm"])] = (
        SCENARIO_INDEX["validation"]
    )
    in_task = np.zeros(len(ratings), dtype=bool)
    in_task[selection.order] = True
    ratings = ratings.assign(
        split=pd.Categorical.from_codes(codes, dtype=SPLIT_DTYPE), in_task=in_task
    )
    del in_task, codes

    items = ml.items
    if ml.tags is not None:
        tags = item_tags(ml.tags, items["item_id"], cfg.split_time, cfg.top_tags)
        items = items.assign(tag=pd.Series(tags, index=items.index, dtype=object))
    train_pos, _, train_users_ids = selection.tasks("warm")
    if encoder is None:
        train_users = ml.users[ml.users["user_id"].isin(train_users_ids)]
        train_items = items[
            items["item_id"].isin(pd.unique(ratings["item_id"].to_numpy()[train_pos]))
        ]
        encoder = FeatureEncoder.fit(train_users, train_items, multi_width=_multi_widths(items))
    catalogue = Catalogue.build(items, encoder)
    users = ml.users.sort_values("user_id", kind="stable")
    user_ids = users["user_id"].to_numpy(dtype=np.int64)
    user_table = torch.cat(
        [torch.zeros(1, len(encoder.user_fields), dtype=torch.long), encoder.encode_users(users)]
    )
    user_rows = {int(u): r + 1 for r, u in enumerate(user_ids.tolist())}

    item_ids = catalogue.item_ids[1:]
    flat = {}
    item_col, rating_col = ratings["item_id"].to_numpy(), ratings["rating"].to_numpy()
    for name in SCENARIOS:
        pos, starts, task_users = selection.tasks(name)
        flat[name] = build_flat_tasks(
            name,
            starts,
            task_users,
            _rows_of(item_ids, item_col[pos]),
            rating_col[pos],
            _rows_of(user_ids, task_users),
            cfg,
        )
    del selection
    tasks = PaddedTasks(flat)
    genome = (
        GenomeBlock.align(ml.genome.tags, ml.genome.item_ids, ml.genome.scores, catalogue.item_ids)
        if ml.genome is not None
        else None
    )
    return ColdStartData(
        cfg, encoder, catalogue, user_table, user_rows, tasks, ratings, flat, genome
    )


def _multi_widths(items: pd.DataFrame) -> dict[str, int]:
    """Padded widths from the whole catalogue, so every item's list fits."""
    fields = ("genre", "director", "actor", *(f for f in OPTIONAL_MULTI_ITEM_FIELDS if f in items))
    return {f: max(1, int(items[f].map(len).max())) for f in fields}


def summary(data: ColdStartData) -> dict[str, Any]:
    """Per scenario: users, tasks, ratings, items and support sizes (min, median, max); and
    how the data were split (the time cutoff), their rating scale and user fields."""
    cfg = data.config
    out: dict[str, Any] = {"dataset": cfg.dataset, "scenarios": {}}
    codes = data.ratings["split"].cat.codes.to_numpy() if len(data.ratings) else np.zeros(0)
    users, items = data.ratings["user_id"].to_numpy(), data.ratings["item_id"].to_numpy()
    for name in SCENARIOS:
        mine = codes == SCENARIO_INDEX[name]
        ts = data.tasks[name]
        sizes = ts.support_sizes
        out["scenarios"][name] = {
            "users": len(pd.unique(users[mine])),
            "tasks": len(ts),
            "ratings": int(mine.sum()),
            "items": len(pd.unique(items[mine])),
            "support_min": int(sizes.min()) if len(sizes) else 0,
            "support_median": float(np.median(sizes)) if len(sizes) else 0.0,
            "support_max": int(sizes.max()) if len(sizes) else 0,
        }
    out["totals"] = {
        "ratings": len(data.ratings),
        "users": len(pd.unique(users)),
        "items": len(pd.unique(items)),
        "catalogue_items": len(data.catalogue),
    }
    out["rating_scale"] = {"low": cfg.scale.low, "high": cfg.scale.high, "step": cfg.scale.step}
    out["user_fields"] = list(data.user_fields)
    out["count_rule"] = {
        "min_ratings": cfg.min_ratings,
        "max_ratings": cfg.max_ratings,
        "long_users": cfg.long_users,
    }
    if cfg.split_time is not None:
        out["split_time"] = {
            "unix": cfg.split_time,
            "utc": pd.Timestamp(cfg.split_time, unit="s", tz="UTC").isoformat(),
        }
    return out

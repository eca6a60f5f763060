"""From raw files to everything meta-training needs: scenarios, encoders, feature tables, tasks.

Data flows one way: files -> frames (:mod:`melu.movielens`) -> scenarios and tasks
(:mod:`melu.tasks`) -> encoded tables (:mod:`melu.features`). Nothing here touches the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from melu import movielens
from melu.config import DataConfig
from melu.features import FeatureEncoder
from melu.tasks import SCENARIOS, TaskSet, assign_scenarios, build_tasks, eligible, validation_users

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        rows = {int(i): r for r, i in enumerate(self.item_ids.tolist()) if r > 0}
        object.__setattr__(self, "_rows", rows)

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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Catalogue:
        return cls(
            np.asarray(data["item_ids"], dtype=np.int64),
            list(data["titles"]),
            data["table"],
            list(data.get("years", [])),
            [list(g) for g in data.get("genres", [])],
        )


@dataclass(frozen=True)
class ColdStartData:
    """A dataset prepared for meta-learning under one :class:`DataConfig`."""

    config: DataConfig
    encoder: FeatureEncoder
    catalogue: Catalogue
    user_table: torch.Tensor  # [n_users + 1, 4], row 0 = unknown user
    user_rows: dict[int, int]
    tasks: dict[str, TaskSet]
    # Every rating with its scenario (``split``), before the 13..100 rule; "validation" marks
    # the ratings of carved-out validation users.
    ratings: pd.DataFrame

    @property
    def train_ratings(self) -> pd.DataFrame:
        """Ratings of the meta-training tasks: what baselines may learn from."""
        train_users = set(self.tasks["warm"].user_ids.tolist())
        warm = self.ratings[self.ratings["split"] == "warm"]
        return warm[warm["user_id"].isin(train_users)]


def prepare(
    data_dir: Path, cfg: DataConfig, encoder: FeatureEncoder | None = None
) -> ColdStartData:
    """Read ``cfg.dataset`` under ``data_dir`` and build the task sets of :data:`SCENARIOS`.

    Pass a checkpoint's ``encoder`` to encode exactly as the model was trained.
    """
    return prepare_frames(movielens.load(cfg.dataset, data_dir), cfg, encoder)


def prepare_frames(
    ml: movielens.MovieLens, cfg: DataConfig, encoder: FeatureEncoder | None = None
) -> ColdStartData:
    ratings = ml.ratings
    known = ratings["item_id"].isin(ml.items["item_id"]) & ratings["user_id"].isin(
        ml.users["user_id"]
    )
    if not known.all():
        log.warning("dropping %d ratings of users or items without metadata", int((~known).sum()))
        ratings = ratings[known]
    if "split" not in ratings.columns:
        ratings = ratings.assign(split=assign_scenarios(ratings, ml.items, cfg))

    by_scenario = {
        s: eligible(ratings[ratings["split"] == s], cfg) for s in SCENARIOS if s != "validation"
    }
    val_users = validation_users(by_scenario["warm"]["user_id"].unique().tolist(), cfg)
    warm = by_scenario.pop("warm")
    is_val = warm["user_id"].isin(val_users)
    by_scenario = {"warm": warm[~is_val], "validation": warm[is_val], **by_scenario}
    ratings = ratings.assign(
        split=ratings["split"].where(
            ~((ratings["split"] == "warm") & ratings["user_id"].isin(val_users)), "validation"
        )
    )

    train = by_scenario["warm"]
    train_users = ml.users[ml.users["user_id"].isin(train["user_id"].unique())]
    train_items = ml.items[ml.items["item_id"].isin(train["item_id"].unique())]
    if encoder is None:
        encoder = FeatureEncoder.fit(train_users, train_items, multi_width=_multi_widths(ml.items))
    catalogue = Catalogue.build(ml.items, encoder)
    users = ml.users.sort_values("user_id", kind="stable")
    user_table = torch.cat([torch.zeros(1, 4, dtype=torch.long), encoder.encode_users(users)])
    user_rows = {int(u): r + 1 for r, u in enumerate(users["user_id"].tolist())}
    tasks = {
        name: build_tasks(name, frame, user_rows, catalogue.rows, cfg)
        for name, frame in by_scenario.items()
    }
    return ColdStartData(cfg, encoder, catalogue, user_table, user_rows, tasks, ratings)


def _multi_widths(items: pd.DataFrame) -> dict[str, int]:
    """Padded widths from the whole catalogue, so every item's list fits."""
    return {f: max(1, int(items[f].map(len).max())) for f in ("genre", "director", "actor")}


def summary(data: ColdStartData) -> dict[str, Any]:
    """Per scenario: users, tasks, ratings, items and support sizes (min, median, max)."""
    out: dict[str, Any] = {"dataset": data.config.dataset, "scenarios": {}}
    for name in SCENARIOS:
        frame = data.ratings[data.ratings["split"] == name]
        ts = data.tasks[name]
        sizes = ts.support_sizes
        out["scenarios"][name] = {
            "users": int(frame["user_id"].nunique()),
            "tasks": len(ts),
            "ratings": len(frame),
            "items": int(frame["item_id"].nunique()),
            "support_min": int(sizes.min()) if len(sizes) else 0,
            "support_median": float(np.median(sizes)) if len(sizes) else 0.0,
            "support_max": int(sizes.max()) if len(sizes) else 0,
        }
    out["totals"] = {
        "ratings": len(data.ratings),
        "users": int(data.ratings["user_id"].nunique()),
        "items": int(data.ratings["item_id"].nunique()),
        "catalogue_items": len(data.catalogue),
    }
    return out

"""Cold-start scenarios and per-user tasks.

A task is one user's ratings split into a support set (given) and a query set (to predict).
Tasks hold catalogue row ids and ratings only; features are gathered at batch time.
A :class:`TaskSet` keeps a whole scenario as padded tensors, so a meta-batch is an index into
them: no Python collation per step, and the tensors can live on the GPU for the whole run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from melu.config import DataConfig

# Evaluation order; "warm" is meta-training, "validation" is carved out of it.
SCENARIOS: tuple[str, ...] = ("warm", "validation", "new_user", "new_item", "new_user_new_item")
COLD_SCENARIOS: tuple[str, ...] = ("new_user", "new_item", "new_user_new_item")


def assign_scenarios(ratings: pd.DataFrame, items: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """Scenario of each rating for ML-1M / ML-100K, following MeLU's design.

    Items from the most recent release years (about ``new_item_fraction`` of rated items) are
    new; a seeded ``new_user_fraction`` of users are new. MeLU's release ships its own split.
    """
    rated = items[items["item_id"].isin(ratings["item_id"].unique())]
    years = pd.to_numeric(rated["year"], errors="coerce")
    counts = years.value_counts().sort_index(ascending=False)
    target = cfg.new_item_fraction * len(rated)
    # Take whole years, newest first, until they cover the target share.
    cumulative = counts.cumsum()
    newest_years = cumulative.index[: int((cumulative < target).sum()) + 1]
    new_items = set(rated.loc[years.isin(newest_years), "item_id"])

    users = np.sort(ratings["user_id"].unique())
    rng = np.random.default_rng(cfg.seed)
    n_new = round(cfg.new_user_fraction * len(users))
    new_users = set(rng.permutation(users)[:n_new].tolist())

    user_new = ratings["user_id"].isin(new_users).to_numpy()
    item_new = ratings["item_id"].isin(new_items).to_numpy()
    scenario = np.select(
        [~user_new & ~item_new, user_new & ~item_new, ~user_new & item_new],
        ["warm", "new_user", "new_item"],
        default="new_user_new_item",
    )
    return pd.Series(scenario, index=ratings.index, name="split")


def validation_users(warm_users: Sequence[int], cfg: DataConfig) -> set[int]:
    """A seeded ``validation_fraction`` of warm task users, never seen by meta-training."""
    ordered = np.sort(np.asarray(list(warm_users), dtype=np.int64))
    rng = np.random.default_rng(cfg.seed + 1)
    n_val = round(cfg.validation_fraction * len(ordered))
    return set(rng.permutation(ordered)[:n_val].tolist())


def eligible(ratings: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Ratings of users with ``min_ratings`` to ``max_ratings`` ratings in the scenario."""
    sizes = ratings.groupby("user_id", sort=False)["item_id"].transform("size")
    return ratings[(sizes >= cfg.min_ratings) & (sizes <= cfg.max_ratings)]


@dataclass(frozen=True)
class TaskBatch:
    """A batch of tasks, padded; masks are True on real entries.

    Shapes: ``users [B]``, ``x_spt``/``y_spt``/``mask_spt`` ``[B, S]``, query ``[B, Q]``.
    ``x_*`` are catalogue rows (0 = padding), ``users`` rows of the user table.
    """

    users: torch.Tensor
    x_spt: torch.Tensor
    y_spt: torch.Tensor
    mask_spt: torch.Tensor
    x_qry: torch.Tensor
    y_qry: torch.Tensor
    mask_qry: torch.Tensor

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)}
        if dtype is not None:
            moved["y_spt"] = moved["y_spt"].to(dtype)
            moved["y_qry"] = moved["y_qry"].to(dtype)
        return TaskBatch(**moved)

    def pad_support(self, width: int) -> TaskBatch:
        """The same tasks with the support padded to ``width`` columns (for tests and graphs)."""
        extra = width - self.x_spt.shape[1]
        if extra < 0:
            raise ValueError("cannot pad to fewer columns than the batch has")
        pad = torch.nn.functional.pad
        return replace(
            self,
            x_spt=pad(self.x_spt, (0, extra)),
            y_spt=pad(self.y_spt, (0, extra)),
            mask_spt=pad(self.mask_spt, (0, extra)),
        )

    def pad_tasks(self, count: int) -> TaskBatch:
        """The same tasks followed by empty ones (every entry masked) up to ``count`` tasks.

        An empty task's query loss and its gradient are exactly 0, so a compiled meta-loss can
        take every batch of an epoch at one shape.
        """
        extra = count - len(self)
        if extra < 0:
            raise ValueError("cannot pad to fewer tasks than the batch has")

        def grow(values: torch.Tensor) -> torch.Tensor:
            return torch.cat([values, values.new_zeros((extra, *values.shape[1:]))])

        return TaskBatch(**{f.name: grow(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class TaskSet:
    """Every task of one scenario as padded tensors, plus host-side support sizes."""

    name: str
    user_ids: np.ndarray  # raw user id of each task
    batch_all: TaskBatch
    support_sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.user_ids)

    def batch(self, index: np.ndarray | Sequence[int], trim: bool = True) -> TaskBatch:
        """Tasks ``index``; with ``trim`` the support is cut to the longest in the batch.

        The cut length comes from host-side sizes, so batching never waits on the device.
        """
        idx_np = np.asarray(index, dtype=np.int64)
        idx = torch.from_numpy(idx_np).to(self.batch_all.users.device)
        full = self.batch_all
        width = (
            int(self.support_sizes[idx_np].max()) if trim and len(idx_np) else full.x_spt.shape[1]
        )
        return TaskBatch(
            users=full.users[idx],
            x_spt=full.x_spt[idx, :width],
            y_spt=full.y_spt[idx, :width],
            mask_spt=full.mask_spt[idx, :width],
            x_qry=full.x_qry[idx],
            y_qry=full.y_qry[idx],
            mask_qry=full.mask_qry[idx],
        )

    def batches(
        self,
        batch_size: int,
        generator: np.random.Generator | None = None,
        trim: bool = True,
        bucket: int = 1,
    ) -> list[TaskBatch]:
        """All tasks in batches; shuffled when a generator is given, else in order.

        With ``bucket > 1`` the shuffled tasks are sorted by support size within pools of
        ``bucket`` batches, and the batches of a pool shuffled again: trimmed batches then carry
        little padding (support sizes range from 3 to 90), at the price of batches that mix
        sizes less.
        """
        order = generator.permutation(len(self)) if generator is not None else np.arange(len(self))
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if bucket > 1:
            pool = batch_size * bucket
            groups = []
            for i in range(0, len(order), pool):
                chunk = order[i : i + pool]
                chunk = chunk[np.argsort(self.support_sizes[chunk], kind="stable")]
                groups.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
            if generator is not None:
                groups = [groups[k] for k in generator.permutation(len(groups))]
        return [self.batch(g, trim=trim) for g in groups]

    def resample_queries(self, generator: np.random.Generator) -> TaskSet:
        """The same users with a fresh random query/support split of their ratings.

        Meta-training draws new episodes every epoch, so the meta-loss sees all of a training
        user's ratings as queries over time instead of the same 10. Support sizes (and hence
        ``support_sizes``) do not change. Evaluation task sets are never resampled.
        """
        b = self.batch_all
        q, s = b.x_qry.shape[1], b.x_spt.shape[1]
        items = torch.cat([b.x_spt, b.x_qry], dim=1)
        ratings = torch.cat([b.y_spt, b.y_qry], dim=1)
        mask = torch.cat([b.mask_spt, b.mask_qry], dim=1)
        keys = torch.from_numpy(generator.random(tuple(mask.shape))).to(mask.device)
        keys = keys.masked_fill(~mask, 2.0)  # padding sorts last, behind every real rating
        order = keys.argsort(dim=1)
        query, support = order[:, :q], order[:, q : q + s]
        batch = TaskBatch(
            users=b.users,
            x_spt=items.gather(1, support),
            y_spt=ratings.gather(1, support),
            mask_spt=mask.gather(1, support),
            x_qry=items.gather(1, query),
            y_qry=ratings.gather(1, query),
            mask_qry=mask.gather(1, query),
        )
        return replace(self, batch_all=batch)

    def subset(self, index: np.ndarray | Sequence[int]) -> TaskSet:
        """Tasks ``index`` as a task set of their own (small runs, tests, sharding)."""
        idx = np.asarray(index, dtype=np.int64)
        return TaskSet(
            name=self.name,
            user_ids=self.user_ids[idx],
            batch_all=self.batch(idx, trim=True),
            support_sizes=self.support_sizes[idx],
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskSet:
        """On ``device``; ``dtype`` converts the ratings (ids and masks keep theirs)."""
        return replace(self, batch_all=self.batch_all.to(device, dtype))


def build_tasks(
    name: str,
    ratings: pd.DataFrame,
    user_rows: dict[int, int],
    item_rows: dict[int, int],
    cfg: DataConfig,
) -> TaskSet:
    """One task per user of ``ratings`` (already filtered by :func:`eligible`).

    The query is ``cfg.query_size`` items drawn with a generator seeded by ``(seed, user)``, so
    a user's split does not depend on which other users are present; the support keeps the
    remaining items in their original order.
    """
    user_col = ratings["user_id"].to_numpy(dtype=np.int64)
    order = np.argsort(user_col, kind="stable")  # by user, original order within a user
    items_all = (
        pd.Series(item_rows).reindex(ratings["item_id"].to_numpy()).to_numpy(np.int64)[order]
    )
    values_all = ratings["rating"].to_numpy(dtype=np.float32)[order]
    user_ids, starts, counts = np.unique(user_col[order], return_index=True, return_counts=True)
    n, q = len(user_ids), cfg.query_size
    s = int(counts.max()) - q if n else 0
    users = torch.tensor([user_rows[int(u)] for u in user_ids], dtype=torch.long)
    x_spt, y_spt = np.zeros((n, s), dtype=np.int64), np.zeros((n, s), dtype=np.float32)
    x_qry, y_qry = np.zeros((n, q), dtype=np.int64), np.zeros((n, q), dtype=np.float32)
    sizes = counts - q
    for t, (uid, start, count) in enumerate(zip(user_ids.tolist(), starts, counts, strict=True)):
        items, values = items_all[start : start + count], values_all[start : start + count]
        rng = np.random.default_rng((cfg.seed, uid))
        is_query = np.zeros(count, dtype=bool)
        is_query[rng.choice(count, size=q, replace=False)] = True
        k = sizes[t]
        x_spt[t, :k], y_spt[t, :k] = items[~is_query], values[~is_query]
        x_qry[t], y_qry[t] = items[is_query], values[is_query]
    mask_spt = torch.arange(s).unsqueeze(0) < torch.from_numpy(sizes).unsqueeze(1)
    batch = TaskBatch(
        users=users,
        x_spt=torch.from_numpy(x_spt),
        y_spt=torch.from_numpy(y_spt),
        mask_spt=mask_spt,
        x_qry=torch.from_numpy(x_qry),
        y_qry=torch.from_numpy(y_qry),
        mask_qry=torch.ones(n, q, dtype=torch.bool),
    )
    return TaskSet(name=name, user_ids=user_ids, batch_all=batch, support_sizes=sizes)

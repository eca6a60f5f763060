"""Cold-start scenarios and per-user tasks.

Scenarios come from MeLU's release as shipped, from release years and a seeded share of users
(ML-1M, ML-100K: :func:`assign_scenarios`), or from time (the CSV releases:
:func:`time_scenarios`). :func:`select_tasks` applies the count rule to every (scenario, user)
at once.

A task is one user's ratings split into a support set (given) and a query set (to predict).
Tasks hold catalogue row ids and ratings only; features are gathered at batch time. They are
built as flat arrays with offsets (:class:`FlatTasks`); a :class:`TaskSet` keeps a whole
scenario as padded tensors, so a meta-batch is an index into them: no Python collation per
step, and the tensors can live on the GPU for the whole run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch

from melu.config import DataConfig

# Evaluation order; "warm" is meta-training, "validation" is carved out of it.
SCENARIOS: tuple[str, ...] = ("warm", "validation", "new_user", "new_item", "new_user_new_item")
SCENARIO_INDEX: dict[str, int] = {name: i for i, name in enumerate(SCENARIOS)}
COLD_SCENARIOS: tuple[str, ...] = ("new_user", "new_item", "new_user_new_item")


def assign_scenarios(ratings: pd.DataFrame, items: pd.DataFrame, cfg: DataConfig) -> pd.Series:
    """Scenario of each rating for ML-1M / ML-100K, following MeLU's design (the CSV releases
    split by time instead: :func:`time_scenarios`).

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


# --- scenarios by time (the CSV releases) -------------------------------------------------------


def time_cutoff(ratings: pd.DataFrame, cfg: DataConfig) -> int:
    """The time split's cutoff: ``cfg.split_time`` if pinned, else the time (Unix seconds) by
    which ``1 - cfg.new_user_fraction`` of the users had given their first rating (a user's
    first rating at exactly the cutoff is not after it, so that user is old)."""
    if cfg.split_time is not None:
        return int(cfg.split_time)
    first = ratings.groupby("user_id", sort=False)["timestamp"].min().to_numpy()
    return int(np.quantile(first, 1.0 - cfg.new_user_fraction, method="lower"))


def time_scenarios(ratings: pd.DataFrame, cutoff: int) -> np.ndarray:
    """Each rating's scenario, as an index into :data:`SCENARIOS`, split by time.

    New users are those whose first rating comes after ``cutoff``, new items those first rated
    after it: warm = old users on old items, new_item = old users on new items, new_user = new
    users on old items, new_user_new_item = new users on new items. Who is new is decided by
    first ratings alone, so a rating's own time does not matter: an old user's rating of an
    old item after the cutoff is warm.
    """
    codes = np.empty(len(ratings), dtype=np.int8)
    if not len(ratings):
        return codes
    first_user = ratings.groupby("user_id", sort=False)["timestamp"].min()
    first_item = ratings.groupby("item_id", sort=False)["timestamp"].min()
    user_new = ratings["user_id"].isin(first_user.index[first_user.to_numpy() > cutoff])
    item_new = ratings["item_id"].isin(first_item.index[first_item.to_numpy() > cutoff])
    u, i = user_new.to_numpy(), item_new.to_numpy()
    codes[~u & ~i] = SCENARIO_INDEX["warm"]
    codes[u & ~i] = SCENARIO_INDEX["new_user"]
    codes[~u & i] = SCENARIO_INDEX["new_item"]
    codes[u & i] = SCENARIO_INDEX["new_user_new_item"]
    return codes


# --- which ratings make tasks -------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSelection:
    """The ratings that make tasks, and in which order.

    ``order`` lists rating positions grouped by (scenario, user): scenarios in the order of
    :data:`SCENARIOS`, users ascending, and within a user file order ("drop") or time order
    ("truncate"). ``groups[k]`` is rating ``order[k]``'s group, ``scenario * n_users + u``
    where ``u`` indexes ``user_ids``; each group is one task.
    """

    order: np.ndarray  # [K] int32/int64 positions into the ratings
    groups: np.ndarray  # [K] int32 (int64 past 2**31 groups)
    user_ids: np.ndarray  # [n_users] int64 raw ids, ascending

    @property
    def n_users(self) -> int:
        return max(1, len(self.user_ids))

    @property
    def codes(self) -> np.ndarray:
        """Each selected rating's scenario, an index into :data:`SCENARIOS`."""
        return (self.groups // self.n_users).astype(np.int8)

    def tasks(self, scenario: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One scenario's ratings: their positions, the index in them where each task starts,
        and each task's raw user id (ascending)."""
        code = SCENARIO_INDEX[scenario]
        n = self.n_users
        mine = (self.groups >= code * n) & (self.groups < (code + 1) * n)
        groups = self.groups[mine]
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]][: len(groups)])
        return self.order[mine], starts, self.user_ids[groups[starts] % n]

    def relabel(self, users: np.ndarray, source: str, target: str) -> None:
        """Move ``users``' tasks from scenario ``source`` to ``target`` (in place)."""
        n, src = self.n_users, SCENARIO_INDEX[source]
        index = np.searchsorted(self.user_ids, users)
        moved = np.zeros(n, dtype=bool)
        moved[index[(index < n) & (self.user_ids[np.minimum(index, n - 1)] == users)]] = True
        mine = (self.groups >= src * n) & (self.groups < (src + 1) * n)
        mine[mine] = moved[self.groups[mine] - src * n]
        self.groups[mine] += (SCENARIO_INDEX[target] - src) * n


def dense_index(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``ids`` as indexes into their sorted distinct values (int32), and those values. Small
    non-negative ids (MovieLens') go through a lookup table, in linear time and 4 bytes an id;
    others through pandas' hashing."""
    if len(ids) and ids.min() >= 0 and int(ids.max()) <= 4 * len(ids) + 1_000_000:
        present = np.flatnonzero(np.bincount(ids))
        lookup = np.zeros(int(present[-1]) + 1, dtype=np.int32)
        lookup[present] = np.arange(len(present), dtype=np.int32)
        return lookup[ids], present.astype(np.int64)
    codes, uniques = pd.factorize(ids, sort=True)
    return codes.astype(np.int32), np.asarray(uniques, dtype=np.int64)


def select_tasks(
    user_ids: np.ndarray, codes: np.ndarray, timestamps: np.ndarray | None, cfg: DataConfig
) -> TaskSelection:
    """Apply the count rule to every (scenario, user) group at once.

    A group is a task when it has at least ``min_ratings`` ratings, and at most
    ``max_ratings``: ``cfg.long_users == "drop"`` leaves a larger group out (MeLU),
    ``"truncate"`` keeps its first ``max_ratings`` ratings in time (ties in file order).
    Linear in the number of ratings but for one sort of the kept ones, with 4-byte arrays
    where they suffice: 25M ratings take about 0.7 GB at the peak.
    """
    user_index, uniques = dense_index(user_ids)
    n_users = max(1, len(uniques))
    wide = len(SCENARIOS) * n_users >= 2**31
    group = codes.astype(np.int64 if wide else np.int32) * n_users
    np.add(group, user_index, out=group)
    del user_index
    sizes = np.bincount(group, minlength=len(SCENARIOS) * n_users)
    task = sizes >= cfg.min_ratings
    truncate = cfg.long_users == "truncate"
    if not truncate:
        task &= sizes <= cfg.max_ratings
    positions = np.flatnonzero(task[group])
    positions = positions.astype(np.int32) if len(group) < 2**31 else positions
    group = group[positions]
    if truncate:
        if timestamps is None:
            raise ValueError('long_users="truncate" needs timestamps')
        # One int64 key, (group, time), when it fits; else a lexicographic sort.
        ts = timestamps[positions].astype(np.int64)
        low = int(ts.min()) if len(ts) else 0
        ts -= low
        span = int(ts.max()) + 1 if len(ts) else 1
        if int(group.max(initial=0)) < (1 << 62) // span:
            key = group.astype(np.int64)
            key *= span
            key += ts
            del ts
            order = np.argsort(key, kind="stable")
            del key
        else:
            order = np.lexsort((ts, group))
            del ts
    else:
        order = np.argsort(group, kind="stable")
    positions, group = positions[order], group[order]
    del order
    if truncate:
        # Rank within the group: position minus the group's first position.
        kept = np.bincount(group, minlength=len(sizes))
        first = (np.cumsum(kept) - kept).astype(positions.dtype)
        rank = np.arange(len(group), dtype=positions.dtype)
        rank -= first[group]
        within = rank < cfg.max_ratings
        del rank
        positions, group = positions[within], group[within]
    return TaskSelection(order=positions, groups=group, user_ids=uniques)


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


def batch_groups(
    sizes: np.ndarray,
    batch_size: int,
    generator: np.random.Generator | None = None,
    bucket: int = 1,
) -> list[np.ndarray]:
    """Task indices in batches: shuffled when a generator is given, else in order; with
    ``bucket > 1`` sorted by support size (``sizes``) within pools of ``bucket`` batches and
    the batches of a pool shuffled again (see :meth:`TaskSet.batches`)."""
    order = generator.permutation(len(sizes)) if generator is not None else np.arange(len(sizes))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket > 1:
        pool = batch_size * bucket
        groups = []
        for i in range(0, len(order), pool):
            chunk = order[i : i + pool]
            chunk = chunk[np.argsort(sizes[chunk], kind="stable")]
            groups.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
        if generator is not None:
            groups = [groups[k] for k in generator.permutation(len(groups))]
    return groups


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
        groups = batch_groups(self.support_sizes, batch_size, generator, bucket)
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


class PaddedTasks(Mapping[str, "TaskSet"]):
    """Each scenario's :class:`TaskSet`, padded from its :class:`FlatTasks` the first time it
    is asked for: a 25M-rating release never pads its training tasks (training streams them,
    :meth:`FlatTasks.batches`), only the smaller sets evaluation reads."""

    def __init__(self, flat: dict[str, FlatTasks]) -> None:
        self._flat = flat
        self._padded: dict[str, TaskSet] = {}

    def __getitem__(self, name: str) -> TaskSet:
        if name not in self._padded:
            self._padded[name] = self._flat[name].to_taskset()
        return self._padded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat)

    def __len__(self) -> int:
        return len(self._flat)


@dataclass(frozen=True)
class FlatTasks:
    """Every task of one scenario as flat arrays with offsets (CSR): the compact form a release
    of 25 million ratings is prepared in, about 9 bytes a rating and no per-task objects.

    Task ``t`` is positions ``offsets[t]:offsets[t + 1]`` of ``items`` and ``ratings``: its
    support in the order the task selection gave, then its ``query_size`` query items.
    :meth:`to_taskset` pads them into the :class:`TaskSet` that training reads.
    """

    name: str
    user_ids: np.ndarray  # [n] int64 raw user id of each task
    user_rows: np.ndarray  # [n] int64 row of each task's user in the user table
    offsets: np.ndarray  # [n + 1] int64
    items: np.ndarray  # [N] int32 catalogue rows
    ratings: np.ndarray  # [N] float32
    query_size: int

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def support_sizes(self) -> np.ndarray:
        return np.diff(self.offsets) - self.query_size

    @property
    def nbytes(self) -> int:
        arrays = (self.user_ids, self.user_rows, self.offsets, self.items, self.ratings)
        return sum(a.nbytes for a in arrays)

    def subset(self, index: np.ndarray | Sequence[int]) -> FlatTasks:
        """Tasks ``index`` as flat tasks of their own (small runs, tests)."""
        idx = np.asarray(index, dtype=np.int64)
        starts, lengths = self.offsets[idx], np.diff(self.offsets)[idx]
        source = np.repeat(starts, lengths) + (
            np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        return FlatTasks(
            name=self.name,
            user_ids=self.user_ids[idx],
            user_rows=self.user_rows[idx],
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            items=self.items[source],
            ratings=self.ratings[source],
            query_size=self.query_size,
        )

    def batch(self, index: np.ndarray | Sequence[int]) -> TaskBatch:
        """Tasks ``index`` padded into a :class:`TaskBatch` on their own (support width: their
        longest support): what streaming training builds per step, so that no tensor of every
        task ever exists. The same rows as ``to_taskset().batch(index)``."""
        idx = np.asarray(index, dtype=np.int64)
        starts, ends = self.offsets[idx], self.offsets[idx + 1]
        lengths = ends - starts
        sizes = lengths - self.query_size
        width, q, n = int(sizes.max()) if len(idx) else 0, self.query_size, len(idx)
        task = np.repeat(np.arange(n), lengths)
        flat = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = np.repeat(starts, lengths) + flat
        spt = flat < sizes[task]
        x_spt, y_spt = np.zeros((n, width), dtype=np.int64), np.zeros((n, width), np.float32)
        x_qry, y_qry = np.zeros((n, q), dtype=np.int64), np.zeros((n, q), dtype=np.float32)
        x_spt[task[spt], flat[spt]] = self.items[source[spt]]
        y_spt[task[spt], flat[spt]] = self.ratings[source[spt]]
        qpos = flat[~spt] - sizes[task[~spt]]
        x_qry[task[~spt], qpos] = self.items[source[~spt]]
        y_qry[task[~spt], qpos] = self.ratings[source[~spt]]
        return TaskBatch(
            users=torch.from_numpy(self.user_rows[idx].astype(np.int64)),
            x_spt=torch.from_numpy(x_spt),
            y_spt=torch.from_numpy(y_spt),
            mask_spt=torch.arange(width).unsqueeze(0) < torch.from_numpy(sizes).unsqueeze(1),
            x_qry=torch.from_numpy(x_qry),
            y_qry=torch.from_numpy(y_qry),
            mask_qry=torch.ones(n, q, dtype=torch.bool),
        )

    def batches(
        self, batch_size: int, generator: np.random.Generator, bucket: int = 1
    ) -> Iterator[TaskBatch]:
        """Every task once, shuffled, in batches built as they are needed (:meth:`batch`);
        with ``bucket > 1`` sorted by size within pools of ``bucket`` batches, as
        :meth:`TaskSet.batches` does."""
        for group in batch_groups(self.support_sizes, batch_size, generator, bucket):
            yield self.batch(group)

    def to_taskset(self) -> TaskSet:
        """The same tasks as padded tensors (support width: the longest support)."""
        n, q = len(self), self.query_size
        sizes = self.support_sizes.astype(np.int64)
        width = int(sizes.max()) if n else 0
        task = np.repeat(np.arange(n), np.diff(self.offsets))
        pos = np.arange(len(self.items)) - self.offsets[:-1][task]
        spt = pos < sizes[task]
        qry = ~spt
        x_spt, y_spt = np.zeros((n, width), dtype=np.int64), np.zeros((n, width), np.float32)
        x_qry, y_qry = np.zeros((n, q), dtype=np.int64), np.zeros((n, q), dtype=np.float32)
        x_spt[task[spt], pos[spt]], y_spt[task[spt], pos[spt]] = (
            self.items[spt],
            self.ratings[spt],
        )
        qpos = pos[qry] - sizes[task[qry]]
        x_qry[task[qry], qpos], y_qry[task[qry], qpos] = self.items[qry], self.ratings[qry]
        mask_spt = torch.arange(width).unsqueeze(0) < torch.from_numpy(sizes).unsqueeze(1)
        batch = TaskBatch(
            users=torch.from_numpy(self.user_rows.astype(np.int64)),
            x_spt=torch.from_numpy(x_spt),
            y_spt=torch.from_numpy(y_spt),
            mask_spt=mask_spt,
            x_qry=torch.from_numpy(x_qry),
            y_qry=torch.from_numpy(y_qry),
            mask_qry=torch.ones(n, q, dtype=torch.bool),
        )
        return TaskSet(name=self.name, user_ids=self.user_ids, batch_all=batch, support_sizes=sizes)


def build_flat_tasks(
    name: str,
    starts: np.ndarray,
    user_ids: np.ndarray,
    items: np.ndarray,
    ratings: np.ndarray,
    user_rows: np.ndarray,
    cfg: DataConfig,
) -> FlatTasks:
    """One task per user: task ``t`` is ``items`` / ``ratings`` ``starts[t]`` up to the next
    start, in the order :func:`select_tasks` gave; ``items`` are catalogue rows,
    ``user_rows`` the user-table row of each task's user.

    The query is ``cfg.query_size`` items drawn with a generator seeded by ``(seed, user)``, so
    a user's split does not depend on which other users are present; the support keeps the
    remaining items in their order. The draw is the one Python loop (a few microseconds a
    task); the rest is vectorised.
    """
    n_ratings, q = len(items), cfg.query_size
    counts = np.diff(np.r_[starts, n_ratings]).astype(np.int64)
    is_query = np.zeros(n_ratings, dtype=bool)
    for uid, start, count in zip(user_ids.tolist(), starts.tolist(), counts.tolist(), strict=True):
        rng = np.random.default_rng((cfg.seed, uid))
        is_query[start + rng.choice(count, size=q, replace=False)] = True
    task = np.repeat(np.arange(len(starts), dtype=np.int64), counts)
    order = np.argsort(task * 2 + is_query, kind="stable")  # support first, then the query
    return FlatTasks(
        name=name,
        user_ids=np.asarray(user_ids, dtype=np.int64),
        user_rows=np.asarray(user_rows, dtype=np.int64),
        offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        items=items[order].astype(np.int32),
        ratings=ratings[order].astype(np.float32),
        query_size=q,
    )

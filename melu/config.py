"""Frozen configuration dataclasses, saved inside every checkpoint.

Each config round-trips through plain dicts so that a checkpoint loads with
``torch.load(weights_only=True)`` and needs no pickled classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

Dataset = Literal["melu", "ml-1m", "ml-100k", "ml-latest-small", "ml-25m", "ml-32m"]
DATASETS: tuple[Dataset, ...] = ("melu", "ml-1m", "ml-100k", "ml-latest-small", "ml-25m", "ml-32m")
# The GroupLens CSV releases: half stars, no demographics, tags; split into scenarios by time.
CSV_DATASETS: tuple[Dataset, ...] = ("ml-latest-small", "ml-25m", "ml-32m")

T = TypeVar("T")


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as a plain dict (tuples become lists so that JSON and weights_only load it)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config; unknown keys are an error so a stale checkpoint is noticed, not ignored."""
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


@dataclass(frozen=True)
class RatingScale:
    """The ratings a dataset allows: ``low`` to ``high`` in steps of ``step`` (ML-1M: 1..5 in
    whole stars; the CSV releases: 0.5..5.0 in half stars)."""

    low: float = 1.0
    high: float = 5.0
    step: float = 1.0

    def values(self) -> tuple[float, ...]:
        """Every allowed rating, lowest first."""
        count = round((self.high - self.low) / self.step) + 1
        return tuple(round(self.low + i * self.step, 6) for i in range(count))

    def contains(self, value: float) -> bool:
        """Whether ``value`` is one of :meth:`values` (to a millionth of a star)."""
        if not self.low - 1e-6 <= value <= self.high + 1e-6:
            return False
        steps = (value - self.low) / self.step
        return abs(steps - round(steps)) < 1e-6

    def describe(self) -> str:
        """``"0.5..5.0 in steps of 0.5"``: for messages that name the scale."""
        decimals = len(f"{self.step:g}".partition(".")[2])
        return f"{self.low:.{decimals}f}..{self.high:.{decimals}f} in steps of {self.step:g}"


@dataclass(frozen=True)
class DataConfig:
    """How raw ratings become cold-start tasks (MeLU protocol by default).

    Every field added after the first release has a default that reproduces what checkpoints
    written before it did, so ``from_dict`` of an old checkpoint's dict rebuilds its data.
    """

    dataset: Dataset = "melu"
    min_ratings: int = 13
    max_ratings: int = 100
    query_size: int = 10
    validation_fraction: float = 0.1
    # ML-1M / ML-100K: how the four scenarios are carved from plain ratings (newest release
    # years are new items, a seeded share of users are new users). The CSV releases split by
    # time instead, and new_user_fraction sets the cutoff (split_time).
    new_user_fraction: float = 0.2
    new_item_fraction: float = 0.2
    seed: int = 0
    # A user with more than max_ratings ratings in a scenario: "drop" the user (MeLU), or
    # "truncate" to the user's first max_ratings ratings in time. The CSV releases truncate
    # (DataConfig.for_dataset): on ml-latest-small MeLU's rule drops 40% of the users, the
    # most active ones (training + validation tasks 300 -> 488, new-user tasks 69 -> 122), and
    # a new user's first ratings are exactly what cold start sees.
    long_users: Literal["drop", "truncate"] = "drop"
    # CSV releases: the cutoff of the time split, in Unix seconds. A user whose first rating
    # comes after it is a new user, an item first rated after it a new item. None: the time by
    # which 1 - new_user_fraction of the users had given their first rating; prepare() pins
    # the value it used here, so a checkpoint records it.
    split_time: int | None = None
    # The ratings' scale (low, high, step), read from the data by prepare() and pinned here so
    # that a checkpoint carries it; the default is ML-1M's, which every checkpoint written
    # before the field existed was trained on. See RatingScale and DataConfig.scale.
    rating_scale: tuple[float, float, float] = (1.0, 5.0, 1.0)
    # CSV releases: an item's tags are the release's top_tags most applied tags (lower-cased)
    # that were applied to it up to split_time.
    top_tags: int = 100

    @property
    def scale(self) -> RatingScale:
        return RatingScale(*self.rating_scale)

    @classmethod
    def for_dataset(cls, dataset: Dataset, **overrides: Any) -> DataConfig:
        """The recommended configuration of ``dataset``: MeLU's defaults, and for the CSV
        releases their count rule (``long_users="truncate"``, see the field)."""
        base: dict[str, Any] = {"dataset": dataset}
        if dataset in CSV_DATASETS:
            base["long_users"] = "truncate"
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class ModelConfig:
    """The base learner: feature embeddings feeding an MLP (MeLU: dim 32, MLP 64-64-1)."""

    embedding_dim: int = 32
    hidden: tuple[int, ...] = (64, 64)
    # Fields the item encoder uses; a field the dataset lacks is skipped.
    item_fields: tuple[str, ...] = ("rate", "genre", "director", "actor", "year")
    # No zip code by default: with ~1,800 codes for ~2,400 training users it acts as a user id,
    # memorises training users and never transfers to new ones (validation MAE 0.772 -> 0.755
    # without it, with item ids; see docs/results.md). The "melu" preset keeps it.
    user_fields: tuple[str, ...] = ("gender", "age", "occupation")
    # Predict a residual around the user's mean support rating instead of the raw rating.
    residual: bool = True
    embedding_dropout: float = 0.1
    # Learned identity embedding for items seen in training; new items fall back to a shared
    # learned "unknown" vector, so they still score from their features.
    item_id_embedding: bool = True
    item_id_dropout: float = 0.2
    # Support statistics (mean, std, log count) appended to every item's features.
    task_context: bool = False
    # "rating": MeLU's objective, the rating of an item the user chose to watch (the default of
    # this class, so checkpoints written before the field existed load unchanged).
    # "rating+watch": also learn which items a user watches (melu.objectives): a multinomial
    # over the catalogue from the user's rated items; the ranking score combines the two.
    objective: Literal["rating", "rating+watch"] = "rating"
    # The watch model's width: item input/output embeddings and the user vector. 128 ranked
    # better than 256 on validation users (Recall@10 from 5 ratings 0.381 vs 0.376) and
    # trains in about half the time.
    watch_dim: int = 128
    # Rate at which training replaces a training item's id by "unknown" in the watch model, so
    # its content part learns to rank new items (which have no id) on its own.
    watch_id_dropout: float = 0.1
    # How support items are pooled into the user vector: their sum over sqrt(n) (Mult-DAE's
    # L2 normalisation of a binary input) or their mean.
    watch_pooling: Literal["sqrt", "mean"] = "sqrt"
    # The user vector's nonlinearity: tanh (Mult-DAE) or none (a low-rank linear model).
    watch_activation: Literal["tanh", "none"] = "tanh"
    # Ranking score = watch logit (log P(watch) up to a per-user constant) + this weight times
    # the predicted rating. Chosen on validation users: 0.5 ranks best from 3 to 20 ratings;
    # larger weights order a user's own 5- and 1-star items better but rank worse.
    rank_rating_weight: float = 0.5
    # Support ratings below this do not enter the watch model's user vector (0: every rating
    # does, as in checkpoints written before the field existed); they still adapt the rating
    # head. Pooled like the others, a 1-star film pulled its own kind into the list (its
    # learned weight stayed positive). The default preset's 3, against 0, on validation users
    # (3 seeds, retrained): loved-genre share 0.42 -> 0.56, 5-star above 1-star support pairs
    # 0.87 -> 0.94 from 5 ratings and 0.84 -> 0.88 from 10, Recall@10 from 3/5/10/20 ratings
    # 0.345/0.373/0.386/0.382 -> 0.340/0.371/0.381/0.383 (within seed noise). A cut at 4,
    # tried at scoring time only, cost 0.01-0.02 (benchmarks/watch_min_rating.py).
    watch_min_rating: float = 0.0


@dataclass(frozen=True)
class MetaConfig:
    """The MAML meta-learner."""

    local_steps: int = 5
    local_lr: float = 0.01
    # "head": MeLU's local update (decision layers only); "all": every parameter adapts.
    adapt: Literal["head", "all"] = "head"
    first_order: bool = False
    learn_local_lr: bool = False
    # How the local steps run over a batch of tasks. "auto": the closed-form head update
    # (melu.closed_form) whenever it applies (head only, fixed rate), else "vmap":
    # torch.func.grad per task, vmapped. Both compute the same function (tested).
    local_update: Literal["auto", "vmap"] = "auto"
    # Watch objective (ModelConfig.objective "rating+watch"): each training task also gives a
    # cold-start episode, a support of uniform size in this range drawn from all the user's
    # ratings, every other rating a softmax target (denoising, as cold start looks).
    watch_support: tuple[int, int] = (3, 20)
    # Only ratings at least this high are softmax targets (1: every rated item is "watched");
    # 4, the items a user liked, ranks better on validation users (Recall@10 0.371 vs 0.365
    # from 5 ratings).
    watch_target_min: float = 4.0
    # Weight of the watch loss beside the query MSE.
    watch_weight: float = 1.0
    # Weight of a support-order term in the watch loss: for every pair of support items rated
    # differently, -log sigmoid(logit of the higher rated - logit of the lower rated), so that
    # the ranking reflects the ratings given (a 1-star rating pushes its kind away).
    # 0.2 on validation users: pairs ordered right from 5 ratings 0.85 -> 0.88, loved-genre
    # share 0.39 -> 0.43, Recall@10 unchanged (0.381); 1.0 costs recall (0.350).
    watch_order_weight: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Meta-training."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    schedule: Literal["none", "cosine"] = "cosine"
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    dtype: Literal["float32", "float64"] = "float32"
    # Draw a new query/support split of every training user each epoch (episodic sampling).
    resample_queries: bool = True


# Named model configurations. "melu" is the paper's architecture (rate, genre, director and
# actor embeddings; no year, no residual, no dropout) so results stay comparable with MeLU.
PRESETS: dict[str, ModelConfig] = {
    # MeLU's network for ratings plus the watch model, whose score ranks the catalogue; only
    # ratings of 3 and more shape its user vector.
    "default": ModelConfig(objective="rating+watch", watch_min_rating=3.0),
    "melu": ModelConfig(
        item_fields=("rate", "genre", "director", "actor"),
        user_fields=("gender", "age", "occupation", "zip"),
        residual=False,
        embedding_dropout=0.0,
        item_id_embedding=False,
        item_id_dropout=0.0,
    ),
}

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
    # "rating": MeLU's network and objective (the paper's model, the "melu" preset): the
    # rating of an item the user chose to watch, its decision layers adapted per user.
    # "taste": the default preset's model (melu.taste): per-user fast weights that give both a
    # ranking over the catalogue and the predicted ratings.
    objective: Literal["rating", "taste"] = "rating"
    # The taste model's width: item input/output embeddings and the user vector.
    taste_dim: int = 128
    # Width of the rating taste (the fast vector scored against each item's rating taste).
    rating_dim: int = 32
    # Rate at which training replaces an item's id by "unknown" in the taste model, so that
    # its content part learns to rank new items (which have no id) on its own.
    taste_id_dropout: float = 0.1
    # Rate at which training replaces each user field by "not given" (index 0): a request
    # without demographics then gets what the model learned for that, not an untrained vector.
    user_field_dropout: float = 0.0
    # Support ratings at least this high enter the pooled user vector (the taste model's
    # starting point); lower ones still adapt it through the local steps and the ratings.
    pool_min_rating: float = 3.0
    # A rating at least this high is "liked": the taste model's softmax targets, and the
    # relevant items of the catalogue protocol.
    liked_rating: float = 4.0
    # The taste model's co-occurrence term (melu.cooccurrence) in the ranking logit. Off in
    # the default preset since stop 34: with EDLAE's fold-in blended into the list it adds
    # nothing the lists need (validation Recall@10 from 3/5/10/20 ratings, seeds 0-2: 0.372 /
    # 0.399 / 0.418 / 0.414 without it, with the step below, against 0.374 / 0.401 / 0.417 /
    # 0.411 with it), and beside it the local step carried less of the list (x1 minus x0 at
    # 10 / 20 ratings +0.014 / +0.012 without it, +0.003 / +0.006 with it; docs/results.md).
    cooccurrence: bool = True
    # Neighbours kept per item in the co-occurrence term (melu.cooccurrence); 0 keeps all.
    # 256 ranks as all of them did on MeLU's validation users (Recall@10 from 3/5/10/20
    # ratings 0.357/0.387/0.406/0.403 against 0.358/0.388/0.396/0.399, seed 0) and halves the
    # epoch (0.054 s against 0.122 s a meta-batch on one core); at 87k items "all" would not fit.
    cooccurrence_neighbours: int = 256
    # EDLAE's fold-in blended into the list (melu.fold_in): neighbours kept per item, 0 for no
    # fold-in. How much of it each support size takes is chosen on validation users.
    fold_in_neighbours: int = 0
    # Ranking score = taste logit + this weight times the predicted rating.
    rank_rating_weight: float = 0.0
    # Rank items predicted below the user's own mean rating (shrunk towards the population's)
    # after every other item, so that no list shows a film the model expects the user to rate
    # below their average while another film clears it.
    rank_floor: bool = False
    # A per-user preference over the item genres in the ranking logit (``+ genre . g_i``, g_i
    # the film's genres as 0/1): a fast weight that starts at 0 for everyone, so what it adds
    # to a list is the local step's alone (the meta-learned start has no genre term).
    genre_preference: bool = False

    @property
    def taste_fast_weights(self) -> tuple[str, ...]:
        """The fast weights the taste model has (:data:`FAST_WEIGHTS`; without the
        co-occurrence term, not its two; without the genre preference, not it): what its step
        sizes exist for and what ``MetaConfig.fast_weights`` may name."""
        return tuple(
            name
            for name in FAST_WEIGHTS
            if (self.cooccurrence or name not in COOCCURRENCE_WEIGHTS)
            and (self.genre_preference or name != "genre")
        )


# The taste model's fast weights (melu.taste.FastWeights), in the order the local update and
# the checkpoint's step sizes list them.
FAST_WEIGHTS: tuple[str, ...] = (
    "user",
    "popularity",
    "cooccurrence",
    "support_weights",
    "rating_bias",
    "rating_taste",
    "genre",
)
# The fast weights of the predicted rating (MetaConfig.rating_local_lr).
RATING_WEIGHTS: tuple[str, ...] = ("rating_bias", "rating_taste")
# The fast weights of the co-occurrence term (ModelConfig.cooccurrence): the trust and the
# support items' weights. A model without the term has no step for them.
COOCCURRENCE_WEIGHTS: tuple[str, ...] = ("cooccurrence", "support_weights")


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
    # The taste model (ModelConfig.objective "taste"): each training task gives a cold-start
    # episode, a support of uniform size in this range drawn from all the user's ratings, every
    # other rating a target (denoising, as cold start looks).
    episode_support: tuple[int, int] = (3, 20)
    # Which of the taste model's fast weights the local steps adapt (FAST_WEIGHTS).
    fast_weights: tuple[str, ...] = FAST_WEIGHTS
    # Weight of the ratings' squared error beside the liked items' likelihood: in the support
    # loss of the local steps, and in the query loss of meta-training.
    inner_rating_weight: float = 0.5
    rating_weight: float = 0.5
    # The taste model: the starting step size of its rating fast weights (rating_bias,
    # rating_taste); None takes local_lr. On MeLU's validation users (stop 34, seeds 0-2) 0.5
    # beside the default's 2.0 kept the lists (Recall@10 0.374 / 0.401 / 0.420 / 0.415 from 3 /
    # 5 / 10 / 20 ratings against 0.372 / 0.399 / 0.418 / 0.415) and predicted the ratings
    # better (held-out MAE from 1-3 ratings 0.784 against 0.808 after the recalibration); the
    # default preset sets it (and, with it, a larger step on the other fast weights).
    rating_local_lr: float | None = None
    # The taste model with the genre preference (ModelConfig.genre_preference): its starting
    # step size; None takes local_lr.
    genre_local_lr: float | None = None


def adapted_fast_weights(model: ModelConfig, meta: MetaConfig) -> tuple[str, ...]:
    """The fast weights the taste model's local steps adapt, in :data:`FAST_WEIGHTS` order:
    ``meta.fast_weights``, where the whole :data:`FAST_WEIGHTS` (the field's default, and
    what MeLU's network keeps) means every one the model has."""
    every = tuple(meta.fast_weights) == FAST_WEIGHTS
    wanted = model.taste_fast_weights if every else meta.fast_weights
    return tuple(name for name in FAST_WEIGHTS if name in wanted)


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
    # The taste model: the weights it is judged and kept with are an exponential moving average
    # over epochs (after each epoch, ``average = d * average + (1 - d) * weights``); 0 keeps
    # each epoch's own. With 0.5, on MeLU's validation users (seeds 0-2, judged on other
    # support draws than the selection's; benchmarks/weight_average.py) the taste model's own
    # list rose by +0.004 / +0.003 / +0.003 Recall@10 (mean over 3/5/10/20 ratings; 0.7, from
    # every epoch's saved weights: +0.001 / +0.003 / +0.003); the served list, with the fold-in
    # chosen after training, tied (-0.003 / +0.001 / +0.002); where no fold-in is fitted, the
    # model's own list is the served one. MeLU's network keeps its best epoch's own weights.
    average_decay: float = 0.5


@dataclass(frozen=True)
class Preset:
    """A named model with the local update that goes with it."""

    model: ModelConfig
    meta: MetaConfig


# Named configurations. "melu" is the paper's architecture (rate, genre, director and actor
# embeddings; no year, no residual, no dropout) and local update (5 steps of the decision
# layers), so that results stay comparable with MeLU.
PRESETS: dict[str, Preset] = {
    # The taste model: one local step of its fast weights, from a meta-learned start; no
    # co-occurrence term (EDLAE's fold-in gives the list its item-item view).
    "default": Preset(
        # Rating weight 0.5 on validation users (seed 0, with the floor): Recall@10 from
        # 3/5/10/20 ratings 0.358/0.389/0.405/0.400 at 0, 0.362/0.393/0.407/0.399 at 0.5,
        # 0.362/0.395/0.409/0.401 at 1.0.
        ModelConfig(
            objective="taste",
            user_field_dropout=0.5,
            rank_rating_weight=0.5,
            rank_floor=True,
            fold_in_neighbours=512,
            cooccurrence=False,
            genre_preference=True,
        ),
        # Step size 4.0 on the user vector and popularity, 0.5 on the rating fast weights
        # (MetaConfig.rating_local_lr says why). On MeLU's validation users (seeds 0-2,
        # benchmarks/variants_probe.py), with the rating step at 0.5, steps of 2 / 3 / 4 / 6
        # all keep the served lists (Recall@10 from 3 / 5 / 10 / 20 ratings within 0.003 of
        # each other); the step's share of them (x1 - x0 at 10 / 20 ratings) grows from
        # +0.012 / +0.014 at 2.0 to +0.018 / +0.021 at 4.0 and no further at 6.0 (+0.018 /
        # +0.021), where the lists from 3 and 5 ratings begin to slip. (Stop 34's step 4.0
        # overreached because the rating fast weights took it too.)
        # Since stop 36 the model has the genre preference, its step starting at 2.0: on the
        # same users (seeds 0-2) the served lists keep (0.372 / 0.399 / 0.418 / 0.416 against
        # 0.373 / 0.400 / 0.420 / 0.417 without it; 1.0: 0.372 / 0.400 / 0.419 / 0.416; 4.0:
        # 0.369 / 0.395 / 0.418 / 0.414, which slips) and the step's share of them grows to
        # +0.024 / +0.027 (+0.022 / +0.022 at 1.0; +0.018 / +0.022 without it).
        MetaConfig(
            local_steps=1,
            local_lr=4.0,
            fast_weights=("user", "popularity", "rating_bias", "rating_taste", "genre"),
            rating_local_lr=0.5,
            genre_local_lr=2.0,
        ),
    ),
    "melu": Preset(
        ModelConfig(
            item_fields=("rate", "genre", "director", "actor"),
            user_fields=("gender", "age", "occupation", "zip"),
            residual=False,
            embedding_dropout=0.0,
            item_id_embedding=False,
            item_id_dropout=0.0,
        ),
        MetaConfig(),
    ),
}

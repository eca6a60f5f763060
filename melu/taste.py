"""The taste model: per-user fast weights that rank the catalogue and predict the ratings.

A new user's few ratings (the support) become a handful of fast weights, and one function of
those weights gives both outputs for every item ``i``:

- the ranking logit (log P(the user watches and likes i), up to a constant):
  ``user . out_i + popularity * pop_i``, and, in a model with the co-occurrence term
  (:attr:`ModelConfig.cooccurrence`; the default preset's has none since stop 34),
  ``+ cooccurrence * z_i``, where ``z = sum_j support_weights_j P[j, :] / sqrt(n)`` is the
  training users' item-item co-occurrence from the support items (:mod:`melu.cooccurrence`),
  and, in a model with the genre preference (:attr:`ModelConfig.genre_preference`; the
  default preset's has it since stop 36), ``+ genre . g_i`` (``g_i`` the film's genres as
  0/1; the preference starts at 0, so the local step alone sets it);
- the predicted rating: ``mu + bias_i + rating_bias + rating_taste . taste_i``.

The default model leaves the item-item view to EDLAE's fold-in, blended into the list after
training (:mod:`melu.fold_in`): with it, the co-occurrence term added nothing to validation
users' lists, and beside it the local step carried less of the list (docs/results.md).

The fast weights start from a meta-learned initialisation computed from the support in one
pass (the amortised part: the support's item embeddings scaled per rating value and pooled,
plus the user's demographics, give ``user``; the support's residuals from the item biases,
shrunk towards 0 by a learned count, give ``rating_bias`` and ``rating_taste``). The local
update then takes ``MetaConfig.local_steps`` gradient steps on a support-only loss (MAML's
inner loop, second order by default): the leave-one-out likelihood of each liked support item
under a softmax over the catalogue (the other support items excluded), plus the squared error
of the support's ratings. Each fast weight has its own learned step size (Meta-SGD; a vector
for the two vectors) scaled by a learned function of the support's size, so that a step
trusts three ratings less than twenty. Meta-training differentiates the query loss (the full
softmax over the episode's other liked items, plus their ratings' squared error) through the
steps.

Everything here works on feature-id tables (``[..., W]``, as :class:`melu.data.Catalogue`
stores them), so training, evaluation and the service hand it the same inputs as the paper's
network (:mod:`melu.model`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from melu.config import FAST_WEIGHTS, RATING_WEIGHTS, MetaConfig, ModelConfig, RatingScale
from melu.cooccurrence import Cooccurrence
from melu.embeddings import FieldEmbedding
from melu.features import FieldSpec
from melu.fold_in import FoldIn

# Fast weights whose step size is a vector (one per dimension); the others have one scalar.
VECTOR_FAST_WEIGHTS: tuple[str, ...] = ("user", "rating_taste", "genre")
# Masked logits: finite, so that second-order gradients of a softmax stay finite.
MASKED = -1e4
# Support sizes at which the step schedule changes (buckets 1-3, 4-7, 8-15, 16-31, 32 and more):
# how far the local steps go is chosen per bucket on validation users (choose_step_schedule).
SCHEDULE_EDGES: tuple[int, ...] = (4, 8, 16, 32)
# The buckets' names, for logs and reports.
BUCKET_LABELS: tuple[str, ...] = ("1-3", "4-7", "8-15", "16-31", "32+")


def bucket(mask: torch.Tensor) -> torch.Tensor:
    """``[B]``: each support's bucket of :data:`SCHEDULE_EDGES` by its size; ``mask [B, S]``."""
    n = mask.sum(-1)
    edges = torch.tensor(SCHEDULE_EDGES, device=n.device, dtype=n.dtype)
    return torch.bucketize(n, edges, right=True)


class ItemSide(NamedTuple):
    """What the model knows of items ``[..., ]`` before any user: computed once per catalogue
    in evaluation and serving (:meth:`TasteNet.item_side`)."""

    ids: torch.Tensor  # [...] item-id vocabulary index (0: an item without training ratings)
    embed: torch.Tensor  # [..., D] pooled into the user vector
    out: torch.Tensor  # [..., D] scored against the user vector
    popularity: torch.Tensor  # [...] the logit's item bias
    rating_bias: torch.Tensor  # [...] the item's rating bias
    taste: torch.Tensor  # [..., Dr] scored against the user's rating taste
    # [..., G] the item's genres as 0/1, scored against the user's genre preference (G = 0
    # in a model without one: ModelConfig.genre_preference)
    genres: torch.Tensor

    def take(self, index: torch.Tensor) -> ItemSide:
        """The rows ``index`` (any shape) of a catalogue's side."""
        return ItemSide(*(part[index] for part in self))


class FastWeights(NamedTuple):
    """A batch of users' fast weights (leading dim ``B``); see :data:`FAST_WEIGHTS`."""

    user: torch.Tensor  # [B, D], before the tanh: the user vector is tanh(user)
    popularity: torch.Tensor  # [B]
    cooccurrence: torch.Tensor  # [B]
    support_weights: torch.Tensor  # [B, S]
    rating_bias: torch.Tensor  # [B]
    rating_taste: torch.Tensor  # [B, Dr]
    genre: torch.Tensor  # [B, G]: the genre preference (G = 0 without one)


class Support(NamedTuple):
    """A batch of supports with what every step needs: user field ids ``[B, U]``, the items'
    catalogue rows and side, ratings, mask and liked mask ``[B, S]``, and in training the
    user's own items ``[B, V]`` (the co-occurrence's leave-the-user-out term), else None."""

    users: torch.Tensor
    rows: torch.Tensor  # [B, S] catalogue rows (0: padding)
    side: ItemSide
    ratings: torch.Tensor
    mask: torch.Tensor
    liked: torch.Tensor
    own: torch.Tensor | None
    # [B, S, D]: each item's part of the pooled user vector (before the tanh); 0 for items
    # that do not enter it. Filled by TasteNet.pool.
    parts: torch.Tensor | None = None


class TasteNet(nn.Module):
    """The meta-parameters of the taste model and its pure functions of fast weights."""

    def __init__(
        self,
        user_specs: Sequence[FieldSpec],
        item_specs: Sequence[FieldSpec],
        cfg: ModelConfig,
        meta: MetaConfig,
        scale: RatingScale,
    ) -> None:
        super().__init__()
        ids = next((s for s in item_specs if s.name == "item"), None)
        if ids is None:
            raise ValueError("the taste model needs the item id field")
        self.cfg, self.scale = cfg, scale
        self.inner_rating_weight = meta.inner_rating_weight
        self.id_col = ids.start
        dim, rating_dim = cfg.taste_dim, cfg.rating_dim
        self.widths = {
            "embed": dim,
            "out": dim,
            "popularity": 1,
            "rating_bias": 1,
            "taste": rating_dim,
        }
        width = sum(self.widths.values())
        content = [s for s in item_specs if s.name in cfg.item_fields]
        self.item_id = nn.Embedding(ids.vocab_size, width)
        self.content = FieldEmbedding(content, cfg.embedding_dim)
        self.content_proj = nn.Linear(len(content) * cfg.embedding_dim, width, bias=False)
        nn.init.normal_(self.item_id.weight, std=0.1)
        with torch.no_grad():
            # Biases and rating tastes start small: the first epochs learn the user vector.
            self.item_id.weight[:, 2 * dim :].mul_(0.1)
        genre = next((s for s in item_specs if s.name == "genre"), None)
        if cfg.genre_preference and genre is None:
            raise ValueError("the genre preference needs the genre field")
        # (start column, width, vocabulary size) of the genre ids, or None.
        self.genre_cols = (
            (genre.start, genre.width, genre.vocab_size)
            if cfg.genre_preference and genre is not None
            else None
        )
        self.user_specs = [s for s in user_specs if s.name in cfg.user_fields]
        self.user = FieldEmbedding(self.user_specs, cfg.embedding_dim)
        self.user_in = nn.Linear(self.user.out_dim, dim) if self.user_specs else None
        levels = len(scale.values()) + 1  # index 0: padding
        self.rating_scale = nn.Parameter(torch.ones(levels))
        self.rating_shift = nn.Parameter(torch.zeros(levels, dim))
        self.mean = nn.Parameter(torch.tensor((scale.low + scale.high) / 2))
        # Pseudo-counts of the rating fast weights' shrinkage towards the population.
        self.log_shrinkage = nn.Parameter(torch.full((2,), math.log(3.0)))
        # Co-occurrence: each rating value's weight, and the trust's start (a function of n).
        # (None without it: a model whose logit has no co-occurrence term carries none.)
        self.cooccurrence_level = (
            nn.Parameter(torch.linspace(0.0, 1.0, levels)) if cfg.cooccurrence else None
        )
        self.cooccurrence_start = nn.Parameter(torch.zeros(2)) if cfg.cooccurrence else None
        self.cooccurrence_table = (
            Cooccurrence(ids.vocab_size, cfg.cooccurrence_neighbours) if cfg.cooccurrence else None
        )
        # The local update: a step size per fast weight (a vector for the vectors) and a
        # learned function of the support's size that scales it.
        # Without the co-occurrence term its two fast weights stay 0 and have no step.
        sizes = {"user": dim, "rating_taste": rating_dim, "genre": self.n_genres}
        steppable = cfg.taste_fast_weights
        rating_lr = meta.local_lr if meta.rating_local_lr is None else meta.rating_local_lr
        genre_lr = meta.local_lr if meta.genre_local_lr is None else meta.genre_local_lr
        starts = {name: rating_lr for name in RATING_WEIGHTS} | {"genre": genre_lr}
        self.step_size = nn.ParameterDict(
            {
                name: nn.Parameter(
                    torch.full((sizes.get(name, 1),), starts.get(name, meta.local_lr))
                )
                for name in steppable
            }
        )
        # softplus(0.5413) = 1: every step starts at its step size whatever the support.
        self.step_gate = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor([0.5413, 0.0])) for name in steppable}
        )
        # How far the steps go, per support-size bucket (SCHEDULE_EDGES): 1 in training; after
        # it, chosen on validation users (melu.schedule), since steps meta-learned on training
        # users overreach on new users' few ratings (validation Recall@10 from 3 ratings 0.358
        # without the step, 0.344 with it; from 20 ratings 0.399 and 0.411).
        self.register_buffer("step_schedule", torch.ones(len(SCHEDULE_EDGES) + 1))
        self.step_schedule: torch.Tensor
        # The predicted ratings' affine recalibration per support-size bucket, (offset, slope):
        # the identity in training; after it, fitted on validation users (melu.schedule), since
        # the meta-learned shrinkage leaves a cold user's predictions too low (MeLU's validation
        # users, seed 0: by 0.28 stars from 1 rating, 0.17 from 3, 0.13 from 5, 0.01 from 20).
        identity = torch.tensor([0.0, 1.0]).repeat(len(SCHEDULE_EDGES) + 1, 1)
        self.register_buffer("rating_calibration", identity)
        self.rating_calibration: torch.Tensor
        # EDLAE's fold-in, blended into the list per support-size bucket (melu.fold_in): fitted
        # and weighed on validation users once training ends.
        self.fold_in = (
            FoldIn(len(SCHEDULE_EDGES) + 1, cfg.fold_in_neighbours)
            if cfg.fold_in_neighbours > 0
            else None
        )

    # --- items ---------------------------------------------------------------------------------

    @property
    def n_genres(self) -> int:
        """Width of the genre preference: the genre vocabulary without "unknown" (0: none)."""
        return 0 if self.genre_cols is None else self.genre_cols[2] - 1

    def genres(self, items: torch.Tensor) -> torch.Tensor:
        """``[..., G]``: each item's genres as 0/1 (from its padded genre ids)."""
        if self.genre_cols is None:
            return items.new_zeros((*items.shape[:-1], 0), dtype=self.mean.dtype)
        start, width, vocab = self.genre_cols
        ids = items[..., start : start + width]
        # A scatter, not one_hot's [..., W, vocab] int64 block: a sixth of the time.
        hot = ids.new_zeros((*ids.shape[:-1], vocab), dtype=self.mean.dtype)
        return hot.scatter_(-1, ids, 1.0)[..., 1:]

    def item_ids(self, items: torch.Tensor) -> torch.Tensor:
        """Item-id vocabulary indices of items ``[..., W]``; in training some become 0 (the
        unknown item, as a new item is), so the content part learns to stand alone."""
        ids = items[..., self.id_col]
        if not self.training or self.cfg.taste_id_dropout == 0:
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < self.cfg.taste_id_dropout
        return torch.where(drop, torch.zeros_like(ids), ids)

    def item_side(self, items: torch.Tensor) -> ItemSide:
        """:class:`ItemSide` of items ``[..., W]`` (feature ids)."""
        ids = self.item_ids(items)
        packed = self.item_id(ids) + self.content_proj(self.content(items))
        parts = dict(zip(self.widths, packed.split(list(self.widths.values()), -1), strict=True))
        return ItemSide(
            ids=items[..., self.id_col],
            embed=parts["embed"],
            out=parts["out"],
            popularity=parts["popularity"].squeeze(-1),
            rating_bias=parts["rating_bias"].squeeze(-1),
            taste=parts["taste"],
            genres=self.genres(items),
        )

    # --- users ---------------------------------------------------------------------------------

    def demographics(self, users: torch.Tensor) -> torch.Tensor:
        """``[B, D]``: the user fields' part of the user vector. In training each field is
        replaced by "not given" (index 0) with probability ``user_field_dropout``, so index 0
        learns what a request without that field should mean."""
        if self.user_in is None:
            return users.new_zeros(users.shape[0], self.cfg.taste_dim, dtype=self.mean.dtype)
        if self.training and self.cfg.user_field_dropout > 0:
            drop = torch.rand(users.shape, device=users.device) < self.cfg.user_field_dropout
            users = torch.where(drop, torch.zeros_like(users), users)
        return self.user_in(self.user(users))

    def levels(self, ratings: torch.Tensor) -> torch.Tensor:
        """Index of each rating on the scale, 1..L (0 for padding, whose rating is 0)."""
        scale = self.scale
        index = torch.round((ratings - scale.low) / scale.step).long() + 1
        return index.clamp(1, len(scale.values())) * (ratings > 0)

    def pool(self, support: Support) -> Support:
        """The support with each item's part of the pooled user vector (:attr:`Support.parts`):
        its input embedding scaled, and shifted, per rating value, over ``sqrt(n)``, for the
        ratings of at least ``pool_min_rating``."""
        side, ratings, mask = support.side, support.ratings, support.mask
        level = self.levels(ratings)
        pooled = (mask & (ratings >= self.cfg.pool_min_rating)).to(side.embed.dtype)
        n_pooled = pooled.sum(-1, keepdim=True).clamp(min=1.0)
        parts = side.embed * self.rating_scale[level].unsqueeze(-1) + self.rating_shift[level]
        return support._replace(parts=parts * (pooled / n_pooled.sqrt()).unsqueeze(-1))

    def start(self, support: Support) -> FastWeights:
        """The meta-learned initialisation of the fast weights, from the (pooled) support in one
        pass."""
        assert support.parts is not None, "pool the support first"
        side, ratings, mask = support.side, support.ratings, support.mask
        level = self.levels(ratings)
        user = support.parts.sum(-2) + self.demographics(support.users)
        real = mask.to(ratings.dtype)
        n = real.sum(-1)
        shrink_bias, shrink_taste = self.log_shrinkage.exp()
        residual = (ratings - self.mean - side.rating_bias) * real
        rating_bias = residual.sum(-1) / (n + shrink_bias)
        residual = residual - rating_bias.unsqueeze(-1) * real
        rating_taste = (residual.unsqueeze(-1) * side.taste).sum(-2) / (
            (n + shrink_taste).sqrt().unsqueeze(-1)
        )
        start, level_weight = self.cooccurrence_start, self.cooccurrence_level
        if start is None or level_weight is None:
            trust, support_weights = torch.zeros_like(n), torch.zeros_like(real)
        else:
            trust = nn.functional.softplus(start[0] + start[1] * torch.log1p(n))
            support_weights = level_weight[level] * real
        return FastWeights(
            user=user,
            popularity=torch.ones_like(n),
            cooccurrence=trust,
            support_weights=support_weights,
            rating_bias=rating_bias,
            rating_taste=rating_taste,
            genre=user.new_zeros(user.shape[0], self.n_genres),
        )

    # --- the two outputs -----------------------------------------------------------------------

    def cooccurrence(self, fast: FastWeights, support: Support) -> torch.Tensor | None:
        """``[B, V]``: the co-occurrence term over the item-id vocabulary, before the trust;
        None for a model without one (:attr:`ModelConfig.cooccurrence`)."""
        if self.cooccurrence_table is None:
            return None
        n = support.mask.sum(-1).clamp(min=1).to(fast.user.dtype)
        z = self.cooccurrence_table.scores(support.side.ids, fast.support_weights, support.own)
        return z / n.sqrt().unsqueeze(-1)

    def logits(self, fast: FastWeights, z: torch.Tensor | None, items: ItemSide) -> torch.Tensor:
        """Ranking logits ``[B, N]`` of items shared by the batch (``[N]`` side) or per user
        (``[B, N]`` side); ``z`` from :meth:`cooccurrence`."""
        user = torch.tanh(fast.user)
        if items.ids.dim() == 1:
            out = user @ items.out.t()
            pop = items.popularity.unsqueeze(0)
        else:
            out = torch.einsum("bd,bnd->bn", user, items.out)
            pop = items.popularity
        logits = out + fast.popularity.unsqueeze(-1) * pop
        if self.genre_cols is not None:
            if items.ids.dim() == 1:
                logits = logits + fast.genre @ items.genres.t()
            else:
                logits = logits + torch.einsum("bg,bng->bn", fast.genre, items.genres)
        if z is None:
            return logits
        co = z[:, items.ids] if items.ids.dim() == 1 else z.gather(1, items.ids)
        # The unknown item (id 0) has no co-occurrence.
        co = co * (items.ids > 0)
        return logits + fast.cooccurrence.unsqueeze(-1) * co

    def ratings(self, fast: FastWeights, items: ItemSide) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` (shared ``[N]`` or per-user ``[B, N]`` side)."""
        if items.ids.dim() == 1:
            taste = fast.rating_taste @ items.taste.t()
            bias = items.rating_bias.unsqueeze(0)
        else:
            taste = torch.einsum("bd,bnd->bn", fast.rating_taste, items.taste)
            bias = items.rating_bias
        return self.mean + bias + fast.rating_bias.unsqueeze(-1) + taste

    def calibrated(self, ratings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predicted ``ratings [B, N]`` through the affine map of each user's support-size
        bucket (:attr:`rating_calibration`; ``mask [B, S]``). The slope is positive, so a
        user's films keep their order."""
        offset, slope = self.rating_calibration[bucket(mask)].unbind(-1)
        return offset.unsqueeze(-1) + slope.unsqueeze(-1) * ratings

    @torch.no_grad()
    def uncalibrate(self) -> None:
        """Set :attr:`rating_calibration` back to the identity, what the model predicts with
        until the recalibration is fitted (choices made before it are judged so)."""
        line = self.rating_calibration
        line.copy_(torch.tensor([0.0, 1.0]).to(line).expand_as(line))

    # --- the local update ----------------------------------------------------------------------

    def support_loss(
        self,
        fast: FastWeights,
        support: Support,
        catalogue: ItemSide,
        allowed: torch.Tensor,
        logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B]``: the support's leave-one-out negative log-likelihood plus
        ``inner_rating_weight`` times its ratings' mean squared error.

        Leave-one-out: each liked support item is scored by the user vector without its own
        part (``tanh(user - part_j)``) and its co-occurrence with the other support items (the
        co-occurrence has no diagonal), against the allowed catalogue scored by the whole user
        vector. The local steps so fit each user's fast weights to predicting a rating they
        gave from the others, which is what the list is judged on, instead of to echoing the
        support. (The normaliser keeps the whole user vector: one pass over the catalogue
        instead of one per support item.)
        """
        assert support.parts is not None, "pool the support first"
        z = self.cooccurrence(fast, support)
        # ``logits``: the catalogue's logits under ``fast``, when the caller has them already
        # (melu.scoring reports the loss after the steps from the list's own logits).
        if logits is None:
            logits = self.logits(fast, z, catalogue)
        logits = logits.masked_fill(~allowed, MASKED)
        normaliser = torch.logsumexp(logits, -1, keepdim=True)
        held_out = torch.tanh(fast.user.unsqueeze(1) - support.parts)  # [B, S, D]
        side = support.side
        own = (held_out * side.out).sum(-1) + fast.popularity.unsqueeze(-1) * side.popularity
        if self.genre_cols is not None:
            # Not left out per item as the user vector is: the preference starts at 0, so the
            # first step's loss holds no support item's own pull on it.
            own = own + (fast.genre.unsqueeze(1) * side.genres).sum(-1)
        if z is not None:
            own = own + fast.cooccurrence.unsqueeze(-1) * z.gather(1, side.ids) * (side.ids > 0)
        # log p(j) = s_j - log(sum_allowed exp + exp s_j). (logaddexp's double backward is not
        # finite on every input; a two-term logsumexp is.)
        both = torch.stack([normaliser.expand_as(own), own])
        nll = torch.logsumexp(both, 0) - own
        liked = support.liked.to(own.dtype)
        watch = (nll * liked).sum(-1) / liked.sum(-1).clamp(min=1.0)
        real = support.mask.to(own.dtype)
        error = (self.ratings(fast, support.side) - support.ratings) ** 2
        rating = (error * real).sum(-1) / real.sum(-1).clamp(min=1.0)
        return watch + self.inner_rating_weight * rating

    def how_far(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: the multiple of the learned step each user's support size gets
        (:attr:`step_schedule`, per bucket of :data:`SCHEDULE_EDGES`); ``mask [B, S]``."""
        return self.step_schedule[bucket(mask)]

    @property
    def blends(self) -> bool:
        """Whether some support size's list takes EDLAE's fold-in (:mod:`melu.fold_in`)."""
        fold_in = self.fold_in
        return fold_in is not None and fold_in.fitted and bool((fold_in.weight != 0).any())

    def fold_in_weight(self, mask: torch.Tensor) -> torch.Tensor:
        """``[B]``: the weight of EDLAE's fold-in in each user's list (0: none), per bucket of
        their support size; ``mask [B, S]``."""
        if self.fold_in is None or not self.fold_in.fitted:
            return mask.new_zeros(mask.shape[0], dtype=self.step_schedule.dtype)
        return self.fold_in.weight[bucket(mask)]

    def steps(
        self,
        fast: FastWeights,
        support: Support,
        catalogue: ItemSide,
        allowed: torch.Tensor,
        steps: int,
        adapted: Sequence[str],
        order: Literal["second", "first", "none"],
        report: bool = True,
    ) -> tuple[FastWeights, torch.Tensor | None, torch.Tensor | None]:
        """``steps`` gradient steps on :meth:`support_loss` for the fast weights named in
        ``adapted``; returns the adapted weights and, with ``report``, the support loss before
        and after (one more pass over the catalogue; training skips it).

        ``order``: "second" keeps the steps differentiable (second-order MAML); "first" treats
        each step's gradient as a constant, so that the meta-gradient still reaches the start
        and the step sizes (first-order MAML); "none" detaches everything (evaluation, serving).
        Fast weights of different users never interact, so the gradient of the summed loss is
        every user's own gradient: no ``vmap`` is needed.
        """
        n = support.mask.sum(-1).to(fast.user.dtype)
        how_far = self.how_far(support.mask)
        current = fast
        if order == "none":
            current = FastWeights(*(t.detach() for t in current))
        before = after = None
        for step in range(steps + (1 if report else 0)):
            if step < steps:
                # Leaves of the graph before their gradient is asked for: a start that does not
                # depend on the meta-parameters (popularity's 1), or a detached one.
                current = FastWeights(
                    *(
                        t.requires_grad_() if name in adapted and not t.requires_grad else t
                        for name, t in zip(FAST_WEIGHTS, current, strict=True)
                    )
                )
            with torch.enable_grad():
                loss = self.support_loss(current, support, catalogue, allowed)
                total = loss.sum()
            if step == 0:
                before = loss.detach()
            if step == steps:
                after = loss.detach()
                break
            targets = [getattr(current, name) for name in adapted]
            # First order keeps the graph to the start (the meta-gradient reaches it) but not
            # through the gradient itself.
            grads = torch.autograd.grad(
                total, targets, create_graph=order == "second", retain_graph=order != "none"
            )
            updated = current._asdict()
            for name, value, grad in zip(adapted, targets, grads, strict=True):
                gate = self.step_gate[name]
                scale = how_far * nn.functional.softplus(gate[0] + gate[1] * torch.log1p(n))
                rate = self.step_size[name].clamp(min=0.0)
                if name not in VECTOR_FAST_WEIGHTS:
                    rate = rate.squeeze(0)
                shape = (-1,) + (1,) * (grad.dim() - 1)
                updated[name] = value - scale.view(shape) * rate * grad
            current = FastWeights(**updated)
            if order == "none":
                current = FastWeights(*(t.detach() for t in current))
        return current, before, after

"""MAML for the taste model: the local update of a batch of users, and the meta-loss.

:meth:`TasteLearner.adapt` is the one local update, used by meta-training, evaluation and the
service: the fast weights start from :meth:`TasteNet.start` and take ``local_steps`` gradient
steps on the support-only loss (:meth:`TasteNet.support_loss`). :meth:`TasteLearner.losses` is
the meta-objective of a batch of cold-start episodes: the query loss after the steps,
differentiated through them (second order unless ``MetaConfig.first_order``).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import nn

from melu.config import MetaConfig, adapted_fast_weights
from melu.objectives import Episode, candidates, multinomial_nll
from melu.taste import FAST_WEIGHTS, FastWeights, ItemSide, Support, TasteNet


class CatalogueSide(NamedTuple):
    """A catalogue as the taste model scores it: every row's :class:`ItemSide` ``[R]`` and
    which rows may be recommended (``recommendable [R]``: the items with training ratings)."""

    items: ItemSide
    recommendable: torch.Tensor


class TasteState(NamedTuple):
    """A batch of adapted users: their fast weights, their co-occurrence term ``[B, V]`` (None
    for a model without one), the support (for explanations and the user's mean), and the
    support loss before and after."""

    fast: FastWeights
    cooccurrence: torch.Tensor | None
    support: Support
    loss_before: torch.Tensor
    loss_after: torch.Tensor


class TasteLearner(nn.Module):
    """The taste model's meta-parameters and MAML on them."""

    def __init__(self, net: TasteNet, cfg: MetaConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        unknown = set(cfg.fast_weights) - set(FAST_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown fast weights {sorted(unknown)}; known: {FAST_WEIGHTS}")
        adapted = adapted_fast_weights(net.cfg, cfg)
        inert = set(adapted) - set(net.cfg.taste_fast_weights)
        if inert:
            raise ValueError(
                f"fast weights {sorted(inert)} are not in this model (the co-occurrence term's "
                "need ModelConfig.cooccurrence, the genre preference ModelConfig.genre_preference)"
            )
        self.adapted = list(adapted)

    def _steps(self, steps: int | None) -> int:
        return self.cfg.local_steps if steps is None else steps

    # --- catalogue -----------------------------------------------------------------------------

    def catalogue_side(self, table: torch.Tensor, recommendable: torch.Tensor) -> CatalogueSide:
        """Every row's item side (computed for the recommendable rows only: the softmax and the
        list never reach the others) and the recommendable mask, on ``table``'s device."""
        rows = recommendable.nonzero().squeeze(1)
        side = self.net.item_side(table[rows])
        full = ItemSide(
            *(
                part.new_zeros((table.shape[0], *part.shape[1:])).index_copy(0, rows, part)
                for part in side
            )
        )
        # Rows that are not recommendable keep their real id (0 for new items) so that the
        # co-occurrence term of a recommendable row is never looked up under a wrong id.
        full = full._replace(ids=table[:, self.net.id_col])
        return CatalogueSide(full, recommendable)

    # --- adaptation ----------------------------------------------------------------------------

    def support(
        self,
        users: torch.Tensor,
        rows: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        own: torch.Tensor | None = None,
    ) -> Support:
        liked = mask_spt & (y_spt >= self.net.cfg.liked_rating)
        side = self.net.item_side(x_spt)
        return Support(users, rows * mask_spt, side, y_spt * mask_spt, mask_spt, liked, own)

    def adapt(
        self,
        users: torch.Tensor,
        rows: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        catalogue: CatalogueSide,
        steps: int | None = None,
        own: torch.Tensor | None = None,
        order: Literal["second", "first", "none"] = "none",
        report: bool = True,
    ) -> TasteState:
        """Fast weights for a batch of users (``users [B, U]`` field ids, support catalogue
        ``rows [B, S]`` and their feature ids ``x_spt [B, S, W]``, ratings and mask ``[B, S]``);
        the meta-parameters are only read."""
        support = self.net.pool(self.support(users, rows, x_spt, y_spt, mask_spt, own))
        start = self.net.start(support)
        allowed = candidates(catalogue.recommendable, support.rows, support.mask)
        fast, before, after = self.net.steps(
            start,
            support,
            catalogue.items,
            allowed,
            self._steps(steps),
            self.adapted,
            order,
            report,
        )
        z = self.net.cooccurrence(fast, support)
        nothing = torch.zeros_like(fast.popularity)
        return TasteState(
            fast,
            z,
            support,
            before if before is not None else nothing,
            after if after is not None else nothing,
        )

    # --- outputs ---------------------------------------------------------------------------------

    def scores(
        self, state: TasteState, catalogue: CatalogueSide
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranking logits and predicted ratings ``[B, R]`` of every catalogue row (the ratings
        recalibrated for the support's size, :meth:`TasteNet.calibrated`)."""
        net = self.net
        logits = net.logits(state.fast, state.cooccurrence, catalogue.items)
        ratings = net.ratings(state.fast, catalogue.items)
        return logits, net.calibrated(ratings, state.support.mask)

    def predict(self, state: TasteState, items: torch.Tensor) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of items ``[B, N, W]`` (MeLU's query items),
        recalibrated as :meth:`scores`'."""
        ratings = self.net.ratings(state.fast, self.net.item_side(items))
        return self.net.calibrated(ratings, state.support.mask)

    def user_mean(self, state: TasteState) -> torch.Tensor:
        """``[B]``: the user's own mean rating, shrunk towards the population's by the learned
        pseudo-count of the rating bias (``(sum r + k mean) / (n + k)``): one 5-star rating is
        not a mean of 5. A list is held at or above it (:mod:`melu.ranking`).

        Measured against the alternative, the mean of the adapted predictions of the support
        items (validation users, seed 0, Recall@10 from 3/5/10/20 ratings): 0.358/0.389/0.405/
        0.400 here against 0.344/0.374/0.386/0.397 there (0.357/0.387/0.406/0.403 without a
        floor); both keep every top-10 film at or above the floor.
        """
        support = state.support
        real = support.mask.to(support.ratings.dtype)
        pseudo = self.net.log_shrinkage[0].exp()
        total = (support.ratings * real).sum(-1) + pseudo * self.net.mean
        return total / (real.sum(-1) + pseudo)

    def support_parts(
        self, state: TasteState, index: int, catalogue: CatalogueSide, rows: torch.Tensor
    ) -> torch.Tensor:
        """``[S, K]``: how much each support item of user ``index`` adds to the ranking logit
        of catalogue ``rows [K]``: its pooled part of the user vector (before the ``tanh``)
        dotted with the item's output embedding, plus (for a model with the co-occurrence term)
        its co-occurrence with the item times the trust. What "because you loved X" names
        (:meth:`CatalogueScorer.explain`)."""
        net, support = self.net, state.support
        assert support.parts is not None
        side = support.side.take(torch.tensor(index))  # [S, ...]
        ratings, mask = support.ratings[index], support.mask[index]
        items = catalogue.items.take(rows.to(catalogue.items.ids.device))
        pooled_part = support.parts[index] @ items.out.t()
        if net.genre_cols is not None:
            pooled_part = pooled_part + self._genre_parts(state, index, side, items)
        table = net.cooccurrence_table
        if table is None:
            return pooled_part
        ids = side.ids * mask
        single = table.scores(ids.unsqueeze(1), torch.ones_like(ratings)[:, None])
        n = mask.sum().clamp(min=1).to(side.embed.dtype)
        fast = state.fast
        weights = fast.support_weights[index].unsqueeze(-1)
        co = single[:, items.ids] * (items.ids > 0) * weights / n.sqrt()
        return pooled_part + fast.cooccurrence[index] * co

    def _genre_parts(
        self, state: TasteState, index: int, side: ItemSide, items: ItemSide
    ) -> torch.Tensor:
        """``[S, K]``: user ``index``'s genre term of each item split among their liked
        support items by the genres they share with it (the step sets the preference from
        the liked items' genres); 0 for items no liked support item shares a genre with."""
        term = state.fast.genre[index] @ items.genres.t()  # [K]
        liked = state.support.liked[index].to(term.dtype)  # [S]
        shared = (side.genres @ items.genres.t()) * liked.unsqueeze(1)  # [S, K]
        total = shared.sum(0, keepdim=True)
        return torch.where(total > 0, term * shared / total.clamp(min=1e-12), 0.0)

    def unit_gradient_norms(
        self,
        users: torch.Tensor,
        rows: torch.Tensor,
        x: torch.Tensor,
        ratings: torch.Tensor,
        catalogue: CatalogueSide,
    ) -> torch.Tensor:
        """``[n]``: for ``n`` one-rating supports (``rows [n]``, their features ``x [n, W]``,
        ``ratings [n]``), the summed norms of the gradient of MeLU's "unit loss" (the support
        loss over its own value: only the direction a rating pulls in counts) w.r.t. the fast
        weights the local steps adapt, at their start. MeLU's evidence score
        (:mod:`melu.onboarding`) for the taste model."""
        mask = torch.ones_like(rows, dtype=torch.bool).unsqueeze(1)
        support = self.net.pool(
            self.support(users, rows.unsqueeze(1), x.unsqueeze(1), ratings.unsqueeze(1), mask)
        )
        start = self.net.start(support)
        allowed = candidates(catalogue.recommendable, support.rows, support.mask)
        with torch.enable_grad():
            fast = FastWeights(
                *(
                    t.detach().requires_grad_(name in self.adapted)
                    for name, t in zip(FAST_WEIGHTS, start, strict=True)
                )
            )
            loss = self.net.support_loss(fast, support, catalogue.items, allowed)
            unit = loss / loss.detach().clamp(min=1e-12)
            targets = [getattr(fast, name) for name in self.adapted]
            grads = torch.autograd.grad(unit.sum(), targets)
        total = torch.zeros_like(ratings)
        for grad in grads:
            total = total + grad.reshape(grad.shape[0], -1).norm(dim=-1)
        return total

    # --- the meta-objective ----------------------------------------------------------------------

    def losses(
        self, episode: Episode, table: torch.Tensor, recommendable: torch.Tensor
    ) -> torch.Tensor:
        """``[B]``: each episode's query loss after the local steps: the negative
        log-likelihood of its other liked items under a softmax over the recommendable rows
        of ``table`` minus the support, plus ``rating_weight`` times the squared error of its
        other ratings."""
        catalogue = self.catalogue_side(table, recommendable)
        state = self.adapt(
            episode.users,
            episode.rows_spt,
            episode.x_spt,
            episode.y_spt,
            episode.mask_spt,
            catalogue,
            own=episode.own,
            order="first" if self.cfg.first_order else "second",
            report=False,
        )
        logits, _ = self.scores(state, catalogue)
        allowed = candidates(catalogue.recommendable, state.support.rows, state.support.mask)
        nll = multinomial_nll(logits, allowed, episode.targets, episode.liked)
        predicted = self.net.ratings(state.fast, catalogue.items.take(episode.targets))
        real = episode.target_mask.to(predicted.dtype)
        error = ((predicted - episode.target_ratings) ** 2 * real).sum(-1)
        mse = error / real.sum(-1).clamp(min=1.0)
        return nll + self.cfg.rating_weight * mse

    def forward(
        self, episode: Episode, table: torch.Tensor, recommendable: torch.Tensor
    ) -> torch.Tensor:
        """Per-episode losses: ``forward`` so that DistributedDataParallel can wrap us."""
        return self.losses(episode, table, recommendable)

"""One scoring path: a learner over a catalogue, as evaluation measures it and ``/recommend``
serves it.

:class:`CatalogueScorer` holds what a loaded model computes once per catalogue (the taste
model's item side; MeLU's embedded items and the item side of its first layer) and turns a
batch of supports into

- ``adapt``: the users' fast weights (the learner's one local update);
- ``scores``: the ranking score and the predicted rating of every catalogue row, and, where the
  model holds lists above the user's own mean (``ModelConfig.rank_floor``), which rows clear
  it (:func:`melu.ranking.rank` puts the others last);
- ``explain``: for the taste model, the loved support item each listed row follows most (in
  the blended list, by its part of both terms of the blend).

The catalogue protocol (:mod:`melu.evaluation.catalogue`), training's model selection
(:mod:`melu.predict`) and the service (:mod:`service.recommender`) all score through it. Every
catalogue row gets a score, new items (no training ratings) from their content; which rows a
list may hold is :func:`melu.objectives.candidates`' to say, not the scorer's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from melu import closed_form
from melu.fold_in import blend
from melu.learners import Learner
from melu.maml import Adaptation, MetaLearner
from melu.objectives import candidates
from melu.ranking import batch_invariant
from melu.taste import ItemSide, Support, TasteNet
from melu.taste_learner import CatalogueSide, TasteLearner, TasteState

# Floats of [B, chunk, H1] activations per chunk: small enough to stay in cache.
CHUNK_FLOATS = 1 << 16

State = Adaptation | TasteState


class Scores(NamedTuple):
    """Every catalogue row for a batch of users ``[B, R]``: the ranking score, the predicted
    rating, and which rows clear the user's own mean (None: the model keeps no floor)."""

    rank: torch.Tensor
    rating: torch.Tensor
    above_floor: torch.Tensor | None


def column_major(side: ItemSide) -> ItemSide:
    """The side with the matrices the catalogue passes read (``out``, ``taste``) stored column
    by column: the same values, as ``[N, D]`` views of ``[D, N]`` storage.

    A user's logits ``user @ out.t()`` and their gradient ``g @ out`` are then both the
    matrix-vector product MKL runs at memory speed; with the rows stored contiguously, the
    first took 4.2 ms against 0.9 ms at 55k items on this machine's AMD EPYC (one thread,
    ``benchmarks/skip_step.py``), most of a ``/recommend``'s model work.
    """
    return side._replace(out=side.out.t().contiguous().t(), taste=side.taste.t().contiguous().t())


class CachedItemSide:
    """MeLU's closed-form local update with the catalogue's ``W_item x`` cached.

    Under the closed form (only the head adapts, one fixed rate) a task's first-layer
    pre-activation of item ``x`` is ``W_item x + (W_task t + b) - lr * sum_j k(x, s_j) g_j``,
    and only the last two terms depend on the user: ``W_item x`` (``[N, H1]``, about 70% of the
    per-item arithmetic of ``closed_form.predict``) is computed once per catalogue here.
    ``tests/test_service.py`` checks that this gives ``closed_form.predict``'s ratings.
    """

    def __init__(self, learner: MetaLearner, features: torch.Tensor) -> None:
        params = learner.meta_params()
        weight = params["head.layers.0.weight"]
        self.task_dim = weight.shape[1] - features.shape[1]
        with torch.no_grad():
            self.item_side = torch.nn.functional.linear(features, weight[:, self.task_dim :])
        self.features = features
        self.params = params
        self.lr = learner.cfg.local_lr

    def applies(self, adaptation: Adaptation) -> bool:
        return adaptation.kernel is not None and adaptation.kernel.task.shape[-1] == self.task_dim

    def scores(
        self,
        adaptation: Adaptation,
        features: torch.Tensor | None = None,
        item_side: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of the whole catalogue, or of other items given with
        their features and item side (a subset of rows, cluster centroids)."""
        features = self.features if features is None else features
        item_side = self.item_side if item_side is None else item_side
        kernel = adaptation.kernel
        assert kernel is not None
        weight, bias = self.params["head.layers.0.weight"], self.params["head.layers.0.bias"]
        task, support, state = kernel.task, kernel.support, kernel.state
        per_task = torch.nn.functional.linear(task, weight[:, : self.task_dim], bias)  # [B, H1]
        batch, size, width = support.shape
        hidden = per_task.shape[-1]
        flat_support = support.reshape(batch * size, width).t()  # [Di, B*S]
        shared = ((task * task).sum(-1) + 1.0)[:, None, None]  # [B, 1, 1]
        step = max(128, CHUNK_FLOATS // (batch * hidden))
        parts = []
        for start in range(0, features.shape[0], step):
            items = features[start : start + step]  # [n, Di]
            pre1 = item_side[start : start + step].unsqueeze(0) + per_task.unsqueeze(1)
            if state.first_grads.shape[1]:
                dots = items @ flat_support  # one GEMM for every task: [n, B*S]
                gram = dots.reshape(-1, batch, size).transpose(0, 1) + shared  # [B, n, S]
                pre1 = torch.baddbmm(pre1, gram, state.first_grads, alpha=-self.lr)
            parts.append(closed_form._forward(pre1, state.layers)[1])
        return torch.cat(parts, dim=1) + adaptation.offset.unsqueeze(-1)


class CatalogueScorer:
    """A learner (in eval mode) over one catalogue: the per-catalogue work done once, here.

    ``table [R, W]``: the catalogue's feature ids; ``recommendable [R]``: the rows a list may
    hold (:attr:`melu.data.Catalogue.recommendable`). Call under ``torch.no_grad()``.
    """

    def __init__(self, learner: Learner, table: torch.Tensor, recommendable: torch.Tensor) -> None:
        if learner.training:
            raise ValueError("score in eval mode (dropout would make the scores random)")
        self.learner = learner
        self.table = table
        self.recommendable = recommendable.to(table.device)
        self.side: CatalogueSide | None = None
        self.features: torch.Tensor | None = None
        self.cached: CachedItemSide | None = None
        # The last adapted batch and its recommendable rows' logits and ratings, which the
        # loss after the steps needed (adapt) and the list needs (scores): computed once.
        self._last: tuple[TasteState, torch.Tensor, torch.Tensor] | None = None
        # The last blended batch and its users' blend scales (:meth:`_fold_in`): what
        # ``explain`` needs to split the blend by support item.
        self._blended: tuple[TasteState, torch.Tensor] | None = None
        with torch.no_grad():
            if isinstance(learner, TasteLearner):
                # Every row's item side, not only the recommendable rows': a new item (no
                # training ratings, item id "unknown") is never in the default list nor the
                # local update's softmax (``recommendable`` still says so), but it is scored
                # from its content where it is named: the service's explicit candidates and
                # /score ids, the new-releases shelf.
                every = torch.ones_like(self.recommendable)
                side = learner.catalogue_side(table, every)
                self.side = CatalogueSide(side.items, self.recommendable)
                # The local update's softmax runs over the recommendable rows alone, so it is
                # handed those only (row 0 kept as padding; the others are masked out of the
                # softmax anyway): 2,648 of MeLU's 3,881 items, 4,007 of ml-latest-small's
                # 9,742, the same loss for a third to a half less work per request.
                # ``_compact_row`` maps a catalogue row to its row there (0: none). The
                # catalogue passes read every item's side from memory (a 62k-item catalogue's
                # is 70 MB), so fewer rows is less time, not only fewer operations.
                kept = torch.nonzero(self.recommendable).squeeze(1)
                kept = torch.cat([kept.new_zeros(1), kept[kept > 0]])
                mask = torch.ones_like(kept, dtype=torch.bool)
                mask[0] = False
                self._kept = kept
                self._compact = CatalogueSide(column_major(side.items.take(kept)), mask)
                self._compact_row = torch.zeros_like(self.recommendable, dtype=torch.long)
                self._compact_row[kept[1:]] = torch.arange(1, len(kept), device=kept.device)
                # The other rows (new items): scored only where asked (``every_row``).
                others = torch.ones_like(self.recommendable)
                others[kept] = False
                self._others = torch.nonzero(others).squeeze(1)
                self._other_side = CatalogueSide(
                    side.items.take(self._others), torch.zeros_like(self._others, dtype=torch.bool)
                )
            elif learner.head_only:
                # Items embed the same way for every user when only the head adapts.
                self.features = learner.item_features(table)
                if learner.closed_form:
                    self.cached = CachedItemSide(learner, self.features)

    @property
    def floor(self) -> bool:
        """Whether lists are held above the user's own mean (``ModelConfig.rank_floor``)."""
        return isinstance(self.learner, TasteLearner) and self.learner.net.cfg.rank_floor

    def adapt(
        self,
        users: torch.Tensor,
        rows: torch.Tensor,
        ratings: torch.Tensor,
        mask: torch.Tensor,
        steps: int | None = None,
    ) -> State:
        """Fast weights of a batch of users: field ids ``[B, U]``, support catalogue rows,
        ratings and mask ``[B, S]`` (padding: row 0, masked)."""
        x_spt = self.table[rows]
        if isinstance(self.learner, TasteLearner):
            # The support's rows only take it out of the softmax's candidates: in the compact
            # catalogue they are its rows (a support item that is not recommendable is not
            # there, and maps to the padding row). Its item side comes from x_spt.
            return self._adapt_taste(self.learner, users, rows, x_spt, ratings, mask, steps)
        return self.learner.adapt(users, x_spt, ratings, mask, steps=steps)

    def _adapt_taste(
        self,
        learner: TasteLearner,
        users: torch.Tensor,
        rows: torch.Tensor,
        x_spt: torch.Tensor,
        ratings: torch.Tensor,
        mask: torch.Tensor,
        steps: int | None,
    ) -> TasteState:
        """The taste model's local update, with its support loss after the steps computed
        from the logits the list is ranked by (kept for :meth:`scores`) instead of from a
        pass over the catalogue of its own (on a 62k-item catalogue, 3.7 of 12.8 ms CPU)."""
        compact = self._compact_row[rows]
        n_steps = learner.cfg.local_steps if steps is None else steps
        if n_steps > 0 and not bool((learner.net.how_far(mask) != 0).any()):
            # The schedule switches the step off for every user of the batch (validation
            # chose x0 for their support sizes, as for 1-7 ratings on MeLU's data): a step
            # scaled by 0 moves nothing, so its forward and backward passes over the
            # catalogue are skipped. The same fast weights, exactly.
            n_steps = 0
        state = learner.adapt(
            users, compact, x_spt, ratings, mask, self._compact, n_steps, report=False
        )
        logits, predicted = learner.scores(state, self._compact)
        allowed = candidates(self._compact.recommendable, state.support.rows, state.support.mask)
        after = learner.net.support_loss(
            state.fast, state.support, self._compact.items, allowed, logits=logits
        ).detach()
        # No steps: the loss before them is the loss after (steps() computed neither).
        before = state.loss_before if n_steps > 0 else after
        state = state._replace(loss_before=before, loss_after=after)
        self._last = (state, logits, predicted)
        return state

    def scores(
        self, state: State, users: torch.Tensor, every_row: bool = True, fold_in: bool = True
    ) -> Scores:
        """:class:`Scores` of every catalogue row for the adapted users.

        ``fold_in=False`` (the taste model): the list's scores without the model's fold-in
        (the evaluation's ablation); the same where the model has none.

        ``every_row=False`` (the taste model): the recommendable rows only, what a list drawn
        from them needs; the other rows get rank ``-inf`` and rating NaN (and are not above
        the floor). The recommendable rows' scores are the same either way.
        """
        learner = self.learner
        if isinstance(learner, TasteLearner):
            assert isinstance(state, TasteState)
            batch, rows = state.fast.user.shape[0], self.table.shape[0]
            dtype, device = state.fast.user.dtype, state.fast.user.device
            logits = torch.full((batch, rows), -math.inf, dtype=dtype, device=device)
            ratings = torch.full((batch, rows), math.nan, dtype=dtype, device=device)
            parts = [(self._kept, self._compact)]
            if every_row and self._others.numel():
                parts.append((self._others, self._other_side))
            for index, side in parts:
                last = self._last
                if side is self._compact and last is not None and last[0] is state:
                    logits[:, index], ratings[:, index] = last[1], last[2]
                else:
                    logits[:, index], ratings[:, index] = learner.scores(state, side)
            weight = learner.net.cfg.rank_rating_weight
            rank = logits + weight * ratings if weight else logits
            # Rows not scored (every_row=False) rank -inf, not -inf + NaN.
            rank = torch.where(torch.isnan(ratings), logits, rank)
            # What explain splits is the list these scores give: blended or not.
            self._blended = None
            if fold_in:
                rank = self._fold_in(state, rank)
            above = None
            if learner.net.cfg.rank_floor:
                # On the ranking grid, as the scores: a film within float noise of the user's
                # mean must not clear the floor in one batch and miss it in another.
                mean = batch_invariant(learner.user_mean(state)).unsqueeze(-1)
                above = batch_invariant(ratings) >= mean
            return Scores(rank, ratings, above)
        assert isinstance(state, Adaptation)
        if self.cached is not None and self.cached.applies(state):
            ratings = self.cached.scores(state)
        elif self.features is not None:
            ratings = learner.predict_from_features(state, users, self.features)
        else:
            ratings = self._per_user_ratings(state, users)
        return Scores(ratings, ratings, None)

    @property
    def blends(self) -> bool:
        """Whether some support size's list takes the model's fold-in (:mod:`melu.fold_in`)."""
        net = getattr(self.learner, "net", None)
        return isinstance(net, TasteNet) and net.blends

    def fold_in_scores(self, support: Support) -> torch.Tensor:
        """``[B, R]``: EDLAE's fold-in of each user's support (:attr:`TasteState.support`) for
        every catalogue row (0 for rows without training ratings); the model must have a
        fitted fold-in."""
        net = self.learner.net
        assert isinstance(net, TasteNet) and net.fold_in is not None and self.side is not None
        return net.fold_in.scores(support.side.ids, support.mask)[:, self.side.items.ids]

    def allowed(self, state: TasteState) -> torch.Tensor:
        """``[B, R]``: each user's candidates, the recommendable rows minus their support."""
        support = state.support
        return candidates(self.recommendable, self._kept[support.rows], support.mask)

    def _fold_in(self, state: TasteState, rank: torch.Tensor) -> torch.Tensor:
        """``rank`` blended with EDLAE's fold-in for the users whose support size takes it
        (:mod:`melu.fold_in`); the others' unchanged."""
        assert isinstance(self.learner, TasteLearner)
        weight = self.learner.net.fold_in_weight(state.support.mask)
        if not bool((weight != 0).any()):
            return rank
        blended = blend(rank, self.fold_in_scores(state.support), self.allowed(state), weight)
        self._blended = (state, blended.scale)
        return blended.scores

    def _per_user_ratings(self, state: Adaptation, users: torch.Tensor) -> torch.Tensor:
        """MeLU with an adapted encoder: items embed per user, in chunks."""
        assert isinstance(self.learner, MetaLearner)
        batch = users.shape[0]
        step = max(1, 65_536 // batch)
        parts = [
            self.learner.predict(
                state, users, self.table[start : start + step].expand(batch, -1, -1)
            )
            for start in range(0, self.table.shape[0], step)
        ]
        return torch.cat(parts, dim=1)

    def floors(self, state: State) -> list[float] | None:
        """Each user's floor (their own mean rating, shrunk; :meth:`TasteLearner.user_mean`)
        on the ranking grid, as :meth:`scores` compares it; None where the model keeps none."""
        if not self.floor:
            return None
        assert isinstance(state, TasteState) and isinstance(self.learner, TasteLearner)
        return [float(v) for v in batch_invariant(self.learner.user_mean(state)).tolist()]

    def support_losses(self, state: State) -> tuple[list[float], list[float]]:
        """Each user's support loss before and after the local steps."""
        return state.loss_before.tolist(), state.loss_after.tolist()

    def explain(
        self,
        state: State,
        index: int,
        rows: Sequence[int],
        support_rows: Sequence[int],
        support_ratings: Sequence[float],
        loved: float,
    ) -> list[int | None]:
        """For user ``index`` of the batch and each listed catalogue row: the support row
        rated at least ``loved`` whose part of the ranking logit is largest, or None (a row
        the user rated, none loved, or a model that cannot say: MeLU's). Where the user's list
        was blended with the fold-in (:meth:`scores` last scored this batch), a support item's
        part is its part of the blend: its part of the logit plus the blend's scale
        (:class:`melu.fold_in.Blend`) times its part of ``x B``."""
        if not isinstance(self.learner, TasteLearner) or not rows or not support_rows:
            return [None] * len(rows)
        assert isinstance(state, TasteState) and self.side is not None
        listed = torch.tensor(rows)
        parts = self.learner.support_parts(state, index, self.side, listed)
        width = len(support_rows)
        parts = parts[:width]  # [S, K]; the batch may pad the support further
        blended = self._blended
        if blended is not None and blended[0] is state and bool(blended[1][index] != 0):
            net = self.learner.net
            assert net.fold_in is not None
            support = state.support
            ids = support.side.ids[index, :width].unsqueeze(1)  # each item its own support
            single = net.fold_in.scores(ids, support.mask[index, :width].unsqueeze(1))
            targets = self.side.items.ids[listed.to(self.side.items.ids.device)]
            parts = parts + blended[1][index] * single[:, targets].to(parts.dtype)
        ok = torch.tensor([r >= loved for r in support_ratings], device=parts.device)
        parts = parts.masked_fill(~ok.unsqueeze(1), -math.inf)
        best = parts.argmax(0).tolist()
        rated = set(support_rows)
        return [
            None if row in rated or not bool(ok.any()) else support_rows[j]
            for row, j in zip(rows, best, strict=True)
        ]

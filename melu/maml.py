"""MAML for MeLU as pure functions over parameter dicts, batched over tasks with ``vmap``.

:func:`adapt_task` is the one local update: k SGD steps on the masked support MSE. Meta-training,
evaluation and the service all reach it through :class:`MetaLearner`. Gradients of the query
loss flow through the local steps (second order) unless ``first_order`` detaches them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from melu import closed_form
from melu.config import MetaConfig
from melu.model import ADAPTED_ALL, ADAPTED_BY_DEFAULT, MeLUNet, adapted_names, batched_head
from melu.tasks import TaskBatch

Params = dict[str, torch.Tensor]


class Adaptation(NamedTuple):
    """A task's (or a batch's, with a leading task dim) fast weights and support statistics."""

    fast: Params
    offset: torch.Tensor  # added to the head's output: the support mean, or 0
    context: torch.Tensor  # support mean, std, log(1 + n)
    loss_before: torch.Tensor
    loss_after: torch.Tensor
    # The same fast weights in kernel form, when the closed form made them: a cheaper way to
    # score a whole catalogue (see closed_form.Kernel).
    kernel: closed_form.Kernel | None = None


# Catalogue scoring works on [tasks, items, hidden] blocks of about this many floats (256 KiB,
# so that they stay in a core's L2 cache).
SCORE_CHUNK_FLOATS = 1 << 16
# vmap's dims for a batch of adaptations: every tensor batched, no kernel (vmap takes no None).
BATCHED = Adaptation(0, 0, 0, 0, 0, None)  # type: ignore[arg-type]


class TaskFeatures(NamedTuple):
    """A batch of tasks with features gathered: ``users [B, U]``, items ``[B, S|Q, W]``."""

    users: torch.Tensor
    x_spt: torch.Tensor
    y_spt: torch.Tensor
    mask_spt: torch.Tensor
    x_qry: torch.Tensor
    y_qry: torch.Tensor
    mask_qry: torch.Tensor


def gather(batch: TaskBatch, user_table: torch.Tensor, item_table: torch.Tensor) -> TaskFeatures:
    """Look up feature ids for a batch of id-only tasks (tables on the batch's device)."""
    return TaskFeatures(
        users=user_table[batch.users],
        x_spt=item_table[batch.x_spt],
        y_spt=batch.y_spt,
        mask_spt=batch.mask_spt,
        x_qry=item_table[batch.x_qry],
        y_qry=batch.y_qry,
        mask_qry=batch.mask_qry,
    )


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real (unmasked) entries of the last dim (``[..., N]``)."""
    weight = mask.to(pred.dtype)
    return ((pred - target) ** 2 * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)


def support_stats(y: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked mean and the context vector (mean, std, log(1 + n)) of support sets ``[..., S]``."""
    weight = mask.to(y.dtype)
    n = weight.sum(-1)
    mean = (y * weight).sum(-1) / n.clamp(min=1.0)
    var = (((y - mean.unsqueeze(-1)) ** 2) * weight).sum(-1) / n.clamp(min=1.0)
    context = torch.stack([mean, var.clamp(min=1e-12).sqrt(), torch.log1p(n)], dim=-1)
    return mean, context


def _strip(params: Params, prefix: str) -> Params:
    return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}


def _sgd(weight: torch.Tensor, grad_: torch.Tensor, rate: torch.Tensor | float) -> torch.Tensor:
    if isinstance(rate, float):
        return torch.sub(weight, grad_, alpha=rate)  # one fused op for a fixed rate
    return weight - rate * grad_


class MetaLearner(nn.Module):
    """The meta-parameters (the base learner and optional learned local rates) and MAML on them."""

    def __init__(self, net: MeLUNet, cfg: MetaConfig) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        children = ADAPTED_BY_DEFAULT if cfg.adapt == "head" else ADAPTED_ALL
        self.adapted = adapted_names(net, children)
        self.head_only = all(n.startswith("head.") for n in self.adapted)
        # The closed form needs one fixed rate and a frozen encoder (see melu.closed_form).
        self.closed_form = self.head_only and not cfg.learn_local_lr and cfg.local_update == "auto"
        self.local_lr = nn.ParameterDict()
        if cfg.learn_local_lr:
            # Meta-SGD: one rate per adapted weight, clamped at 0 when used (a negative rate
            # turns the local step into ascent and diverged in our runs).
            for name in self.adapted:
                param = net.get_parameter(name)
                self.local_lr[self._lr_key(name)] = nn.Parameter(
                    torch.full_like(param, cfg.local_lr)
                )

    @staticmethod
    def _lr_key(name: str) -> str:
        return name.replace(".", "__")

    # --- parameters ---------------------------------------------------------------------------

    def meta_params(self) -> Params:
        """The base learner's parameters, as the dict that ``functional_call`` takes."""
        return dict(self.net.named_parameters())

    def rates(self) -> dict[str, torch.Tensor | float]:
        if not self.cfg.learn_local_lr:
            return {n: self.cfg.local_lr for n in self.adapted}
        return {n: self.local_lr[self._lr_key(n)].clamp(min=0.0) for n in self.adapted}

    # --- the pure per-task functions ----------------------------------------------------------

    def _embed(
        self, params: Params, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(
            self.net.encoder, _strip(params, "encoder."), (users, items, context)
        )

    def _head(self, params: Params, features: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return functional_call(self.net.head, _strip(params, "head."), features)

    def adapt_task(
        self,
        params: Params,
        rates: dict[str, torch.Tensor | float],
        users: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        steps: int,
        first_order: bool,
    ) -> Adaptation:
        """k local SGD steps on one task's masked support MSE, from ``params``.

        Returns fast weights for the adapted parameters only; ``params`` are not modified.
        When only the head adapts, the support is embedded once, outside the local steps.
        """
        mean, context = support_stats(y_spt, mask_spt)
        offset = mean if self.net.cfg.residual else torch.zeros_like(mean)
        fast = {n: params[n] for n in self.adapted}
        fixed = {n: p for n, p in params.items() if n not in fast}

        loss_fn: Callable[[Params], torch.Tensor]
        if self.head_only:
            features = self._embed(fixed, users, x_spt, context)

            def loss_fn(weights: Params) -> torch.Tensor:
                return masked_mse(self._head(weights, features) + offset, y_spt, mask_spt)
        else:

            def loss_fn(weights: Params) -> torch.Tensor:
                both = {**fixed, **weights}
                pred = self._head(both, self._embed(both, users, x_spt, context)) + offset
                return masked_mse(pred, y_spt, mask_spt)

        grad_fn = grad(loss_fn, has_aux=False)
        loss_before = loss_fn(fast).detach()
        for _ in range(steps):
            grads = grad_fn(fast)
            if first_order:
                grads = {n: g.detach() for n, g in grads.items()}
            fast = {n: _sgd(w, grads[n], rates[n]) for n, w in fast.items()}
        loss_after = loss_fn(fast).detach() if steps else loss_before
        return Adaptation(fast, offset, context, loss_before, loss_after)

    def predict_task(
        self, params: Params, adaptation: Adaptation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ratings ``[N]`` of items ``[N, W]`` with a task's fast weights."""
        both = {**params, **adaptation.fast}
        features = self._embed(both, users, items, adaptation.context)
        return self._head(both, features) + adaptation.offset

    def query_loss_task(
        self,
        params: Params,
        rates: dict[str, torch.Tensor | float],
        users: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        x_qry: torch.Tensor,
        y_qry: torch.Tensor,
        mask_qry: torch.Tensor,
        steps: int,
        first_order: bool,
    ) -> torch.Tensor:
        adaptation = self.adapt_task(
            params, rates, users, x_spt, y_spt, mask_spt, steps, first_order
        )
        pred = self.predict_task(params, adaptation, users, x_qry)
        return masked_mse(pred, y_qry, mask_qry)

    def predict_task_from_features(
        self,
        params: Params,
        adaptation: Adaptation,
        users: torch.Tensor,
        item_features: torch.Tensor,
    ) -> torch.Tensor:
        """Like :meth:`predict_task`, from precomputed :meth:`item_features` ``[N, Di]``."""
        both = {**params, **adaptation.fast}
        task = functional_call(self.net.encoder.user, _strip(both, "encoder.user."), (users,))
        if self.net.cfg.task_context:
            task = torch.cat([task, adaptation.context], dim=-1)
        return self._head(both, (task, item_features)) + adaptation.offset

    # --- batched over tasks ----------------------------------------------------------------------

    def _steps(self, steps: int | None) -> int:
        return self.cfg.local_steps if steps is None else steps

    def _encode_batch(
        self,
        users: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        x_qry: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Task features, support and query item features, offset and context of a batch of
        tasks, embedded in one encoder call (the closed form's encoder never adapts)."""
        mean, context = support_stats(y_spt, mask_spt)
        offset = mean if self.net.cfg.residual else torch.zeros_like(mean)
        items = x_spt if x_qry is None else torch.cat([x_spt, x_qry], dim=1)
        task, features = self.net.encoder(users, items, context)
        support, query = features[:, : x_spt.shape[1]], features[:, x_spt.shape[1] :]
        return task, support, None if x_qry is None else query, offset, context

    def _closed_form_losses(self, batch: TaskFeatures, steps: int) -> torch.Tensor:
        task, support, query, offset, _ = self._encode_batch(
            batch.users, batch.x_spt, batch.y_spt, batch.mask_spt, batch.x_qry
        )
        assert query is not None
        params, lr, first = self.meta_params(), self.cfg.local_lr, self.cfg.first_order
        state = closed_form.local_steps(
            params, task, support, batch.y_spt, batch.mask_spt, offset, lr, steps, first
        )
        pred = closed_form.predict(params, state, task, support, query, offset, lr, first)
        return masked_mse(pred, batch.y_qry, batch.mask_qry)

    def rating_losses(self, batch: TaskFeatures, steps: int | None = None) -> torch.Tensor:
        """Query MSE of every task ``[B]`` after the local steps (MeLU's objective)."""
        if self.closed_form:
            return self._closed_form_losses(batch, self._steps(steps))
        fn = vmap(
            self.query_loss_task,
            in_dims=(None, None, 0, 0, 0, 0, 0, 0, 0, None, None),
            randomness="different",
        )
        return fn(
            self.meta_params(), self.rates(), *batch, self._steps(steps), self.cfg.first_order
        )

    def task_losses(self, batch: TaskFeatures, steps: int | None = None) -> torch.Tensor:
        """Query MSE of every task ``[B]`` after the local steps, differentiable w.r.t. the
        meta-parameters."""
        return self.rating_losses(batch, steps)

    def forward(self, batch: TaskFeatures) -> torch.Tensor:
        """Per-task losses: ``forward`` so that DistributedDataParallel can wrap us."""
        return self.task_losses(batch, None)

    def meta_loss(self, batch: TaskFeatures, steps: int | None = None) -> torch.Tensor:
        """Mean loss over the batch: what the meta-optimiser minimises."""
        return self.task_losses(batch, steps).mean()

    def adapt(
        self,
        users: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        steps: int | None = None,
    ) -> Adaptation:
        """Fast weights for a batch of tasks (leading dim B); meta-parameters stay untouched."""
        if self.closed_form:
            return self._closed_form_adapt(users, x_spt, y_spt, mask_spt, self._steps(steps))

        fn = vmap(
            self.adapt_task,
            in_dims=(None, None, 0, 0, 0, 0, None, None),
            out_dims=BATCHED,  # type: ignore[arg-type]  # a pytree of dims, as vmap allows
            randomness="different",
        )
        return fn(
            self.meta_params(), self.rates(), users, x_spt, y_spt, mask_spt,
            self._steps(steps), True,
        )  # fmt: skip

    def _closed_form_adapt(
        self,
        users: torch.Tensor,
        x_spt: torch.Tensor,
        y_spt: torch.Tensor,
        mask_spt: torch.Tensor,
        steps: int,
    ) -> Adaptation:
        params, lr = self.meta_params(), self.cfg.local_lr
        task, support, _, offset, context = self._encode_batch(users, x_spt, y_spt, mask_spt)
        state = closed_form.local_steps(
            params, task, support, y_spt, mask_spt, offset, lr, steps, first_order=True
        )
        fast = closed_form.fast_weights(params, state, task, support, lr)
        kernel = closed_form.Kernel(task, support, state)
        return Adaptation(fast, offset, context, state.loss_before, state.loss_after, kernel)

    def item_features(self, items: torch.Tensor) -> torch.Tensor:
        """Embedded items ``[N, Di]`` under the meta-parameters, for scoring a whole catalogue.

        Valid only when the encoder does not adapt (MeLU's default): then every user shares
        these features and a request only runs the head. Call in eval mode.
        """
        if not self.head_only:
            raise ValueError("item features depend on the user when the encoder adapts")
        if self.training:
            raise ValueError("call item_features in eval mode (dropout would make it random)")
        return self.net.encoder.item(items)

    def predict_from_features(
        self, adaptation: Adaptation, users: torch.Tensor, item_features: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of the same ``N`` items (``[N, Di]``) for each task."""
        if adaptation.kernel is not None or self.head_only:
            # Items in chunks whose [B, chunk, hidden] activations stay in cache: over a whole
            # catalogue the elementwise steps are otherwise bound by memory bandwidth.
            score = self._catalogue_scorer(adaptation, users)
            hidden = self.net.cfg.hidden[0] if self.net.cfg.hidden else 1
            chunk = max(128, SCORE_CHUNK_FLOATS // (users.shape[0] * hidden))
            parts = [
                score(item_features[start : start + chunk])
                for start in range(0, item_features.shape[0], chunk)
            ]
            return torch.cat(parts, dim=1)
        fn = vmap(self.predict_task_from_features, in_dims=(None, BATCHED, 0, None))
        return fn(self.meta_params(), adaptation._replace(kernel=None), users, item_features)

    def _catalogue_scorer(
        self, adaptation: Adaptation, users: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Scores ``[B, n]`` of item features ``[n, Di]``; per-batch work done once, here."""
        if adaptation.kernel is not None:
            kernel, params, lr = adaptation.kernel, self.meta_params(), self.cfg.local_lr
            return lambda items: closed_form.predict(
                params, kernel.state, kernel.task, kernel.support, items, adaptation.offset, lr,
                first_order=True,
            )  # fmt: skip
        task = self.net.encoder.user(users)
        if self.net.cfg.task_context:
            task = torch.cat([task, adaptation.context], dim=-1)
        head, offset = _strip(adaptation.fast, "head."), adaptation.offset.unsqueeze(-1)
        return lambda items: batched_head(head, task, items) + offset

    def predict(
        self, adaptation: Adaptation, users: torch.Tensor, items: torch.Tensor
    ) -> torch.Tensor:
        """Predicted ratings ``[B, N]`` of items ``[B, N, W]`` after :meth:`adapt`."""
        if self.head_only:
            # The encoder is shared by all tasks: embed once for the batch, no vmap.
            task, features = self.net.encoder(users, items, adaptation.context)
            head = _strip(adaptation.fast, "head.")
            return batched_head(head, task, features) + adaptation.offset.unsqueeze(-1)
        fn = vmap(self.predict_task, in_dims=(None, BATCHED, 0, 0), randomness="different")
        return fn(self.meta_params(), adaptation._replace(kernel=None), users, items)

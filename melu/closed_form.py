"""MeLU's local update in closed form: the MLP head's support gradients as batched matmuls.

When only the head adapts, with one fixed local rate (MeLU's setting and our default), the
support-loss gradient of every head layer is a sum over support items of outer products, so
the k local steps are a handful of batched matrix products per step over all tasks at once, with
padding masked out. The outer (meta) gradient then comes from plain autograd through those
products: second order by default, first order with the inner gradients detached. No per-task
autograd and no ``torch.func`` transforms run, which is what made the generic ``vmap`` path
slow: it builds and differentiates a graph per local step per task.

The first layer never gets per-task weights. After steps with first-layer pre-activation
gradients ``g_j`` at support items ``j``, its fast weights are ``W - lr * sum_j g_j x_j^T``
(``x_j`` = [task features; item features; 1], the 1 for the bias), so their effect on any
input ``x`` is ``-lr * sum_j g_j (x_j . x)``: a support Gram matrix ``[S, S]`` per task instead
of a ``[64, 288]`` weight per task (the kernel form of a linear layer). :func:`adapt` turns that
into explicit fast weights once at the end, for serving.

:class:`melu.maml.MetaLearner` uses this path whenever it applies and the ``vmap`` path
otherwise (every parameter adapting, or Meta-SGD's learned rates); tests check that both give
the same losses and meta-gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

Params = dict[str, torch.Tensor]


class Layer(NamedTuple):
    """One head layer after the first: weight ``[out, in]`` shared or ``[B, out, in]`` per task."""

    weight: torch.Tensor
    bias: torch.Tensor


class LocalState(NamedTuple):
    """A batch of tasks after the local steps, in kernel form for the first layer."""

    first_grads: torch.Tensor  # [B, S, H1]: the sum over steps of first-layer gradients g_j
    layers: list[Layer]  # the later layers' fast weights, per task
    loss_before: torch.Tensor  # [B] support loss with the meta-parameters
    loss_after: torch.Tensor  # [B] support loss after the local steps


class Kernel(NamedTuple):
    """A batch's adaptation in kernel form: with the meta-parameters, all :func:`predict` needs.

    Scoring a catalogue this way costs ``N x S`` per task in the first layer instead of the
    ``N x Di x H`` that explicit fast weights cost, since only ``S`` support items moved it.
    """

    task: torch.Tensor  # [B, Dt]
    support: torch.Tensor  # [B, S, Di]
    state: LocalState


def n_layers(params: Params) -> int:
    return sum(1 for k in params if k.startswith("head.layers.") and k.endswith(".weight"))


def _layer(params: Params, i: int) -> Layer:
    return Layer(params[f"head.layers.{i}.weight"], params[f"head.layers.{i}.bias"])


def first_layer(params: Params, task: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Pre-activations ``[B, N, H1]`` of items ``[B, N, Di]`` for tasks ``[B, Dt]`` under the
    meta-parameters (the user part is applied once per task, as in :class:`melu.model.Head`)."""
    w, b = _layer(params, 0)
    task_dim = task.shape[-1]
    per_task = torch.nn.functional.linear(task, w[:, :task_dim], b)
    return torch.nn.functional.linear(items, w[:, task_dim:]) + per_task.unsqueeze(-2)


def gram(task: torch.Tensor, items: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """``[B, N, S]``: the products ``x_i . x_j`` of full first-layer inputs (bias 1 included)
    of items ``[B, N, Di]`` and support items ``[B, S, Di]`` of the same tasks ``[B, Dt]``."""
    shared = (task * task).sum(-1) + 1.0
    return torch.baddbmm(shared[:, None, None], items, support.transpose(1, 2))


def _linear(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    if layer.weight.dim() == 2:
        return torch.nn.functional.linear(x, layer.weight, layer.bias)
    return torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight.transpose(1, 2))


def _forward(pre1: torch.Tensor, layers: list[Layer]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The inputs of the later layers (post-ReLU) and the head's output ``[B, N]``."""
    inputs, x = [], pre1
    for layer in layers:
        inputs.append(torch.relu(x))
        x = _linear(inputs[-1], layer)
    return inputs, x.squeeze(-1)


def local_steps(
    params: Params,
    task: torch.Tensor,
    support: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor,
    offset: torch.Tensor,
    lr: float,
    steps: int,
    first_order: bool,
) -> LocalState:
    """k SGD steps of every task's head on its masked support MSE, all tasks at once.

    ``task [B, Dt]`` and ``support [B, S, Di]`` are the encoder's outputs, ``y``/``mask``
    ``[B, S]``, ``offset [B]`` is added to the head's output (the residual's support mean).
    """
    weight = mask.to(support.dtype)
    n = weight.sum(-1).clamp(min=1.0)
    target = y - offset.unsqueeze(-1)  # the head's output is compared with this
    scale = 2.0 * weight / n.unsqueeze(-1)  # d(masked MSE)/d(output) = scale * error

    def loss(out: torch.Tensor) -> torch.Tensor:
        return ((out - target) ** 2 * weight).sum(-1).detach() / n

    pre1_meta = first_layer(params, task, support)
    layers = [_layer(params, i) for i in range(1, n_layers(params))]
    if steps == 0:
        before = loss(_forward(pre1_meta, layers)[1])
        return LocalState(torch.zeros_like(pre1_meta), layers, before, before)
    # In first-order MAML the fast weights' updates are constants, the support features in
    # them included: only their effect on the query carries gradient.
    support_k = support.detach() if first_order else support
    kernel = gram(task.detach() if first_order else task, support_k, support_k)
    first_grads: torch.Tensor | None = None
    loss_before = torch.zeros_like(n)  # set at step 0
    for step in range(steps + 1):
        pre1 = (
            pre1_meta
            if first_grads is None
            else torch.baddbmm(pre1_meta, kernel, first_grads, alpha=-lr)
        )
        inputs, out = _forward(pre1, layers)
        if step == 0:
            loss_before = loss(out)
        if step == steps:
            assert first_grads is not None
            return LocalState(first_grads, layers, loss_before, loss(out))
        # Backpropagation of the masked MSE by hand, from the output to the first layer.
        grad = ((out - target) * scale).unsqueeze(-1)
        new_layers: list[Layer] = []
        for layer, x in zip(reversed(layers), reversed(inputs), strict=True):
            w_grad, b_grad = grad.transpose(1, 2) @ x, grad.sum(1)
            # ReLU's derivative, as autograd's own ReLU backward computes it (and
            # differentiates it: zero almost everywhere).
            grad = torch.ops.aten.threshold_backward(grad @ layer.weight, x, 0.0)
            if first_order:
                w_grad, b_grad = w_grad.detach(), b_grad.detach()
            new_layers.append(
                Layer(
                    torch.sub(layer.weight, w_grad, alpha=lr),
                    torch.sub(layer.bias, b_grad, alpha=lr),
                )
            )
        layers = new_layers[::-1]
        grad = grad.detach() if first_order else grad
        first_grads = grad if first_grads is None else first_grads + grad
    raise AssertionError("unreachable")


def predict(
    params: Params,
    state: LocalState,
    task: torch.Tensor,
    support: torch.Tensor,
    items: torch.Tensor,
    offset: torch.Tensor,
    lr: float,
    first_order: bool,
) -> torch.Tensor:
    """Predicted ratings ``[B, N]`` of items ``[B, N, Di]`` with the fast weights of ``state``;
    items ``[N, Di]`` are shared by every task (a catalogue)."""
    pre1 = first_layer(params, task, items)
    if state.first_grads.shape[1]:
        # First order: the update is a constant in the support's features, not in the query's.
        support_k = support.detach() if first_order else support
        task_k = task.detach() if first_order else task
        shared = ((task * task_k).sum(-1) + 1.0)[:, None, None]
        if items.dim() == 2:
            batch, size, width = support_k.shape
            dots = items @ support_k.reshape(batch * size, width).t()  # one GEMM for all tasks
            kernel = dots.reshape(-1, batch, size).transpose(0, 1) + shared
        else:
            kernel = torch.baddbmm(shared, items, support_k.transpose(1, 2))
        pre1 = torch.baddbmm(pre1, kernel, state.first_grads, alpha=-lr)
    return _forward(pre1, state.layers)[1] + offset.unsqueeze(-1)


def fast_weights(
    params: Params, state: LocalState, task: torch.Tensor, support: torch.Tensor, lr: float
) -> Params:
    """Explicit per-task fast weights ``[B, ...]`` of every head parameter (for serving)."""
    w, b = _layer(params, 0)
    g = state.first_grads  # [B, S, H1]
    batch = g.shape[0]
    w_task = torch.einsum("bsh,bt->bht", g, task)
    w_items = g.transpose(1, 2) @ support
    out = {
        "head.layers.0.weight": w - lr * torch.cat([w_task, w_items], dim=-1),
        "head.layers.0.bias": b - lr * g.sum(1),
    }
    for i, layer in enumerate(state.layers, start=1):
        out[f"head.layers.{i}.weight"] = layer.weight.expand(batch, *layer.weight.shape[-2:])
        out[f"head.layers.{i}.bias"] = layer.bias.expand(batch, layer.bias.shape[-1])
    return out

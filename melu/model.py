"""The base learner: embeddings of user and item features feeding an MLP (MeLU).

A plain ``nn.Module`` with two children, ``encoder`` (embeddings) and ``head`` (the decision
layers). The meta-learner calls them through ``torch.func.functional_call`` with a dict of
parameters, so the same code computes with the meta-parameters or a user's fast weights, and
when only the head adapts it embeds each task once instead of once per local step.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from melu.config import ModelConfig
from melu.embeddings import FieldEmbedding
from melu.features import FieldSpec

# Children whose parameters adapt per user by default: MeLU's local update touches only the
# decision layers, while embeddings are global.
ADAPTED_BY_DEFAULT: tuple[str, ...] = ("head",)
ADAPTED_ALL: tuple[str, ...] = ("encoder", "head")
# Task context appended to every item's features: support mean, support std, log(1 + n).
CONTEXT_SIZE = 3


class Encoder(nn.Module):
    """Embeds a task's user (and optional task context) once, and each of its items.

    The two parts are returned apart: the head's first layer applies its user columns once per
    task instead of once per item, which is the same function as MeLU's concatenation at about
    half the cost of the first layer.
    """

    def __init__(
        self, user_specs: Sequence[FieldSpec], item_specs: Sequence[FieldSpec], cfg: ModelConfig
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.user = FieldEmbedding(user_specs, cfg.embedding_dim)
        self.item = FieldEmbedding(item_specs, cfg.embedding_dim)
        self.item_id_col = next((s.start for s in item_specs if s.name == "item"), None)
        self.dropout = cfg.embedding_dropout

    @property
    def task_dim(self) -> int:
        return self.user.out_dim + (CONTEXT_SIZE if self.cfg.task_context else 0)

    @property
    def item_dim(self) -> int:
        return self.item.out_dim

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropout == 0:
            return x
        # rand + compare is several times faster than bernoulli_ on the CPU.
        keep = torch.rand_like(x) >= self.dropout
        return x * keep / (1.0 - self.dropout)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``users [..., U]``, ``items [..., S, W]``, ``context [..., C]``
        -> task features ``[..., Dt]`` and item features ``[..., S, Di]``."""
        if self.training and self.item_id_col is not None and self.cfg.item_id_dropout > 0:
            # Train the shared "unknown item" vector, the fallback every new item gets.
            col = items[..., self.item_id_col]
            drop = torch.rand(col.shape, device=col.device) < self.cfg.item_id_dropout
            items = torch.cat(
                [
                    items[..., : self.item_id_col],
                    torch.where(drop, torch.zeros_like(col), col).unsqueeze(-1),
                    items[..., self.item_id_col + 1 :],
                ],
                dim=-1,
            )
        task = self._dropout(self.user(users))
        if self.cfg.task_context:
            if context is None:
                raise ValueError("this model was built with task_context: pass the context")
            task = torch.cat([task, context], dim=-1)
        return task, self._dropout(self.item(items))


class Head(nn.Module):
    """The decision layers: an MLP over ``[task features; item features]`` of each item."""

    def __init__(self, task_dim: int, item_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.task_dim = task_dim
        widths = [task_dim + item_dim, *hidden, 1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))

    def forward(self, task: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``task [..., Dt]``, ``items [..., S, Di]`` -> ``[..., S]``."""
        first = self.layers[0]
        assert isinstance(first, nn.Linear)
        w_task, w_item = first.weight[:, : self.task_dim], first.weight[:, self.task_dim :]
        per_task = nn.functional.linear(task, w_task, first.bias)
        x = nn.functional.linear(items, w_item) + per_task.unsqueeze(-2)
        for layer in self.layers[1:]:
            x = layer(torch.relu(x))
        return x.squeeze(-1)


class MeLUNet(nn.Module):
    """Embeddings -> MLP (MeLU: dim 32, hidden 64-64, one output)."""

    def __init__(
        self, user_specs: Sequence[FieldSpec], item_specs: Sequence[FieldSpec], cfg: ModelConfig
    ) -> None:
        super().__init__()
        self.cfg = cfg
        item_fields = set(cfg.item_fields) | ({"item"} if cfg.item_id_embedding else set())
        self.encoder = Encoder(
            [s for s in user_specs if s.name in cfg.user_fields],
            [s for s in item_specs if s.name in item_fields],
            cfg,
        )
        self.head = Head(self.encoder.task_dim, self.encoder.item_dim, cfg.hidden)

    def forward(
        self, users: torch.Tensor, items: torch.Tensor, context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raw head output ``[..., S]``; the meta-learner adds the user's offset."""
        return self.head(*self.encoder(users, items, context))


def batched_head(
    weights: dict[str, torch.Tensor], task: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """:class:`Head` with a different set of weights per task, for a batch of tasks at once.

    ``weights`` maps ``layers.{i}.weight``/``bias`` to ``[B, out, in]``/``[B, out]``;
    ``task [B, Dt]``; ``items [B, N, Di]`` per task, or ``[N, Di]`` shared by all tasks (a
    catalogue), scored with one matrix product for the whole batch. Returns ``[B, N]``.
    """
    n_layers = sum(1 for k in weights if k.endswith(".weight"))
    w, b = weights["layers.0.weight"], weights["layers.0.bias"]
    batch, hidden, task_dim = w.shape[0], w.shape[1], task.shape[-1]
    per_task = torch.baddbmm(
        b.unsqueeze(1), task.unsqueeze(1), w[:, :, :task_dim].transpose(1, 2)
    )  # [B, 1, H]
    w_items = w[:, :, task_dim:]
    if items.dim() == 2:
        x = (items @ w_items.reshape(batch * hidden, -1).t()).reshape(-1, batch, hidden)
        x = x.transpose(0, 1) + per_task
    else:
        x = torch.baddbmm(per_task, items, w_items.transpose(1, 2))
    for i in range(1, n_layers):
        w, b = weights[f"layers.{i}.weight"], weights[f"layers.{i}.bias"]
        x = torch.baddbmm(b.unsqueeze(1), torch.relu(x), w.transpose(1, 2))
    return x.squeeze(-1)


def adapted_names(model: nn.Module, children: Sequence[str]) -> list[str]:
    """Names of the parameters that adapt per user, in a fixed order."""
    prefixes = tuple(f"{c}." for c in children)
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]

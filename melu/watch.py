"""The watch model: which items a user watches, from the items they rated (Mult-DAE style).

MeLU's network learns the rating a user gives an item they chose to watch; ranked over a whole
catalogue it favours acclaimed films whoever the user is. This tower learns the other half, a
multinomial over the catalogue (Liang et al., Mult-VAE, WWW 2018), from the same support sets:

- each support item contributes its input embedding (a learned id vector plus its content
  features, so new items still count) scaled by a learned weight per rating value plus a
  learned vector per rating value; ratings below ``ModelConfig.watch_min_rating`` (3 in the
  default preset) are left out, as a learned weight kept them pulling their kind in;
- their sum over ``sqrt(n)``, plus the user's demographics, through ``tanh`` is the user vector;
- an item's logit is the user vector dotted with the item's output embedding, plus its bias.

Its parameters are disjoint from MeLU's network, so the rating model trains as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from melu.config import ModelConfig
from melu.embeddings import FieldEmbedding
from melu.features import FieldSpec

# Ratings are embedded by value, 0..5 (0 never occurs in data; it keeps indexing direct).
RATING_LEVELS = 6


class WatchTower(nn.Module):
    """User vector from a support set, item logits from item features."""

    def __init__(
        self,
        user_specs: Sequence[FieldSpec],
        item_specs: Sequence[FieldSpec],
        cfg: ModelConfig,
    ) -> None:
        super().__init__()
        ids = next((s for s in item_specs if s.name == "item"), None)
        if ids is None:
            raise ValueError("the watch model needs the item id field")
        dim = cfg.watch_dim
        self.dim = dim
        self.id_col = ids.start
        self.id_dropout = cfg.watch_id_dropout
        self.pooling = cfg.watch_pooling
        self.activation = cfg.watch_activation
        self.min_rating = cfg.watch_min_rating
        content = [s for s in item_specs if s.name in cfg.item_fields]
        self.id_in = nn.Embedding(ids.vocab_size, dim)
        self.id_out = nn.Embedding(ids.vocab_size, dim + 1)  # last column: the item's bias
        self.content = FieldEmbedding(content, cfg.embedding_dim)
        content_dim = len(content) * cfg.embedding_dim
        self.content_in = nn.Linear(content_dim, dim, bias=False)
        self.content_out = nn.Linear(content_dim, dim + 1, bias=False)
        self.user = FieldEmbedding(user_specs, cfg.embedding_dim)
        self.user_in = nn.Linear(len(user_specs) * cfg.embedding_dim, dim)
        self.rating_scale = nn.Parameter(torch.ones(RATING_LEVELS))
        self.rating_shift = nn.Parameter(torch.zeros(RATING_LEVELS, dim))
        nn.init.normal_(self.id_in.weight, std=0.1)
        nn.init.normal_(self.id_out.weight, std=0.1)
        with torch.no_grad():
            self.id_out.weight[:, dim].zero_()

    def _ids(self, items: torch.Tensor) -> torch.Tensor:
        """Item ids ``[...]``, in training some replaced by 0 ("unknown", a new item's id).

        Over a catalogue ``[R, W]`` that is one draw per row: the whole batch sees the same
        items as new, and their logits come from content alone.
        """
        ids = items[..., self.id_col]
        if not self.training or self.id_dropout == 0:
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < self.id_dropout
        return torch.where(drop, torch.zeros_like(ids), ids)

    def item_in(self, items: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``[..., D]`` of items ``[..., W]`` (feature ids)."""
        return self.id_in(self._ids(items)) + self.content_in(self.content(items))

    def item_out(self, items: torch.Tensor) -> torch.Tensor:
        """Output embeddings and bias ``[..., D + 1]`` of items ``[..., W]``."""
        return self.id_out(self._ids(items)) + self.content_out(self.content(items))

    def evidence(
        self, x_spt: torch.Tensor, y_spt: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Each support item's contribution ``[B, S, D]`` to the user vector (0 on padding)."""
        level = y_spt.round().long().clamp(0, RATING_LEVELS - 1)
        if self.min_rating > 0:
            mask = mask & (y_spt >= self.min_rating)
        weight = mask.to(self.rating_scale.dtype).unsqueeze(-1)
        n = weight.sum(-2, keepdim=True).clamp(min=1.0)
        contribution = self.item_in(x_spt) * self.rating_scale[level].unsqueeze(-1)
        scale = n.sqrt() if self.pooling == "sqrt" else n
        return (contribution + self.rating_shift[level]) * weight / scale

    def user_vector(self, users: torch.Tensor, evidence: torch.Tensor) -> torch.Tensor:
        """``users [B, U]``, ``evidence [B, S, D]`` -> user vectors ``[B, D]``."""
        # Out of training, summed in float64 and rounded back: the pool then does not depend on
        # how much padding a batch adds, so a user's list does not depend on who else is served.
        pooled = evidence.sum(-2) if self.training else evidence.double().sum(-2).to(evidence.dtype)
        user = pooled + self.user_in(self.user(users))
        return torch.tanh(user) if self.activation == "tanh" else user

    def logits(self, user: torch.Tensor, item_out: torch.Tensor) -> torch.Tensor:
        """``user [B, D]``, ``item_out [N, D + 1]`` (shared) or ``[B, N, D + 1]`` -> ``[B, N]``."""
        if item_out.dim() == 2:
            if not self.training:
                # Serving and evaluation: float64 products rounded back, so a user's logits are
                # the same whatever the batch (BLAS picks other kernels for other shapes).
                logits = torch.addmm(
                    item_out[:, self.dim].double(),
                    user.double(),
                    item_out[:, : self.dim].double().t(),
                )
                return logits.to(user.dtype)
            return torch.addmm(item_out[:, self.dim], user, item_out[:, : self.dim].t())
        weights, bias = item_out[..., : self.dim], item_out[..., self.dim]
        scores = torch.baddbmm(bias.unsqueeze(1), user.unsqueeze(1), weights.transpose(1, 2))
        return scores.squeeze(1)

"""Embeddings of a table of feature ids: one table per field, multi-valued fields averaged."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from melu.features import FieldSpec


class FieldEmbedding(nn.Module):
    """Embeds the columns of an id table; multi-valued fields by a masked mean."""

    def __init__(self, specs: Sequence[FieldSpec], dim: int) -> None:
        super().__init__()
        self.specs = list(specs)
        # Index 0 (unknown) of a single-valued field keeps a learned vector: it is the fallback
        # for values training never saw. For multi-valued fields 0 is padding and masked out.
        self.dim = dim
        self.tables = nn.ModuleDict({s.name: nn.Embedding(s.vocab_size, dim) for s in self.specs})
        for spec in self.specs:
            nn.init.normal_(self._table(spec.name).weight, std=0.1)
        # What a table without fields returns, shaped per call: a buffer, so that it follows
        # the module's dtype and device (.to(float64)) as the tables do; not saved.
        self.register_buffer("_nothing", torch.zeros(0), persistent=False)
        self._nothing: torch.Tensor

    def _table(self, name: str) -> nn.Embedding:
        table = self.tables[name]
        assert isinstance(table, nn.Embedding)
        return table

    @property
    def out_dim(self) -> int:
        return len(self.specs) * self.dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids [..., width]`` -> ``[..., n_fields * dim]``."""
        if not self.specs:
            # A release without user fields (the CSV releases): no columns, and the head's
            # first layer has no user part.
            return self._nothing.expand(*ids.shape[:-1], 0)
        parts = []
        for spec in self.specs:
            table = self._table(spec.name)
            if spec.multi:
                cols = ids[..., spec.start : spec.start + spec.width]
                mask = (cols != 0).unsqueeze(-1).to(table.weight.dtype)
                summed = (table(cols) * mask).sum(-2)
                parts.append(summed / mask.sum(-2).clamp(min=1.0))
            else:
                parts.append(table(ids[..., spec.start]))
        return torch.cat(parts, dim=-1)

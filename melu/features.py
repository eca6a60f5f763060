"""Vocabularies and encoded feature tables.

Index 0 of every vocabulary means "padding or unknown". Vocabularies are fitted on the
meta-training users and items only, so a feature value that training never saw maps to 0 instead
of an embedding that no gradient ever touched.

Multi-valued item fields (genre, director, actor, and tags for the CSV releases) are stored as
padded id lists, reduced by the model with a masked mean: the dense multi-hot rows of MeLU's
release took 22 GB of pickles.

Which fields exist is the encoder's to say, not a constant's: the CSV releases have no user
fields at all (:attr:`FeatureEncoder.user_fields` is empty) and one more item field (``tag``).
An encoder rebuilt from an older checkpoint has exactly the fields it was fitted with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.preprocessing import normalize

# Every user field melu knows, in table order; an encoder has those its users frame had.
USER_FIELDS: tuple[str, ...] = ("gender", "age", "occupation", "zip")
SCALAR_ITEM_FIELDS: tuple[str, ...] = ("item", "rate", "year")
MULTI_ITEM_FIELDS: tuple[str, ...] = ("genre", "director", "actor")
# Multi-valued item fields that only some datasets have (the CSV releases' tags); they follow
# MULTI_ITEM_FIELDS in the table, so the layout of the others never moves.
OPTIONAL_MULTI_ITEM_FIELDS: tuple[str, ...] = ("tag",)
YEAR_BUCKET = 5


@dataclass(frozen=True)
class Vocabulary:
    """Tokens in index order; token ``tokens[i]`` has index ``i + 1``."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i + 1 for i, t in enumerate(self.tokens)})

    @classmethod
    def fit(cls, values: Iterable[str], min_count: int = 1) -> Vocabulary:
        """Most frequent first, ties by token, so fitting is deterministic."""
        counts = Counter(v for v in values if v != "")
        kept = [t for t, c in counts.items() if c >= min_count]
        return cls(tuple(sorted(kept, key=lambda t: (-counts[t], t))))

    def __len__(self) -> int:
        """Size of the embedding table: the tokens plus the padding/unknown index 0."""
        return len(self.tokens) + 1

    def __contains__(self, token: object) -> bool:
        return token in self._index  # type: ignore[attr-defined]

    def index(self, token: str) -> int:
        return int(self._index.get(token, 0))  # type: ignore[attr-defined]


def year_token(year: str) -> str:
    """Years bucketed into 5-year spans, so a new release still shares a token with older films."""
    if not year.isdigit():
        return ""
    return str(int(year) // YEAR_BUCKET * YEAR_BUCKET)


@dataclass(frozen=True)
class FieldSpec:
    """One embedded field: its vocabulary size and the columns it occupies in its table."""

    name: str
    vocab_size: int
    start: int
    width: int
    multi: bool


@dataclass(frozen=True)
class FeatureEncoder:
    """Fitted vocabularies for user and item fields; serialisable into a checkpoint."""

    user_vocab: dict[str, Vocabulary]
    item_vocab: dict[str, Vocabulary]
    # Width of each multi-valued field's padded id list.
    multi_width: dict[str, int]

    @classmethod
    def fit(
        cls, users: pd.DataFrame, items: pd.DataFrame, multi_width: dict[str, int] | None = None
    ) -> FeatureEncoder:
        """Fit on the training users and items only (see module docstring).

        The user fields are those of :data:`USER_FIELDS` that ``users`` has (none for the CSV
        releases); the optional item fields those that ``items`` has."""
        user_vocab = {
            f: Vocabulary.fit(users[f].astype(str)) for f in USER_FIELDS if f in users.columns
        }
        item_vocab = {
            "item": Vocabulary.fit(items["item_id"].astype(str)),
            "rate": Vocabulary.fit(items["rate"]),
            "year": Vocabulary.fit(items["year"].map(year_token)),
        }
        widths = dict(multi_width or {})
        optional = [f for f in OPTIONAL_MULTI_ITEM_FIELDS if f in items.columns]
        for f in (*MULTI_ITEM_FIELDS, *optional):
            item_vocab[f] = Vocabulary.fit(t for tokens in items[f] for t in tokens)
            if f not in widths:
                widths[f] = max(1, int(items[f].map(len).max()))
        return cls(user_vocab, item_vocab, {f: widths[f] for f in (*MULTI_ITEM_FIELDS, *optional)})

    # --- layout -----------------------------------------------------------------------------

    @property
    def user_fields(self) -> tuple[str, ...]:
        """The user fields this encoder knows, in table order; empty for the CSV releases."""
        return tuple(f for f in USER_FIELDS if f in self.user_vocab)

    @property
    def multi_fields(self) -> tuple[str, ...]:
        """The multi-valued item fields, in table order."""
        optional = tuple(f for f in OPTIONAL_MULTI_ITEM_FIELDS if f in self.multi_width)
        return (*MULTI_ITEM_FIELDS, *optional)

    def user_specs(self) -> list[FieldSpec]:
        return [
            FieldSpec(f, len(self.user_vocab[f]), i, 1, False)
            for i, f in enumerate(self.user_fields)
        ]

    def item_specs(self) -> list[FieldSpec]:
        specs, start = [], 0
        for f in SCALAR_ITEM_FIELDS:
            specs.append(FieldSpec(f, len(self.item_vocab[f]), start, 1, False))
            start += 1
        for f in self.multi_fields:
            width = self.multi_width[f]
            specs.append(FieldSpec(f, len(self.item_vocab[f]), start, width, True))
            start += width
        return specs

    @property
    def item_width(self) -> int:
        return len(SCALAR_ITEM_FIELDS) + sum(self.multi_width[f] for f in self.multi_fields)

    # --- encoding ---------------------------------------------------------------------------

    def encode_user(self, values: dict[str, str | None]) -> list[int]:
        """One user's field ids; a missing or unseen value maps to 0."""
        return [self.user_vocab[f].index(str(values.get(f) or "")) for f in self.user_fields]

    def unknown_user_values(self, values: dict[str, str | None]) -> list[str]:
        """Fields whose given value the vocabulary has never seen (the service reports them)."""
        return [
            f
            for f in self.user_fields
            if values.get(f) not in (None, "") and str(values[f]) not in self.user_vocab[f]
        ]

    def ignored_user_values(self, values: dict[str, str | None]) -> list[str]:
        """Given fields this encoder does not have (every one, for the CSV releases)."""
        return [f for f, v in values.items() if v not in (None, "") and f not in self.user_vocab]

    def encode_users(self, users: pd.DataFrame) -> torch.Tensor:
        """``[n_users, len(user_fields)]`` ids, in the frame's row order."""
        fields = self.user_fields
        if not fields:
            return torch.zeros(len(users), 0, dtype=torch.long)
        columns = [
            users[f].astype(str).map(lambda v, vocab=self.user_vocab[f]: vocab.index(v))
            for f in fields
        ]
        return torch.tensor(pd.concat(columns, axis=1).to_numpy(), dtype=torch.long).reshape(
            len(users), len(fields)
        )

    def _pad(self, field: str, tokens: Sequence[str]) -> list[int]:
        vocab, width = self.item_vocab[field], self.multi_width[field]
        ids = [i for i in (vocab.index(t) for t in tokens) if i != 0][:width]
        return ids + [0] * (width - len(ids))

    def encode_items(self, items: pd.DataFrame) -> torch.Tensor:
        """``[n_items, item_width]`` ids, in the frame's row order."""
        rows = []
        for rec in items.itertuples(index=False):
            row = [
                self.item_vocab["item"].index(str(rec.item_id)),
                self.item_vocab["rate"].index(str(rec.rate)),
                self.item_vocab["year"].index(year_token(str(rec.year))),
            ]
            for f in self.multi_fields:
                row.extend(self._pad(f, getattr(rec, f)))
            rows.append(row)
        return torch.tensor(rows, dtype=torch.long).reshape(len(items), self.item_width)

    # --- serialisation ----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_vocab": {f: list(v.tokens) for f, v in self.user_vocab.items()},
            "item_vocab": {f: list(v.tokens) for f, v in self.item_vocab.items()},
            "multi_width": dict(self.multi_width),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureEncoder:
        return cls(
            {f: Vocabulary(tuple(t)) for f, t in data["user_vocab"].items()},
            {f: Vocabulary(tuple(t)) for f, t in data["item_vocab"].items()},
            {f: int(w) for f, w in data["multi_width"].items()},
        )


def content_matrix(table: torch.Tensor, specs: Sequence[FieldSpec]) -> sparse.csr_matrix:
    """Items' content as a sparse 0/1 matrix ``[rows, tokens]`` from an encoded item ``table``:
    one column per (field, token) of every content field (not the item id), so that items
    sharing a director or an actor share a column. ``specs``: the encoder's item specs."""
    ids = table.cpu().numpy()
    blocks = []
    for spec in specs:
        if spec.name == "item":
            continue
        cols = ids[:, spec.start : spec.start + spec.width]
        row_idx, col_idx = np.nonzero(cols > 0)
        data = np.ones(len(row_idx))
        blocks.append(
            sparse.csr_matrix(
                (data, (row_idx, cols[row_idx, col_idx])), shape=(len(ids), spec.vocab_size)
            )
        )
    matrix = sparse.hstack(blocks).tocsr()
    matrix.data[:] = 1.0  # a token listed twice still counts once
    return matrix


def content_vectors(content: sparse.csr_matrix) -> sparse.csr_matrix:
    """Unit-norm TF-IDF rows of a :func:`content_matrix`: their products are the content
    similarity of two items (rare tokens, a director, weigh more than a common genre)."""
    return normalize(sparse.csr_matrix(TfidfTransformer().fit_transform(content)))


# --- content of the CSV releases ----------------------------------------------------------------

# At most this many tags per item (its most applied ones), so that one much-tagged film does
# not make every item's padded tag list long.
MAX_TAGS_PER_ITEM = 20


def item_tags(
    tags: pd.DataFrame, item_ids: pd.Series, until: int | None, top: int
) -> list[list[str]]:
    """Each item's bag of tags: of the ``top`` tags applied most often up to time ``until``
    (Unix seconds; None: all), those applied to the item, most applied first (ties by tag),
    at most :data:`MAX_TAGS_PER_ITEM`. ``tags`` holds lower-cased tag applications
    (:func:`melu.movielens_csv.read_tags`); the result is in ``item_ids``' order.

    Tags applied after ``until`` are left out on purpose: in a time split they come from the
    test period, and a new item's tags would tell which films its testers watched.
    """
    if until is not None:
        tags = tags[tags["timestamp"].to_numpy() <= until]
    counts = tags["tag"].value_counts()
    kept = tags[tags["tag"].isin(counts.index[:top])]
    per_item = kept.groupby(["item_id", "tag"], sort=False).size().reset_index(name="n")
    per_item = per_item.sort_values(["item_id", "n", "tag"], ascending=[True, False, True])
    per_item = per_item[per_item.groupby("item_id", sort=False).cumcount() < MAX_TAGS_PER_ITEM]
    lists = per_item.groupby("item_id", sort=False)["tag"].agg(list).to_dict()
    return [list(lists.get(i, [])) for i in item_ids.tolist()]


@dataclass(frozen=True)
class GenomeBlock:
    """The tag genome (ml-25m, ml-32m) aligned to catalogue rows: ``scores[j]`` is the dense
    relevance vector (0..1 per genome tag) of catalogue row ``rows[j]``. Items outside the
    genome (most new and rarely rated films) have no row; :meth:`dense` gives them zeros."""

    tags: tuple[str, ...]
    rows: np.ndarray  # [k] int64 catalogue rows, ascending
    scores: np.ndarray  # [k, len(tags)] float32

    @classmethod
    def align(cls, tags: Sequence[str], item_ids: np.ndarray, scores: np.ndarray,
              catalogue_ids: np.ndarray) -> GenomeBlock:  # fmt: skip
        """Keep the genome items that are in the catalogue (``catalogue_ids``: raw id per row,
        ascending after row 0, as :class:`melu.data.Catalogue` stores them)."""
        ids = catalogue_ids[1:]
        pos = np.searchsorted(ids, item_ids)
        found = (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == item_ids)
        return cls(tuple(tags), (pos[found] + 1).astype(np.int64), scores[found])

    def dense(self, n_rows: int) -> np.ndarray:
        """``[n_rows, len(tags)]`` float32, zero rows where an item has no genome."""
        out = np.zeros((n_rows, len(self.tags)), dtype=np.float32)
        out[self.rows] = self.scores
        return out

    def vectors(self, n_rows: int) -> sparse.csr_matrix:
        """Unit-norm content vectors ``[n_rows, len(tags)]`` for similarity (like
        :func:`content_vectors`): each tag's mean relevance over the genome items is taken
        out first, since every film is a little relevant to most tags and raw vectors would
        all look alike. Items without a genome get an empty row."""
        centred = self.scores - self.scores.mean(axis=0, keepdims=True)
        matrix = sparse.csr_matrix(
            (centred.ravel(), (np.repeat(self.rows, len(self.tags)),
                               np.tile(np.arange(len(self.tags)), len(self.rows)))),
            shape=(n_rows, len(self.tags)),
        )  # fmt: skip
        return normalize(matrix)

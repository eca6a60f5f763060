"""Catalogue baselines: the recommenders people already use, folded in from a new user's support.

Each ranker is fitted once on the training ratings (:class:`TrainingData`) and then scores
every catalogue row for a batch of users from their support ratings alone (``[n, R]``; higher
is better). Rankers with settings expose a grid; :func:`melu.evaluation.catalogue.tune`
chooses a setting per number of ratings on validation users, as the model's own choices are
made. Where a well-kept library does the job it is used: ``implicit`` for ALS (with its own
least-squares fold-in of a new user) and item-item cosine kNN.

- popularity: training counts;
- item_mean: shrunk item mean, ``(sum + m * global mean) / (count + m)``;
- ease: EASE (Steck 2019), closed form; all regularisers from one eigendecomposition;
- als: iALS, ``implicit``'s ALS, the user's factors solved from the support (fold-in), on a
  grid after Rendle et al. 2022;
- item_knn: ``implicit``'s cosine item-item kNN, scores summed over the support items;
- content_knn: similarity of genre, director, actors, rate and year to the support items,
  weighted by each rating's distance from the user's mean (new items have no ratings);
- random.

The stronger baselines of issue 17 (GF-CF, RP3beta, EDLAE, Mult-DAE, the content prior) and
the line-ups each protocol evaluates are in :mod:`melu.evaluation.anchors`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from melu.features import GenomeBlock, content_vectors
from melu.fold_in import edlae_inverse

log = logging.getLogger(__name__)

Setting = dict[str, Any]


@dataclass(frozen=True)
class TrainingData:
    """Training ratings as the baselines need them, indexed by catalogue row."""

    matrix: sparse.csr_matrix  # [training users, R] binary: who rated what
    counts: np.ndarray  # [R] ratings per row
    sums: np.ndarray  # [R] sum of ratings per row
    global_mean: float
    content: sparse.csr_matrix  # [R, tokens] 0/1 content of every row
    # The tag genome of ml-25m / ml-32m aligned to rows ([R, genome tags], relevance 0..1,
    # zero rows for items outside it); None for releases without one.
    genome: GenomeBlock | None = None

    @classmethod
    def build(
        cls,
        ratings: pd.DataFrame,
        item_rows: dict[int, int],
        n_rows: int,
        content: sparse.csr_matrix,
        genome: GenomeBlock | None = None,
    ) -> TrainingData:
        rows = ratings["item_id"].map(item_rows).to_numpy(dtype=np.int64)
        users = pd.factorize(ratings["user_id"])[0]
        values = ratings["rating"].to_numpy(dtype=np.float64)
        matrix = sparse.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (users, rows)),
            shape=(int(users.max()) + 1, n_rows),
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return cls(
            matrix=matrix,
            counts=np.bincount(rows, minlength=n_rows).astype(np.float64),
            sums=np.bincount(rows, weights=values, minlength=n_rows),
            global_mean=float(values.mean()),
            content=content,
            genome=genome,
        )

    def content_similarity_vectors(self) -> sparse.csr_matrix:
        """Unit-norm rows whose dot products are the content similarity of two items: TF-IDF
        cosine of the features, and where the release has the tag genome, the mean of that and
        the centred genome cosine (an item outside the genome keeps its features' part)."""
        features = content_vectors(self.content)
        if self.genome is None:
            return features
        genome = self.genome.vectors(self.content.shape[0])
        return normalize(sparse.hstack([features, genome]).tocsr())

    def content_columns(self) -> sparse.csr_matrix:
        """Item content as regression columns: the 0/1 features, and the genome's relevance
        scores where the release has them."""
        x = sparse.csr_matrix(self.content, dtype=np.float64)
        if self.genome is None:
            return x
        genome = sparse.csr_matrix(self.genome.dense(x.shape[0]), dtype=np.float64)
        return sparse.hstack([x, genome]).tocsr()


@dataclass(frozen=True)
class Supports:
    """A batch of users' supports: rows ``[n, S]`` (0 = padding) and ratings ``[n, S]``."""

    rows: np.ndarray
    ratings: np.ndarray

    def matrix(self, n_rows: int, values: np.ndarray | None = None) -> sparse.csr_matrix:
        """``[n, R]`` sparse: ``values`` (default 1) at each user's support rows."""
        n, s = self.rows.shape
        real = self.rows > 0
        users = np.repeat(np.arange(n), s).reshape(n, s)[real]
        data = np.ones(int(real.sum())) if values is None else values[real]
        return sparse.csr_matrix((data, (users, self.rows[real])), shape=(n, n_rows))

    def centred(self) -> np.ndarray:
        """Ratings minus each user's mean support rating (padding 0)."""
        real = self.rows > 0
        mean = (self.ratings * real).sum(1) / np.maximum(real.sum(1), 1)
        return np.where(real, self.ratings - mean[:, None], 0.0)


class Ranker(Protocol):
    """Fitted once; scores ``[n, R]`` every catalogue row for a batch of supports."""

    name: str

    def grid(self) -> list[Setting]: ...

    def score(self, supports: Supports, setting: Setting) -> np.ndarray: ...


class SupportsMemo:
    """Products of the last few supports a ranker scored, reused while tuning
    (:func:`melu.evaluation.run.tune_rankers`) scores the validation supports of every S under
    each setting of a grid in turn. The supports are matched by identity (and held, so the
    identity stays theirs), never by content."""

    # Supports remembered: the validation users of each S (4) and a few more.
    KEPT = 8

    def __init__(self) -> None:
        self._entries: list[tuple[Supports, dict[Hashable, Any]]] = []

    def get(self, supports: Supports, key: Hashable, compute: Callable[[], Any]) -> Any:
        values = next((v for s, v in self._entries if s is supports), None)
        if values is None:
            values = {}
            self._entries = [*self._entries[-(self.KEPT - 1) :], (supports, values)]
        if key not in values:
            values[key] = compute()
        return values[key]


class Popularity:
    """Training counts: the most-rated items first, the same list for everyone."""

    name = "popularity"

    def __init__(self, data: TrainingData) -> None:
        self.counts = data.counts

    def grid(self) -> list[Setting]:
        return [{}]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(supports.rows), len(self.counts))).copy()


class ItemMean:
    """Shrunk item mean: an item with few ratings is pulled towards the global mean."""

    name = "item_mean"

    def __init__(self, data: TrainingData) -> None:
        self.data = data

    def grid(self) -> list[Setting]:
        return [{"shrinkage": m} for m in (1.0, 10.0, 50.0, 100.0, 250.0, 1000.0, 5000.0)]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        d, m = self.data, float(setting["shrinkage"])
        mean = (d.sums + m * d.global_mean) / (d.counts + m)
        return np.broadcast_to(mean, (len(supports.rows), len(mean))).copy()


class Ease:
    """EASE (Steck 2019): ``B = I - P diag(1 / diag P)``, ``P = (X^T X + lambda I)^-1``.

    ``P`` comes from a Cholesky factorisation per regulariser
    (:func:`melu.fold_in.edlae_inverse`, the fold-in's own), and a score ``x B = x - (x P) /
    diag P`` then only adds up the support items' rows of ``P``. One eigendecomposition
    serving every regulariser cost more on MeLU's 2,648 rated items: EASE's and EDLAE's four
    took 50 s of a profiled evaluation on a loaded core and their dense scores another 25 s,
    where the factorisations take 14 s and the scores next to nothing.
    """

    name = "ease"
    REGULARISERS: tuple[float, ...] = (200.0, 500.0, 1e3, 2e3, 5e3, 1e4, 2e4)

    # EDLAE's dropout p (:class:`melu.evaluation.anchors.Edlae`); p = 0 is EASE.
    DROPOUTS: tuple[float, ...] = (0.0,)
    # Inverses kept: tuning scores one setting at every S before the next, and the evaluation
    # uses at most one setting per S.
    KEPT = 4

    def __init__(self, data: TrainingData) -> None:
        self.n_rows = data.matrix.shape[1]
        self.rated = np.flatnonzero(data.counts > 0)
        x = data.matrix[:, self.rated]
        self.gram = (x.T @ x).toarray().astype(np.float64)
        self._inverses: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}

    def grid(self) -> list[Setting]:
        return [{"l2": value} for value in self.REGULARISERS]

    def _inverse(self, p: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
        """``P`` and its diagonal for dropout ``p`` and regulariser ``l2``."""
        key = (p, l2)
        if key not in self._inverses:
            if len(self._inverses) >= self.KEPT:
                self._inverses.pop(next(iter(self._inverses)))  # the oldest
            # LAPACK leaves P column-major, and scipy's sparse-times-dense product copied it
            # into row order on every call (3-5 s of a tuning's 48 on one thread). P is
            # symmetric, and torch fills both triangles from one (test_anchors checks that
            # they are equal to the bit), so its transpose is the same numbers in row order.
            inverse = edlae_inverse(torch.from_numpy(self.gram), p, l2, self.name).numpy().T
            self._inverses[key] = (inverse, np.diag(inverse).copy())
        return self._inverses[key]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        p = float(setting.get("dropout", 0.0))
        inverse, diag = self._inverse(p, float(setting["l2"]))
        x = supports.matrix(self.n_rows)[:, self.rated].tocsr()
        out = np.zeros((len(supports.rows), self.n_rows))
        # x B = x - (x P) diag(1 / diag P), with B's diagonal forced to 0 as in the paper.
        out[:, self.rated] = x.toarray() - np.asarray(x @ inverse) / diag
        return out


class Als:
    """iALS: ``implicit``'s ALS; a new user's factors come from the library's own least-squares
    fold-in (``recalculate_user``) of the support.

    The grid follows Rendle et al. (RecSys 2022, "Revisiting the Performance of iALS on Item
    Recommendation Benchmarks"): tuned iALS is competitive once the dimension, the
    regularisation and the weight of observed against unobserved pairs (``alpha``) are
    searched together. On MeLU's data the pair matters and the dimension hardly does: the
    best pairs keep ``regularization / alpha`` near 10 (pairs off that ridge never won), so
    the grid walks the ridge at a small and a large dimension.
    """

    name = "als"
    FACTORS: tuple[int, ...] = (64, 256)
    # (regularization, alpha)
    PAIRS: tuple[tuple[float, float], ...] = ((30.0, 3.0), (100.0, 10.0), (300.0, 30.0))
    ITERATIONS = 15

    def __init__(self, data: TrainingData, seed: int = 0) -> None:
        self.data = data
        self.seed = seed
        self._models: dict[tuple[int, float, float], Any] = {}

    def grid(self) -> list[Setting]:
        return [
            {"factors": f, "regularization": r, "alpha": a}
            for f in self.FACTORS
            for r, a in self.PAIRS
        ]

    def _model(self, setting: Setting) -> Any:
        from implicit.als import AlternatingLeastSquares

        key = (int(setting["factors"]), float(setting["regularization"]), float(setting["alpha"]))
        if key not in self._models:
            # implicit parallelises itself; BLAS threads underneath it only contend (and it
            # warns about them when the model is built).
            with threadpool_limits(1, "blas"):
                model = AlternatingLeastSquares(
                    factors=key[0],
                    regularization=key[1],
                    alpha=key[2],
                    iterations=self.ITERATIONS,
                    random_state=self.seed,
                    num_threads=1,
                )
                model.fit(self.data.matrix, show_progress=False)
            self._models[key] = model
        return self._models[key]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        model = self._model(setting)
        x = supports.matrix(self.data.matrix.shape[1]).astype(np.float32)
        factors = model.recalculate_user(np.arange(x.shape[0]), x)
        return np.asarray(factors @ model.item_factors.T, dtype=np.float64)


class ItemKnn:
    """``implicit``'s cosine item-item kNN: the support items' neighbour similarities summed."""

    name = "item_knn"

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        self._similarity: dict[int, sparse.csr_matrix] = {}

    def grid(self) -> list[Setting]:
        return [{"neighbours": k} for k in (10, 25, 50, 100, 200, 400, 1000, 4000)]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        from implicit.nearest_neighbours import CosineRecommender

        k = int(setting["neighbours"])
        if k not in self._similarity:
            model = CosineRecommender(K=k, num_threads=1)
            with warnings.catch_warnings():
                # implicit transposes our CSR matrix itself and then warns about its own COO.
                warnings.filterwarnings("ignore", message="Method expects CSR input")
                model.fit(self.data.matrix, show_progress=False)
            self._similarity[k] = model.similarity.tocsr()
        x = supports.matrix(self.data.matrix.shape[1])
        return np.asarray((x @ self._similarity[k]).toarray(), dtype=np.float64)


class ContentKnn:
    """Content similarity (TF-IDF cosine over genre, director, actors, rate, year, tags; with
    the tag genome where the release has one) to each support item, weighted by the rating's
    distance from the user's mean; a user whose ratings are all equal weighs every support
    item 1."""

    name = "content_knn"

    def __init__(self, data: TrainingData) -> None:
        self.vectors = data.content_similarity_vectors()
        self._similarity: np.ndarray | None = None

    def grid(self) -> list[Setting]:
        return [{}]

    def similarity(self) -> np.ndarray:
        """``[R, R]`` content similarity of every pair of rows, computed once: a shared genre
        makes it dense, and a product per batch of supports through the sparse token space
        cost half a second each."""
        if self._similarity is None:
            self._similarity = np.asarray((self.vectors @ self.vectors.T).toarray())
        return self._similarity

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        weights = supports.centred()
        flat = np.all(np.abs(weights) < 1e-9, axis=1)
        weights[flat] = (supports.rows[flat] > 0).astype(np.float64)
        x = supports.matrix(self.vectors.shape[0], weights)
        return np.asarray(x @ self.similarity(), dtype=np.float64)


class RandomRanker:
    """Uniform random scores, seeded by the seed and the batch."""

    name = "random"

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n_rows = n_rows
        self.seed = seed

    def grid(self) -> list[Setting]:
        return [{}]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        rng = np.random.default_rng([self.seed, len(supports.rows), int(supports.rows.sum())])
        return rng.random((len(supports.rows), self.n_rows))


def describe(rankers: Sequence[Ranker]) -> dict[str, str]:
    """Each ranker's name and the first paragraph of its docstring, on one line."""
    return {
        r.name: " ".join((type(r).__doc__ or "").strip().split("\n\n")[0].split()) for r in rankers
    }

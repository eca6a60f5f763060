"""Stronger catalogue baselines ("anchors", issue 17), and the line-ups both protocols evaluate.

Each anchor is fitted once on the training ratings (:class:`~melu.evaluation.rankers.TrainingData`)
and folds a new user in from their support alone, as the rankers of
:mod:`melu.evaluation.rankers` do; :func:`melu.evaluation.catalogue.tune` chooses a setting of
its grid per number of ratings on validation users. They work on the rated rows (items with
training ratings, the catalogue protocol's candidates); other rows score 0.

- gf_cf: GF-CF (Shen et al., CIKM 2021), linear filter plus ideal low-pass filter;
- rp3beta: RP3beta (Paudel et al. 2017; Dacrema et al. 2019's code), 3-step random walk
  discounted by popularity;
- edlae: EDLAE (Steck, NeurIPS 2020), EASE with a dropout-emphasised diagonal;
- mult_dae: Mult-DAE (Liang et al., WWW 2018), a denoising autoencoder with a multinomial
  likelihood; the support row is encoded;
- content_prior (shelf): a ridge regression of log training popularity on content, so that a new
  item gets the popularity its content predicts; content_prior_knn adds content kNN to it.

EASE, EDLAE, GF-CF, RP3beta and the content rankers hold dense item-item arrays: a few hundred
MB on MeLU's data, about 24 GB each in float64 at ml-25m's 55k rated items. The line-ups fit
one only where the memory left can hold it (:class:`MemoryBudget`); one that cannot is left
out and named in the report (``info.methods``: "skipped: ...") instead of the evaluation
being killed for memory, or taking the server beside it down with it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from scipy import linalg, sparse
from sklearn.preprocessing import normalize

from melu.evaluation.rankers import (
    Als,
    ContentKnn,
    Ease,
    ItemKnn,
    ItemMean,
    Popularity,
    RandomRanker,
    Ranker,
    Setting,
    Supports,
    SupportsMemo,
    TrainingData,
)

log = logging.getLogger(__name__)


def _rated_support(supports: Supports, n_rows: int, rated: np.ndarray) -> sparse.csr_matrix:
    """``[n, rated]`` binary support rows over the rated rows only."""
    return supports.matrix(n_rows)[:, rated].tocsr()


def _scatter(values: np.ndarray, rated: np.ndarray, n_rows: int) -> np.ndarray:
    """``[n, R]`` scores: ``values [n, rated]`` at the rated rows, 0 elsewhere."""
    out = np.zeros((values.shape[0], n_rows))
    out[:, rated] = values
    return out


class GfCf:
    """GF-CF (Shen et al., CIKM 2021, "How Powerful is Graph Convolution for Recommendation?"):
    ``x R~^T R~ + alpha x D_I^-1/2 V_k V_k^T D_I^1/2``, ``R~ = D_U^-1/2 R D_I^-1/2``.

    ``x`` is the new user's binary support row; ``V_k`` are the top ``k`` right singular
    vectors of ``R~`` (the authors' code: ``alpha`` 0.3, ``k`` 256). They are the top
    eigenvectors of ``R~^T R~``, so one eigendecomposition serves every ``k``.
    """

    name = "gf_cf"
    ALPHAS: tuple[float, ...] = (0.1, 0.3, 1.0)
    RANKS: tuple[int, ...] = (16, 32, 64, 128, 256)

    def __init__(self, data: TrainingData) -> None:
        self.n_rows = data.matrix.shape[1]
        self.rated = np.flatnonzero(data.counts > 0)
        r = data.matrix[:, self.rated].astype(np.float64)
        users = np.asarray(r.sum(1)).ravel()
        items = data.counts[self.rated]
        norm = sparse.diags(users**-0.5) @ r @ sparse.diags(items**-0.5)
        self.linear = (norm.T @ norm).toarray()  # [I, I] R~^T R~
        top = min(max(self.RANKS), len(self.rated))
        _, vectors = linalg.eigh(
            self.linear, subset_by_index=[len(self.rated) - top, len(self.rated) - 1]
        )
        self.vectors = vectors[:, ::-1]  # [I, k_max], largest singular value first
        self.down, self.up = items**-0.5, items**0.5
        self._memo = SupportsMemo()

    def grid(self) -> list[Setting]:
        # alpha 0 is the linear filter alone: k does not matter there.
        return [
            {"alpha": a, "rank": k} for a in self.ALPHAS for k in (self.RANKS if a > 0 else (0,))
        ]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        x = self._memo.get(supports, "x", lambda: _rated_support(supports, self.n_rows, self.rated))
        out = np.array(self._memo.get(supports, "linear", lambda: x @ self.linear))
        alpha, k = float(setting["alpha"]), int(setting["rank"])
        if alpha > 0:
            # x D_I^-1/2 V, every k at once: the grid's ranks are prefixes of V's columns.
            xv = self._memo.get(
                supports, "low", lambda: x.multiply(self.down).tocsr() @ self.vectors
            )
            out += alpha * (xv[:, :k] @ (self.vectors[:, :k].T * self.up))
        return _scatter(out, self.rated, self.n_rows)


class Rp3Beta:
    """RP3beta (Paudel et al., ACM TiiS 2017; as in Dacrema et al., RecSys 2019, "Are we really
    making much progress?"): ``W_ij = (P_iu^a P_uj^a)_ij / deg_j^beta``, the ``k`` largest per
    row kept (the diagonal dropped), rows L1-normalised; a user scores ``x W``.

    ``P_ui`` is the row-normalised user-item matrix, ``P_iu`` the row-normalised item-user one.
    """

    name = "rp3beta"
    ALPHAS: tuple[float, ...] = (0.5, 0.75, 1.0)
    BETAS: tuple[float, ...] = (0.3, 0.4, 0.5)
    NEIGHBOURS: tuple[int, ...] = (50, 100, 200)

    def __init__(self, data: TrainingData) -> None:
        self.n_rows = data.matrix.shape[1]
        self.rated = np.flatnonzero(data.counts > 0)
        r = data.matrix[:, self.rated].astype(np.float64)
        self.p_ui = normalize(r, norm="l1", axis=1).tocsr()
        self.p_iu = normalize(r.T, norm="l1", axis=1).tocsr()
        self.degree = data.counts[self.rated]
        # (alpha, beta) -> each row's neighbours by decreasing weight, [I, k_max] each: every
        # k of the grid is a prefix, and tuning goes over the grid once per S.
        self._neighbours: dict[tuple[float, float], tuple[np.ndarray, np.ndarray]] = {}

    def grid(self) -> list[Setting]:
        return [
            {"alpha": a, "beta": b, "neighbours": k}
            for a in self.ALPHAS
            for b in self.BETAS
            for k in self.NEIGHBOURS
        ]

    def _ranked(self, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
        key = (alpha, beta)
        if key not in self._neighbours:
            walk = (self.p_iu.power(alpha) @ self.p_ui.power(alpha)).toarray()
            walk *= self.degree**-beta
            np.fill_diagonal(walk, 0.0)
            k = min(max(self.NEIGHBOURS), walk.shape[1] - 1)
            top = np.argpartition(-walk, k - 1, axis=1)[:, :k]
            values = np.take_along_axis(walk, top, axis=1)
            order = np.argsort(-values, axis=1, kind="stable")
            self._neighbours[key] = (
                np.take_along_axis(top, order, axis=1).astype(np.int32),
                np.take_along_axis(values, order, axis=1).astype(np.float32),
            )
        return self._neighbours[key]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        top, values = self._ranked(float(setting["alpha"]), float(setting["beta"]))
        k = min(int(setting["neighbours"]), top.shape[1])
        x = _rated_support(supports, self.n_rows, self.rated)
        # x W without building W: each support item adds its k best neighbours' weights,
        # divided by their sum (the row's L1 normalisation).
        items = x.indices
        users = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
        weights = values[items, :k].astype(np.float64)
        weights *= x.data[:, None] / np.maximum(weights.sum(1, keepdims=True), 1e-300)
        # Summed straight into catalogue rows: a sparse matrix built for the sum spent most of
        # its time sorting its indices (2-3 s of a tuning on one thread).
        flat = np.repeat(users * self.n_rows, k) + self.rated[top[items, :k]].ravel()
        out = np.bincount(flat, weights.ravel(), minlength=x.shape[0] * self.n_rows)
        return out.reshape(x.shape[0], self.n_rows)


class Edlae(Ease):
    """EDLAE (Steck, NeurIPS 2020, "Autoencoders that don't overfit towards the identity"),
    full rank: ``B = I - P diag(1 / diag P)``, ``P = (X^T X + Lambda)^-1``,
    ``Lambda = p / (1 - p) diag(X^T X) + lambda I``.

    Dropout ``p`` regularises each item by its popularity; ``p = 0`` is EASE (its own row,
    :class:`~melu.evaluation.rankers.Ease`, whose factorisation it shares).
    """

    name = "edlae"
    DROPOUTS: tuple[float, ...] = (0.8, 0.9, 0.95)
    REGULARISERS: tuple[float, ...] = (100.0, 300.0, 1000.0)

    def grid(self) -> list[Setting]:
        return [{"dropout": p, "l2": v} for p in self.DROPOUTS for v in self.REGULARISERS]


class _Autoencoder(torch.nn.Module):
    """``[I -> hidden... -> I]`` with tanh between layers; the first layer reads sparse rows
    (an embedding bag: a row holds ~2% of the items)."""

    def __init__(self, n_items: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = [*hidden, *hidden[-2::-1], n_items]
        self.first = torch.nn.EmbeddingBag(n_items, dims[0], mode="sum")
        self.bias = torch.nn.Parameter(torch.empty(dims[0]))
        layers: list[torch.nn.Module] = [torch.nn.Tanh()]
        for a, b in itertools.pairwise(dims):
            layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
        self.rest = torch.nn.Sequential(*layers[:-1])  # no tanh on the logits
        # The authors' initialisation: Xavier weights, biases N(0, 0.001^2).
        for module in [self.first, *self.rest]:
            if isinstance(module, torch.nn.Linear | torch.nn.EmbeddingBag):
                torch.nn.init.xavier_uniform_(module.weight)
        for bias in [self.bias, *(m.bias for m in self.rest if isinstance(m, torch.nn.Linear))]:
            torch.nn.init.normal_(bias, std=0.001)

    def forward(self, rows: sparse.csr_matrix) -> torch.Tensor:
        """Logits ``[n, I]`` of rows ``[n, I]`` (as given: normalised, perhaps dropped out)."""
        hidden = self.first(
            torch.from_numpy(rows.indices.astype(np.int64)),
            torch.from_numpy(rows.indptr[:-1].astype(np.int64)),
            per_sample_weights=torch.from_numpy(rows.data.astype(np.float32)),
        )
        return self.rest(hidden + self.bias)


class MultDae:
    """Mult-DAE (Liang et al., WWW 2018, "Variational Autoencoders for Collaborative
    Filtering"): ``[I -> 600 -> 200 -> 600 -> I]``, tanh, input dropout 0.5 on the
    L2-normalised row, multinomial log-likelihood, L2 penalty 0.01, Adam, batches of 500;
    trained on the training users' rows.

    A new user's support row is encoded and decoded (no dropout). The number of epochs is the
    grid: weights are kept after each of :attr:`EPOCHS`, and validation users choose. Adam's
    rate is 3e-3, not the authors' 1e-3: their epochs (ML-20M) are ~270 steps, ours 5, and on
    validation users 3e-3 reaches in 30-40 epochs what 1e-3 reaches in 60 (half the time).
    """

    name = "mult_dae"
    EPOCHS: tuple[int, ...] = (20, 30, 40)
    HIDDEN: tuple[int, ...] = (600, 200)
    DROPOUT = 0.5
    BATCH = 500
    LR = 3e-3
    WEIGHT_DECAY = 0.01  # the authors' L2 penalty: lambda * sum of squared weights

    def __init__(self, data: TrainingData, seed: int) -> None:
        self.n_rows = data.matrix.shape[1]
        self.rated = np.flatnonzero(data.counts > 0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = _Autoencoder(len(self.rated), self.HIDDEN)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        rows = normalize(data.matrix[:, self.rated].astype(np.float32)).tocsr()
        with torch.enable_grad():  # also when the caller scores under no_grad
            self._train(rows, np.random.default_rng([seed, 17]))

    def _train(self, rows: sparse.csr_matrix, rng: np.random.Generator) -> None:
        """Adam on the multinomial likelihood of dropped-out rows, a snapshot at each of
        :attr:`EPOCHS`."""
        optimiser = torch.optim.Adam(self.net.parameters(), lr=self.LR)
        weights = [p for p in self.net.parameters() if p.dim() == 2]
        for epoch in range(1, max(self.EPOCHS) + 1):
            order = rng.permutation(rows.shape[0])
            for start in range(0, len(order), self.BATCH):
                batch = rows[order[start : start + self.BATCH]]
                target = torch.from_numpy((batch > 0).toarray().astype(np.float32))
                batch.data *= (rng.random(batch.nnz) >= self.DROPOUT) / (1.0 - self.DROPOUT)
                nll = -(torch.log_softmax(self.net(batch), 1) * target).sum(1).mean()
                loss = nll + self.WEIGHT_DECAY * sum((w * w).sum() for w in weights)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            if epoch in self.EPOCHS:
                self.snapshots[epoch] = {
                    k: v.detach().clone() for k, v in self.net.state_dict().items()
                }

    def grid(self) -> list[Setting]:
        return [{"epochs": e} for e in self.EPOCHS]

    @torch.no_grad()
    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        self.net.load_state_dict(self.snapshots[int(setting["epochs"])])
        x = normalize(_rated_support(supports, self.n_rows, self.rated).astype(np.float32))
        return _scatter(self.net(x.tocsr()).double().numpy(), self.rated, self.n_rows)


class ContentPrior:
    """Content prior: ridge regression of ``log(1 + training ratings)`` on item content, fitted
    on the items with training ratings; a new item gets the popularity its content predicts.

    The shelf has no validation users of its own, so the ridge penalty is chosen on the
    validation users' catalogue lists, where each rated item's prior is its leave-one-out
    prediction: every candidate is scored as if it were new. Unrated rows (new items) get the
    prediction of the ridge fitted on every rated item.
    """

    name = "content_prior"
    ALPHAS: tuple[float, ...] = (3.0, 10.0, 30.0, 100.0)

    def __init__(self, data: TrainingData) -> None:
        self.n_rows = data.matrix.shape[1]
        seen = data.counts > 0
        x = data.content_columns()
        target = np.log1p(data.counts[seen])
        fit, rest = x[seen], x[~seen]
        # The dual (kernel) form: there are fewer rated items than content columns, and one
        # eigendecomposition of the centred kernel serves every penalty.
        mean = np.asarray(fit.mean(0)).ravel()
        fit_m, rest_m = fit @ mean, rest @ mean
        kernel = (fit @ fit.T).toarray() - fit_m[:, None] - fit_m[None, :] + mean @ mean
        cross = (rest @ fit.T).toarray() - rest_m[:, None] - fit_m[None, :] + mean @ mean
        s, u = linalg.eigh(kernel)
        s = np.maximum(s, 0.0)
        centred = target - target.mean()
        uy = u.T @ centred
        self.priors: dict[float, np.ndarray] = {}
        for alpha in self.ALPHAS:
            dual = u @ (uy / (s + alpha))
            fitted = target.mean() + kernel @ dual
            # Leave-one-out in closed form: r_i / (1 - H_ii), H the hat matrix with intercept.
            hat = (u * u) @ (s / (s + alpha)) + 1.0 / len(target)
            loo = target - (target - fitted) / (1.0 - hat)
            prior = np.zeros(self.n_rows)
            prior[seen] = loo
            prior[~seen] = target.mean() + cross @ dual
            self.priors[alpha] = prior

    def grid(self) -> list[Setting]:
        return [{"alpha": a} for a in self.ALPHAS]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        prior = self.priors[float(setting["alpha"])]
        return np.broadcast_to(prior, (len(supports.rows), self.n_rows)).copy()


class ContentPriorKnn:
    """Content prior plus ``weight`` times content kNN: popular-looking new items, moved
    towards the ones like what the user rated above their mean."""

    name = "content_prior_knn"
    WEIGHTS: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0)

    def __init__(self, prior: ContentPrior, knn: ContentKnn) -> None:
        self.prior, self.knn = prior, knn
        self._memo = SupportsMemo()

    def grid(self) -> list[Setting]:
        return [{**p, "weight": w} for p in self.prior.grid() for w in self.WEIGHTS]

    def score(self, supports: Supports, setting: Setting) -> np.ndarray:
        prior = self.prior.score(supports, {"alpha": setting["alpha"]})
        knn = self._memo.get(supports, "knn", lambda: self.knn.score(supports, {}))
        return prior + float(setting["weight"]) * knn


RankerT = TypeVar("RankerT", bound=Ranker)

# The dense float64 arrays of each quadratic ranker, in copies of a [side x side] array:
# (resident, transient, side, side). Resident: what it keeps from its fit to the end of the
# evaluation (EASE and EDLAE their Gram matrix and Ease.KEPT inverses; GF-CF its filter;
# content kNN its similarity). Transient: what one fit or one inverse needs on top for a while
# (the regularised copy, the factor and potri's triangles; a sparse product before .toarray()
# with 64-bit indices above 2^31 entries; eigh's copy and workspace; RP3beta's walk and its
# negation for the partition; the content prior's kernel, cross kernel and eigenvectors).
# Side "rated": items with training ratings; "rows": every catalogue row.
DENSE_ARRAYS: dict[str, tuple[int, int, str, str]] = {
    "ease": (Ease.KEPT + 1, 5, "rated", "rated"),
    "edlae": (Ease.KEPT + 1, 5, "rated", "rated"),
    "gf_cf": (1, 3, "rated", "rated"),
    "rp3beta": (0, 4, "rated", "rated"),
    "content_knn": (1, 2, "rows", "rows"),
    "content_prior": (0, 5, "rated", "rows"),
}
# Of the memory available when fitting starts, what the dense arrays may take: the rest is for
# the model's scores, the other rankers and a server running beside the evaluation.
MEMORY_SHARE = 0.7


def dense_bytes(name: str, data: TrainingData) -> tuple[int, int]:
    """Bytes of the dense arrays ranker ``name`` keeps on ``data``, and those it needs on top
    for a while (0, 0: none)."""
    if name not in DENSE_ARRAYS:
        return 0, 0
    resident, transient, a, b = DENSE_ARRAYS[name]
    sides = {"rated": int((data.counts > 0).sum()), "rows": int(data.matrix.shape[1])}
    unit = sides[a] * sides[b] * 8
    return resident * unit, transient * unit


def _cgroup_available() -> int | None:
    """The memory a cgroup limit leaves this process (v2, else v1; the page cache it could
    drop counted as free), or None without a limit."""
    for limit_file, used_file, cache_key in (
        ("memory.max", "memory.current", "inactive_file"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes", "total_inactive_file"),
    ):
        root = Path("/sys/fs/cgroup")
        with contextlib.suppress(OSError, ValueError):
            limit = (root / limit_file).read_text().strip()
            if not limit.isdigit() or int(limit) >= 1 << 60:  # "max", or v1's "no limit"
                return None
            used = int((root / used_file).read_text().strip())
            stat = (root / limit_file).with_name("memory.stat").read_text().split()
            cache = dict(zip(stat[::2], stat[1::2], strict=False)).get(cache_key, "0")
            return int(limit) - used + int(cache)
    return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now (Linux: ``MemAvailable``, bounded by a
    cgroup limit); None where it cannot be read."""
    found: list[int] = []
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    cgroup = _cgroup_available()
    if cgroup is not None:
        found.append(cgroup)
    if not found:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    return min(found) if found else None


class MemoryBudget:
    """The bytes the line-ups' dense arrays may take, and the rankers left out for want of
    them with the reason. A ranker is fitted where what the rankers before it keep, plus what
    it keeps, plus the largest transient need of any of them fits: every ranker is alive
    while the baselines are tuned, and the transients come one at a time."""

    def __init__(self, total: int | None) -> None:
        self.total = total
        self.resident = 0
        self.transient = 0
        self.skipped: dict[str, str] = {}

    @classmethod
    def from_available(cls) -> MemoryBudget:
        available = available_memory()
        return cls(None if available is None else int(available * MEMORY_SHARE))

    def take(self, name: str, data: TrainingData) -> bool:
        """Whether ranker ``name`` fits (and, if so, its bytes are counted)."""
        resident, transient = dense_bytes(name, data)
        peak = self.resident + resident + max(self.transient, transient)
        if self.total is None or peak <= self.total:
            self.resident += resident
            self.transient = max(self.transient, transient)
            return True
        self.skipped[name] = (
            f"skipped: its dense item-item arrays need about {(resident + transient) / 1e9:.1f} "
            f"GB, and the evaluation may use {self.total / 1e9:.1f} GB "
            f"({(self.resident + self.transient) / 1e9:.1f} GB taken by the rankers before it)"
        )
        log.warning("%s left out: %s", name, self.skipped[name])
        return False


def _fit(make: Callable[[], RankerT], seconds: dict[str, float] | None) -> RankerT:
    """``make()``; ``seconds`` (if given) gets the wall time of the fit, by ranker name."""
    started = time.perf_counter()
    ranker = make()
    if seconds is not None:
        seconds[ranker.name] = time.perf_counter() - started
    return ranker


def catalogue_baselines(
    data: TrainingData,
    seed: int,
    seconds: dict[str, float] | None = None,
    budget: MemoryBudget | None = None,
) -> list[Ranker]:
    """The baselines of the catalogue protocol, fitted (``seconds``: each fit's wall time),
    those with dense arrays only where ``budget`` holds them (default: none left out)."""
    budget = budget or MemoryBudget(None)
    makers: list[tuple[str, Callable[[], Ranker]]] = [
        (Popularity.name, lambda: Popularity(data)),
        (ItemMean.name, lambda: ItemMean(data)),
        (Ease.name, lambda: Ease(data)),
        (Edlae.name, lambda: Edlae(data)),
        (GfCf.name, lambda: GfCf(data)),
        (Rp3Beta.name, lambda: Rp3Beta(data)),
        (Als.name, lambda: Als(data, seed)),
        (ItemKnn.name, lambda: ItemKnn(data)),
        (MultDae.name, lambda: MultDae(data, seed)),
        (RandomRanker.name, lambda: RandomRanker(data.matrix.shape[1], seed)),
    ]
    return [_fit(make, seconds) for name, make in makers if budget.take(name, data)]


def shelf_baselines(
    data: TrainingData,
    seed: int,
    seconds: dict[str, float] | None = None,
    budget: MemoryBudget | None = None,
) -> list[Ranker]:
    """The baselines of the new-item shelf: nothing collaborative knows a new item. Those with
    dense arrays only where ``budget`` holds them; content_prior_knn needs both its parts."""
    budget = budget or MemoryBudget(None)
    out: list[Ranker] = []
    knn = _fit(lambda: ContentKnn(data), seconds) if budget.take(ContentKnn.name, data) else None
    prior = (
        _fit(lambda: ContentPrior(data), seconds) if budget.take(ContentPrior.name, data) else None
    )
    out += [r for r in (knn, prior) if r is not None]
    if knn is not None and prior is not None:
        out.append(ContentPriorKnn(prior, knn))
    else:
        missing = " and ".join(
            n for n, r in (("content_knn", knn), ("content_prior", prior)) if r is None
        )
        budget.skipped[ContentPriorKnn.name] = f"skipped: {missing} did not fit in memory"
    return [*out, RandomRanker(data.matrix.shape[1], seed)]

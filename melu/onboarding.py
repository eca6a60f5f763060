"""Onboarding: which movies to ask a new user to rate first.

Four strategies order the items with training ratings; a new user walks down the list, rates
what they have seen and skips the rest:

- ``evidence``: MeLU's evidence candidates (``evidence_candidate.py`` of the public code). An
  item's *discriminative value* is the average, over the training users who rated it, of the
  norm of the local update's gradient when that single rating is the support (MeLU's "unit
  loss": the loss divided by its own value, so the size of the error does not count, only how
  far the rating pulls the user's weights); its *popularity* is its number of training
  ratings; each is divided by its maximum and the score is their product. MeLU's code sums the
  gradient norms of every parameter; the local update here changes the adapted parameters
  only, so only theirs count (the taste model's fast weights, at their start:
  :meth:`melu.taste_learner.TasteLearner.unit_gradient_norms`).
- ``popularity``: the number of training ratings.
- ``entropy``: log popularity times the entropy of the item's ratings (Rashid et al., "Getting
  to know you", IUI 2002): popular items people disagree about.
- ``diverse``: a base strategy re-ordered greedily (maximal marginal relevance): each pick
  maximises its normalised base score minus ``penalty`` times its largest content similarity
  (genre, director, actors, rate, year) to the items already picked, so the list is not one
  franchise or one genre. The base and penalty are chosen by simulated onboarding of validation
  users: the best Recall@10 at about popularity's effort (``choose_lists`` in
  :mod:`melu.evaluation.onboarding`).

:func:`compute` scores the catalogue once (batched over every training rating with
``torch.func``) and returns the ordered lists; they are stored in the checkpoint, so the
service serves them without recomputing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from torch.func import functional_call, grad, vmap

from melu.config import RatingScale
from melu.data import ColdStartData
from melu.learners import Learner
from melu.maml import MetaLearner, masked_mse, support_stats
from melu.taste_learner import TasteLearner

log = logging.getLogger(__name__)

STRATEGIES: tuple[str, ...] = ("evidence", "popularity", "entropy", "diverse")
# Items kept per strategy: a person rates a handful and skips the rest; 200 is pages of them.
LIST_LENGTH = 200
DIVERSE_PENALTIES: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)
GRAD_CHUNK = 8192
TASTE_CHUNK = 1024


@dataclass(frozen=True)
class ItemScores:
    """Per catalogue row ``[R]`` (row 0 and items without training ratings score 0)."""

    popularity: np.ndarray
    entropy: np.ndarray
    discriminative: np.ndarray
    evidence: np.ndarray
    seconds: float

    def base(self, strategy: str) -> np.ndarray:
        if strategy == "popularity":
            return self.popularity
        if strategy == "entropy":
            return np.log1p(self.popularity) * self.entropy
        if strategy == "evidence":
            return self.evidence
        raise ValueError(f"unknown base strategy {strategy!r}")


def rating_stats(
    ratings: pd.DataFrame,
    item_rows: dict[int, int],
    n_rows: int,
    scale: RatingScale | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Training ratings per row and the entropy (nats) of each row's rating distribution over
    the values of ``scale`` (the data's; 1..5 in whole stars by default)."""
    scale = scale or RatingScale()
    rows = ratings["item_id"].map(item_rows).to_numpy(dtype=np.int64)
    levels = len(scale.values())
    given = ratings["rating"].to_numpy(dtype=np.float64)
    values = np.clip(np.rint((given - scale.low) / scale.step), 0, levels - 1).astype(np.int64)
    hist = np.zeros((n_rows, levels))
    np.add.at(hist, (rows, values), 1.0)
    count = hist.sum(1)
    p = hist / np.maximum(count, 1.0)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return count, entropy


def _one_rating_supports(
    learner: MetaLearner, ratings: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Offset and context ``[n]``, ``[n, C]`` of ``n`` supports of one rating each, as
    :meth:`MetaLearner.adapt` computes them."""
    mask = torch.ones(len(ratings), 1, dtype=torch.bool, device=ratings.device)
    mean, context = support_stats(ratings.unsqueeze(1), mask)
    offset = mean if learner.net.cfg.residual else torch.zeros_like(mean)
    return offset, context


def _grad_norms(
    learner: MetaLearner,
    users: torch.Tensor,
    items: torch.Tensor,
    ratings: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """For each (user, item, rating) as a one-rating support: the mean over the local steps of
    the summed Frobenius norms of the unit-loss gradient of the adapted parameters ``[n]``."""
    params = {n: p.detach() for n, p in learner.meta_params().items()}
    adapted = {n: params[n] for n in learner.adapted}
    fixed = {n: p for n, p in params.items() if n not in adapted}
    rates = learner.rates()
    net = learner.net
    offset, context = _one_rating_supports(learner, ratings)
    head_only = learner.head_only
    if head_only:
        # The encoder does not adapt: embed every sample once, outside the local steps.
        task, feats = net.encoder(users, items.unsqueeze(1), context)

    def one(
        user: torch.Tensor,
        item: torch.Tensor,
        rating: torch.Tensor,
        off: torch.Tensor,
        ctx: torch.Tensor,
        task_i: torch.Tensor,
        feat_i: torch.Tensor,
    ) -> torch.Tensor:
        y, m = rating.reshape(1), torch.ones(1, dtype=torch.bool, device=rating.device)

        def unit_loss(weights: dict[str, torch.Tensor]) -> torch.Tensor:
            both = {**fixed, **weights}
            head = {k[len("head.") :]: v for k, v in both.items() if k.startswith("head.")}
            if head_only:
                features = (task_i, feat_i)
            else:
                enc = {k[len("encoder.") :]: v for k, v in both.items() if k.startswith("encoder.")}
                features = functional_call(net.encoder, enc, (user, item.unsqueeze(0), ctx))
            pred = functional_call(net.head, head, features) + off
            loss = masked_mse(pred, y, m)
            # MeLU's "unit loss": only the direction the rating pulls in counts.
            return loss / loss.detach().clamp(min=1e-12)

        fast = dict(adapted)
        total = torch.zeros((), dtype=rating.dtype, device=rating.device)
        for _ in range(max(1, steps)):
            grads = grad(unit_loss)(fast)
            total = total + sum(torch.linalg.vector_norm(g) for g in grads.values())
            fast = {n: w - rates[n] * grads[n] for n, w in fast.items()}
        return total / max(1, steps)

    if not head_only:
        task = feats = torch.zeros(len(ratings), 1, device=ratings.device)
    return vmap(one, randomness="same")(users, items, ratings, offset, context, task, feats)


def _head_grad_norms(
    learner: MetaLearner,
    users: torch.Tensor,
    items: torch.Tensor,
    ratings: torch.Tensor,
    steps: int,
) -> torch.Tensor:
    """:func:`_grad_norms` written out for MeLU's local update (the MLP head adapts, one fixed
    rate), in kernel form as :mod:`melu.closed_form` does: a layer's fast weights after steps
    with gradients ``g_s`` at inputs ``a_s`` are ``W - lr * sum_s g_s a_s^T``, so they act on
    an input ``a`` as ``W a - lr * sum_s g_s (a_s . a + 1)`` (the 1: the bias) and no
    per-sample weight is ever formed. The gradient norms are products of norms
    (``||g a^T|| = ||g|| ||a||``)."""
    net = learner.net
    params = {n: p.detach() for n, p in learner.meta_params().items()}
    lr = learner.cfg.local_lr
    offset, context = _one_rating_supports(learner, ratings)
    task, feats = net.encoder(users, items.unsqueeze(1), context)
    x = torch.cat([task, feats.squeeze(1)], dim=-1)  # [n, Dt + Di]
    n_layers = sum(1 for k in params if k.startswith("head.layers.") and k.endswith(".weight"))
    weights = [params[f"head.layers.{i}.weight"] for i in range(n_layers)]
    biases = [params[f"head.layers.{i}.bias"] for i in range(n_layers)]
    # Per layer, the past steps' (gradient at the pre-activation, input) pairs.
    history: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_layers)]

    def forward_layer(i: int, a: torch.Tensor) -> torch.Tensor:
        z = a @ weights[i].t() + biases[i]
        for g_s, a_s in history[i]:
            z = z - lr * g_s * ((a_s * a).sum(-1, keepdim=True) + 1.0)
        return z

    def backward_layer(i: int, g: torch.Tensor) -> torch.Tensor:
        """``W_i'^T g`` for the fast weights (the bias column dropped)."""
        out = g @ weights[i]
        for g_s, a_s in history[i]:
            out = out - lr * a_s * (g_s * g).sum(-1, keepdim=True)
        return out

    total = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for _ in range(max(1, steps)):
        inputs, pre = [x], []
        for i in range(n_layers):
            pre.append(forward_layer(i, inputs[-1]))
            if i < n_layers - 1:
                inputs.append(torch.relu(pre[-1]))
        err = pre[-1].squeeze(-1) + offset - ratings
        # d(loss / loss)/d pred with loss = err^2 is 2 err / err^2 (MeLU's unit loss).
        safe = torch.where(err.abs() < 1e-12, torch.full_like(err, 1e-12), err)
        g = (2.0 / safe).unsqueeze(-1)
        grads: list[torch.Tensor] = [g]
        for i in range(n_layers - 1, 0, -1):
            g = backward_layer(i, g) * (pre[i - 1] > 0).to(g.dtype)
            grads.append(g)
        grads.reverse()  # grads[i]: d unit loss / d pre-activation of layer i
        for i, g_i in enumerate(grads):
            g_norm = torch.linalg.vector_norm(g_i, dim=-1)
            total = total + g_norm * torch.linalg.vector_norm(inputs[i], dim=-1) + g_norm
        for i, g_i in enumerate(grads):
            history[i].append((g_i, inputs[i]))
    return total / max(1, steps)


@torch.no_grad()
def discriminative_values(
    learner: Learner,
    data: ColdStartData,
    chunk: int = GRAD_CHUNK,
) -> np.ndarray:
    """MeLU's discriminative value of every catalogue row ``[R]`` from the training ratings."""
    was_training = learner.training
    learner.eval()
    ratings = data.train_ratings
    rows = ratings["item_id"].map(data.catalogue.rows).to_numpy(dtype=np.int64)
    user_rows = ratings["user_id"].map(data.user_rows).to_numpy(dtype=np.int64)
    values = ratings["rating"].to_numpy(dtype=np.float32)
    dtype = next(learner.parameters()).dtype
    device = next(learner.parameters()).device
    sums = np.zeros(len(data.catalogue.item_ids))
    counts = np.zeros(len(data.catalogue.item_ids))
    table = data.catalogue.table.to(device)
    side = (
        learner.catalogue_side(table, data.catalogue.recommendable.to(device))
        if isinstance(learner, TasteLearner)
        else None
    )
    # The taste model scores one-rating supports against the whole catalogue: smaller chunks.
    chunk = chunk if side is None else min(chunk, TASTE_CHUNK)
    try:
        for start in range(0, len(rows), chunk):
            sl = slice(start, start + chunk)
            users = data.user_table[torch.from_numpy(user_rows[sl].copy())].to(device)
            row_t = torch.from_numpy(rows[sl].copy()).to(device)
            given = torch.from_numpy(values[sl].copy()).to(device=device, dtype=dtype)
            if isinstance(learner, TasteLearner):
                assert side is not None
                norms = learner.unit_gradient_norms(users, row_t, table[row_t], given, side)
            else:
                fn = _head_grad_norms if learner.closed_form else _grad_norms
                norms = fn(learner, users, table[row_t], given, learner.cfg.local_steps)
            np.add.at(sums, rows[sl], norms.double().cpu().numpy())
            np.add.at(counts, rows[sl], 1.0)
    finally:
        learner.train(was_training)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)


def item_scores(learner: Learner, data: ColdStartData) -> ItemScores:
    """Every strategy's per-item score; the gradients dominate the time."""
    started = time.perf_counter()
    n_rows = len(data.catalogue.item_ids)
    popularity, entropy = rating_stats(data.train_ratings, data.catalogue.rows, n_rows, data.scale)
    discriminative = discriminative_values(learner, data)
    d_max, p_max = discriminative.max(), popularity.max()
    evidence = (discriminative / max(d_max, 1e-12)) * (popularity / max(p_max, 1e-12))
    return ItemScores(
        popularity, entropy, discriminative, evidence, round(time.perf_counter() - started, 2)
    )


def ordered(scores: np.ndarray, length: int = LIST_LENGTH) -> np.ndarray:
    """Rows with a positive score, best first, ties by row (= item id)."""
    rows = np.flatnonzero(scores > 0)
    order = np.lexsort((rows, -scores[rows]))
    return rows[order][:length]


def diverse(
    scores: np.ndarray,
    vectors: sparse.csr_matrix,
    penalty: float,
    length: int = LIST_LENGTH,
    pool: int = 1000,
) -> np.ndarray:
    """Greedy maximal marginal relevance over the ``pool`` best rows of ``scores``."""
    candidates = ordered(scores, pool)
    if len(candidates) == 0:
        return candidates
    base = scores[candidates] / scores[candidates].max()
    sim = np.asarray((vectors[candidates] @ vectors[candidates].T).todense())
    closest = np.zeros(len(candidates))
    taken = np.zeros(len(candidates), dtype=bool)
    picked: list[int] = []
    for _ in range(min(length, len(candidates))):
        gain = np.where(taken, -np.inf, base - penalty * closest)
        best = int(np.argmax(gain))  # first of equals: the better base rank
        picked.append(best)
        taken[best] = True
        closest = np.maximum(closest, sim[best])
    return candidates[np.array(picked)]


@dataclass(frozen=True)
class Lists:
    """The onboarding lists (catalogue rows), one per strategy, and how they were made."""

    rows: dict[str, np.ndarray]
    info: dict[str, Any]

    def item_ids(self, item_ids: np.ndarray) -> dict[str, list[int]]:
        return {s: [int(item_ids[r]) for r in rows] for s, rows in self.rows.items()}


def build_lists(
    scores: ItemScores,
    vectors: sparse.csr_matrix,
    diverse_base: str = "evidence",
    penalty: float = 0.25,
    length: int = LIST_LENGTH,
) -> Lists:
    rows = {s: ordered(scores.base(s), length) for s in ("evidence", "popularity", "entropy")}
    rows["diverse"] = diverse(scores.base(diverse_base), vectors, penalty, length)
    info = {
        "diverse_base": diverse_base,
        "diverse_penalty": penalty,
        "length": length,
        "evidence_seconds": scores.seconds,
    }
    return Lists(rows, info)


def to_checkpoint(lists: Lists, item_ids: np.ndarray) -> dict[str, Any]:
    """What a checkpoint stores: the lists as raw item ids, and how they were made."""
    return {"lists": lists.item_ids(item_ids), "info": lists.info}

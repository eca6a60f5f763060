"""The model side of the service: check and encode requests, adapt, score, rank.

A request becomes a :class:`Job` (support rows, ratings, user ids, and what to return) on the
event loop; :meth:`Recommender.run` then adapts a whole batch of jobs in one call to melu's
``MetaLearner.adapt`` (the same function training and evaluation use) and scores the catalogue
for each. Fast weights exist only inside ``run``; the meta-parameters are only read.

Padding makes batching invisible: a job padded to a longer support with masked entries adapts
to the same fast weights as alone, so the answer does not depend on its neighbours.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from starlette.exceptions import HTTPException as StarletteHTTPException

from melu.checkpoint import Checkpoint
from melu.config import to_dict
from melu.errors import CheckpointError
from melu.features import USER_FIELDS
from melu.movielens import ML1M_AGE_CODES, describe_age_codes, split_title_year
from melu.ranking import batch_invariant, because, catalogue_scores_and_ratings, top_k_row
from service.catalogue import CachedItemSide, ClusterRetrieval
from service.errors import FieldError, InputError
from service.schemas import (
    RATING_MAX,
    RATING_MIN,
    AdaptationInfo,
    CatalogueItem,
    Limits,
    ModelDetails,
    ModelInfo,
    Rating,
    RecommendRequest,
    ScoredItem,
    ScoreRequest,
    UserFeatures,
)
from service.settings import Settings

log = logging.getLogger(__name__)

# Fields with a closed set of codes: an unseen value is a client error. Zip codes are open:
# most new users' zips were never seen in training, so they fall back to the unknown embedding.
CLOSED_USER_FIELDS: tuple[str, ...] = ("gender", "age", "occupation")
# Report at most this many errors of one list, so 5000 bad ids do not make a 5000-line answer.
MAX_ERRORS_PER_LIST = 20
# Title searches remembered (the page's search-as-you-type repeats them).
SEARCH_CACHE = 1024
# The age vocabulary of MovieLens-1M (and of ML-100K, bucketed into it): a refused age is
# answered with what each code means.
AGE_TOKENS: tuple[str, ...] = tuple(str(code) for code in ML1M_AGE_CODES)


class NonFiniteError(RuntimeError):
    """The model produced NaN or an infinity (never expected from a checked checkpoint)."""


def non_finite_parameters(module: torch.nn.Module) -> list[str]:
    """Names of the weights holding NaN or an infinity."""
    return [
        name
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _named_rows(job: Job) -> torch.Tensor | None:
    """The rows a job must have scored exactly: its /score ids or its candidates."""
    select = job.select
    rows = select.rows if isinstance(select, Pick) else select.pool
    return torch.tensor(rows, dtype=torch.long) if rows else None


class TopK(NamedTuple):
    """The ``k`` best items of ``pool`` (rows in item-id order; ``None``: the whole catalogue)
    minus the ``exclude`` rows."""

    k: int
    pool: tuple[int, ...] | None
    exclude: tuple[int, ...]


class Pick(NamedTuple):
    """Scores of exactly these rows, in this order."""

    rows: tuple[int, ...]


@dataclass(frozen=True)
class Job:
    """One request, encoded: everything :meth:`Recommender.run` needs and nothing else."""

    user: tuple[int, ...]
    rows: tuple[int, ...]
    ratings: tuple[float, ...]
    select: TopK | Pick
    unknown_user_fields: tuple[str, ...] = ()


class Scored(NamedTuple):
    """One item of an answer: its row, ranking score, predicted rating (1..5) and the row of
    the loved item it follows (:func:`melu.ranking.because`; None where there is none)."""

    row: int
    score: float
    rating: float
    because: int | None


@dataclass(frozen=True)
class Outcome:
    items: list[Scored]
    loss_before: float
    loss_after: float


def _finite_or_none(value: Any) -> Any:
    """Metrics as JSON: NaN and infinities (a diverged epoch) become null instead of a 500."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _finite_or_none(value.tolist())
    return value


def parameters_sha256(module: torch.nn.Module) -> str:
    """Hash of every tensor in the state dict, by name: equal iff the weights are byte-equal."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _code_order(token: str) -> tuple[int, int | str]:
    return (0, int(token)) if token.isdigit() else (1, token)


class Recommender:
    """A loaded checkpoint, ready to adapt and score. :meth:`run` is not thread-safe: the
    batcher calls it from a single worker thread."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: torch.device,
        local_steps: int | None,
        retrieval_fraction: float = 0.0,
        compute: bool = True,
    ):
        """``compute=False``: a copy that only encodes requests and describes items (the
        server's, when a worker process computes): no per-item caches, which at a million
        items are the bulk of the memory, and :meth:`run` is refused."""
        self.checkpoint = checkpoint
        self.computes = compute
        self.device = device
        self.catalogue = checkpoint.catalogue
        self.encoder = checkpoint.encoder
        self.learner = checkpoint.learner(device)
        broken = non_finite_parameters(self.learner)
        if broken:
            # A diverged or corrupted run would otherwise serve as healthy and answer with
            # empty lists and null scores.
            shown = ", ".join(broken[:3]) + (
                f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            )
            raise CheckpointError(
                f"the checkpoint's weights hold NaN or infinite values ({shown}); "
                "refusing to serve it"
            )
        self.steps = checkpoint.meta.local_steps if local_steps is None else local_steps
        self.dtype = next(self.learner.parameters()).dtype
        self.table = self.catalogue.table.to(device)
        self.features: torch.Tensor | None = None
        self.item_side: CachedItemSide | None = None
        self.retrieval: ClusterRetrieval | None = None
        if compute and self.learner.head_only:
            # Items embed the same way for every user when only the head adapts: embed the
            # catalogue once here and let each request run the head only.
            with torch.no_grad():
                self.features = self.learner.item_features(self.table)
            # The cached first layer computes the predicted ratings (the rating encoder's part
            # of the item features); a watch model adds its logits to them.
            rating_part = self.features[:, : self.learner.net.encoder.item_dim]
            self.item_side = CachedItemSide(self.learner, rating_part)
            if self.learner.watch is None and retrieval_fraction > 0:
                self.retrieval = ClusterRetrieval(self.item_side, retrieval_fraction)
            elif retrieval_fraction > 0:
                log.warning("MELU_RETRIEVAL_FRACTION applies to rating-only models; ignored")
        elif compute:
            log.warning("the encoder adapts per user: every request embeds the whole catalogue")

        self.item_ids: list[int] = [int(i) for i in self.catalogue.item_ids.tolist()]
        self.titles: list[str] = list(self.catalogue.titles)
        self.rows: dict[int, int] = self.catalogue.rows
        # Ties are broken by item id: the stable sort in _top keeps this order among equals.
        by_id = sorted(range(1, len(self.item_ids)), key=lambda r: self.item_ids[r])
        self._by_id = torch.tensor(by_id, dtype=torch.long)
        self._rows_by_id = by_id
        self._lower_titles = [t.lower() for t in self.titles]
        self._years = [self.catalogue.year(r) for r in range(len(self.item_ids))]
        self._searches: dict[tuple[str, int], tuple[list[CatalogueItem], int]] = {}

        self.user_values: dict[str, list[str]] = {
            f: sorted(self.encoder.user_vocab[f].tokens, key=_code_order)
            for f in CLOSED_USER_FIELDS
        }
        # Codes match case- and space-insensitively ("f" is "F"), then use the vocabulary token.
        self._canonical = {
            f: {t.strip().lower(): t for t in self.encoder.user_vocab[f].tokens}
            for f in CLOSED_USER_FIELDS
        }
        self.sha256 = parameters_sha256(self.learner)
        metrics = checkpoint.metrics
        best_mae = _finite_or_none(metrics.get("best_val_mae"))
        best_epoch = metrics.get("best_epoch")
        self.info = ModelInfo(
            version=checkpoint.versions.get("melu", "unknown"),
            best_val_mae=float(best_mae) if best_mae is not None else None,
            best_epoch=int(best_epoch) if best_epoch is not None else None,
            parameters_sha256=self.sha256,
            versions=dict(checkpoint.versions),
        )

    def __len__(self) -> int:
        return len(self.item_ids) - 1

    # --- requests -> jobs (event loop; pure Python, no torch) --------------------------------

    @staticmethod
    def _within(
        ids: Sequence[int], field: str, noun: str, settings: Settings, errors: list[FieldError]
    ) -> bool:
        """Whether a list of item ids fits ``max_candidates``; records the error if not."""
        if len(ids) <= settings.max_candidates:
            return True
        errors.append(
            FieldError(
                ("body", field),
                f"at most {settings.max_candidates} {noun} are allowed, got {len(ids)}",
                "too_long",
            )
        )
        return False

    def _item_rows(
        self, ids: Sequence[int], loc: tuple[str | int, ...], errors: list[FieldError]
    ) -> list[int]:
        rows, found = [], 0
        for i, item_id in enumerate(ids):
            row = self.rows.get(item_id)
            if row is None:
                found += 1
                if found <= MAX_ERRORS_PER_LIST:
                    errors.append(
                        FieldError((*loc, i), f"unknown item id {item_id}", "unknown_item")
                    )
                continue
            rows.append(row)
        if found > MAX_ERRORS_PER_LIST:
            errors.append(
                FieldError(loc, f"{found} unknown item ids in all", "unknown_item"),
            )
        return rows

    def _support(
        self, ratings: list[Rating], settings: Settings, errors: list[FieldError]
    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        if len(ratings) > settings.max_ratings:
            errors.append(
                FieldError(
                    ("body", "ratings"),
                    f"at most {settings.max_ratings} ratings are allowed, got {len(ratings)}",
                    "too_long",
                )
            )
            return (), ()
        rows: list[int] = []
        values: list[float] = []
        first: dict[int, int] = {}
        reported = 0
        for i, rating in enumerate(ratings):
            loc = ("body", "ratings", i, "item_id")
            row = self.rows.get(rating.item_id)
            if row is None:
                problem = FieldError(loc, f"unknown item id {rating.item_id}", "unknown_item")
            elif rating.item_id in first:
                problem = FieldError(
                    loc,
                    f"duplicate item id {rating.item_id} (also ratings[{first[rating.item_id]}])",
                    "duplicate_item",
                )
            else:
                first[rating.item_id] = i
                rows.append(row)
                values.append(rating.rating)
                continue
            reported += 1
            if reported <= MAX_ERRORS_PER_LIST:
                errors.append(problem)
        if reported > MAX_ERRORS_PER_LIST:
            errors.append(FieldError(("body", "ratings"), f"{reported} bad ratings in all"))
        return tuple(rows), tuple(values)

    def _user(
        self, user: UserFeatures | None, errors: list[FieldError]
    ) -> tuple[tuple[int, ...], tuple[str, ...]]:
        values: dict[str, str | None] = {}
        given = user.model_dump() if user is not None else {}
        for field in USER_FIELDS:
            raw = given.get(field)
            value = raw.strip() if isinstance(raw, str) else None
            if not value:
                continue
            if field in self._canonical:
                token = self._canonical[field].get(value.lower())
                if token is None:
                    allowed = ", ".join(self.user_values[field])
                    if field == "age" and set(self.user_values["age"]) <= set(AGE_TOKENS):
                        # The codes alone do not say that 30 is "25" (25-34).
                        allowed = f"MovieLens age codes {describe_age_codes()}"
                    errors.append(
                        FieldError(
                            ("body", "user", field),
                            f"unknown value {value!r}; allowed: {allowed}",
                            "unknown_value",
                        )
                    )
                    continue
                value = token
            values[field] = value
        unknown = tuple(self.encoder.unknown_user_values(values))
        return tuple(self.encoder.encode_user(values)), unknown

    def recommend_job(self, request: RecommendRequest, settings: Settings) -> Job:
        errors: list[FieldError] = []
        rows, ratings = self._support(request.ratings, settings, errors)
        user, unknown = self._user(request.user, errors)
        if request.k < 1:
            errors.append(
                FieldError(
                    ("body", "k"),
                    "Input should be greater than or equal to 1",
                    "greater_than_equal",
                )
            )
        elif request.k > settings.max_k:
            errors.append(
                FieldError(
                    ("body", "k"),
                    f"Input should be less than or equal to {settings.max_k}",
                    "less_than_equal",
                )
            )
        pool: tuple[int, ...] | None = None
        candidates = request.candidates
        if candidates is not None and self._within(
            candidates, "candidates", "candidates", settings, errors
        ):
            found = self._item_rows(candidates, ("body", "candidates"), errors)
            rated = set(rows) if request.exclude_rated else set()
            # Duplicates are harmless here: rank each candidate once.
            unique = {r for r in found if r not in rated}
            pool = tuple(sorted(unique, key=lambda r: self.item_ids[r]))
        if errors:
            raise InputError(errors)
        exclude = rows if request.exclude_rated and pool is None else ()
        return Job(user, rows, ratings, TopK(request.k, pool, exclude), unknown)

    def score_job(self, request: ScoreRequest, settings: Settings) -> Job:
        errors: list[FieldError] = []
        rows, ratings = self._support(request.ratings, settings, errors)
        user, unknown = self._user(request.user, errors)
        picked: list[int] = []
        if self._within(request.item_ids, "item_ids", "item ids", settings, errors):
            picked = self._item_rows(request.item_ids, ("body", "item_ids"), errors)
        if errors:
            raise InputError(errors)
        return Job(user, rows, ratings, Pick(tuple(picked)), unknown)

    # --- jobs -> outcomes (the worker thread; all the torch work) ----------------------------

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Adapt every job in one ``adapt`` call and score the catalogue for each."""
        if not self.computes:
            raise RuntimeError("this copy of the model only encodes requests (compute=False)")
        width = max(len(job.rows) for job in jobs)
        rows = [list(j.rows) + [0] * (width - len(j.rows)) for j in jobs]
        ratings = [list(j.ratings) + [0.0] * (width - len(j.ratings)) for j in jobs]
        mask = [[True] * len(j.rows) + [False] * (width - len(j.rows)) for j in jobs]
        # no_grad, not inference_mode: the vmap path's torch.func.grad takes the inner
        # gradients either way, and no_grad is what melu's own evaluation runs under.
        with torch.no_grad():
            users = torch.tensor([j.user for j in jobs], dtype=torch.long, device=self.device)
            x_spt = self.table[torch.tensor(rows, dtype=torch.long, device=self.device)]
            y_spt = torch.tensor(ratings, dtype=self.dtype, device=self.device)
            mask_spt = torch.tensor(mask, dtype=torch.bool, device=self.device)
            adaptation = self.learner.adapt(users, x_spt, y_spt, mask_spt, steps=self.steps)
            retrieved = False
            if self.item_side is not None and self.item_side.applies(adaptation):
                if self.retrieval is not None:
                    # Only the best clusters' items are scored (-inf elsewhere); the rows a
                    # request names (candidates, /score ids) always are.
                    scores = self.retrieval.scores(adaptation, [_named_rows(j) for j in jobs])
                    retrieved = True
                else:
                    # The same ratings as melu.ranking's, with the per-model part computed once.
                    scores = self.item_side.scores(adaptation)
                ratings_all = scores
                if self.learner.watch is not None and self.features is not None:
                    scores = self.learner.rank_scores(
                        adaptation, users, self.features, ratings=ratings_all
                    )
            else:
                scores, ratings_all = catalogue_scores_and_ratings(
                    self.learner, adaptation, users, self.table, self.features
                )
            pred = batch_invariant(scores.cpu())  # [B, n_items + 1]
            rated = batch_invariant(ratings_all.cpu())
            before = adaptation.loss_before.tolist()
            after = adaptation.loss_after.tolist()
            # Row 0 is padding. Checked weights on finite inputs stay finite; should they not,
            # the request fails (a JSON 500) rather than answer null or unranked scores.
            body = pred[:, 1:]
            bad = torch.isnan(body) | (body == math.inf)
            if not retrieved:
                bad |= body == -math.inf  # with retrieval, -inf marks the rows not retrieved
            if bool(bad.any()) or not all(math.isfinite(v) for v in before + after):
                raise NonFiniteError("the model produced a non-finite prediction")
            outcomes = []
            for i, job in enumerate(jobs):
                chosen = self._select(pred[i], job.select)
                follows = self._because(adaptation, users, i, job, chosen)
                items = [
                    Scored(
                        row,
                        float(pred[i, row]),
                        float(rated[i, row].clamp(RATING_MIN, RATING_MAX)),
                        follows[k],
                    )
                    for k, row in enumerate(chosen)
                ]
                outcomes.append(Outcome(items, before[i], after[i]))
            return outcomes

    def _because(
        self, adaptation: Any, users: torch.Tensor, i: int, job: Job, rows: list[int]
    ) -> list[int | None]:
        """For each listed row, the loved rated row it follows, or None (melu's rule)."""
        if self.learner.watch is None or self.features is None or not rows or not job.rows:
            return [None] * len(rows)
        one = adaptation._replace(
            user=adaptation.user[i : i + 1], evidence=adaptation.evidence[i : i + 1]
        )
        return because(
            self.learner, one, users[i : i + 1], self.features, rows, job.rows, job.ratings
        )

    def _select(self, pred: torch.Tensor, select: TopK | Pick) -> list[int]:
        """The rows a job answers with: its /score ids in their order, or its top k."""
        if isinstance(select, Pick):
            return list(select.rows)
        if select.pool is not None:
            pool = torch.tensor(select.pool, dtype=torch.long)
        elif select.exclude:
            keep = torch.ones(pred.shape[0], dtype=torch.bool)
            keep[list(select.exclude)] = False
            pool = self._by_id[keep[self._by_id]]
        else:
            pool = self._by_id
        if pool.numel() == 0:
            return []
        # The order is melu.ranking's, as in evaluation: descending score, ties by item id.
        return [int(r) for r in top_k_row(pred, pool, select.k).tolist()]

    # --- outcomes -> responses ---------------------------------------------------------------

    def scored(self, outcome: Outcome) -> list[ScoredItem]:
        return [
            ScoredItem(
                **self.item(it.row).model_dump(),
                score=it.score,
                predicted_rating=it.rating,
                because=None if it.because is None else self.item(it.because),
            )
            for it in outcome.items
        ]

    def adaptation_info(self, job: Job, outcome: Outcome) -> AdaptationInfo:
        return AdaptationInfo(
            steps=self.steps,
            support_loss_before=outcome.loss_before,
            support_loss_after=outcome.loss_after,
            unknown_user_fields=list(job.unknown_user_fields),
        )

    # --- catalogue and metadata --------------------------------------------------------------

    def item(self, row: int) -> CatalogueItem:
        """A catalogue row as answers name it: id, title, year and genres."""
        return CatalogueItem(
            item_id=self.item_ids[row],
            title=self.titles[row],
            year=self._years[row],
            genres=self.catalogue.genres_of(row),
        )

    def onboarding(self, strategy: str, n: int) -> tuple[list[CatalogueItem], int]:
        """The first ``n`` movies of a stored onboarding list, and the list's length."""
        lists = self.checkpoint.onboarding.get("lists", {})
        if strategy not in lists:
            raise StarletteHTTPException(
                404,
                "this checkpoint holds no onboarding lists: `melu train` stores them, or run "
                "`melu onboarding --checkpoint ... --data-dir ... --save`",
            )
        ids = [i for i in lists[strategy] if i in self.rows]
        return [self.item(self.rows[i]) for i in ids[:n]], len(ids)

    def search(self, query: str, limit: int) -> tuple[list[CatalogueItem], int]:
        """Titles containing ``query`` (case-insensitive): exact, then prefix, then the rest,
        each by item id. A year in parentheses at the end (``Star Wars (1977)``, as the page
        and MovieLens write titles) keeps the films of that year whose title contains the rest;
        stored titles carry no year."""
        # This runs on the event loop, so it must stay cheap: no query lists the catalogue in
        # id order without searching, only ``limit`` answers are built, and searches repeat
        # (search-as-you-type), so recent ones are remembered.
        needle = query.strip().lower()
        key = (needle, limit)
        cached = self._searches.get(key)
        if cached is not None:
            return cached
        titles = self._lower_titles
        if not needle:
            hits = self._rows_by_id
        else:
            name, year_text = split_title_year(needle)
            year = int(year_text) if year_text else None

            hits = [r for r in range(1, len(titles)) if needle in titles[r]]
            if year is not None:
                # Titles carry no year; one that does still matches the query as typed.
                years = self._years
                dated = [r for r in range(1, len(titles)) if years[r] == year and name in titles[r]]
                hits = sorted(set(hits) | set(dated))

            def rank(row: int) -> tuple[int, int]:
                title = titles[row]
                words = name if year is not None and self._years[row] == year else needle
                kind = 0 if title == words else 1 if title.startswith(words) else 2
                return kind, self.item_ids[row]

            hits.sort(key=rank)
        items = [self.item(r) for r in hits[:limit]]
        if len(self._searches) >= SEARCH_CACHE:
            self._searches.pop(next(iter(self._searches)))  # the oldest
        self._searches[key] = (items, len(hits))
        return items, len(hits)

    def details(self, settings: Settings, sha256_now: str) -> ModelDetails:
        ck = self.checkpoint
        return ModelDetails(
            info=self.info,
            parameters_sha256_now=sha256_now,
            items=len(self),
            local_steps=self.steps,
            head_only=self.learner.head_only,
            precomputed_item_features=self.learner.head_only,
            user_values=self.user_values,
            configs={
                "data": to_dict(ck.data),
                "model": to_dict(ck.model),
                "meta": to_dict(ck.meta),
                "train": to_dict(ck.train),
            },
            metrics=_finite_or_none(ck.metrics),
            limits=Limits(
                max_ratings=settings.max_ratings,
                max_k=settings.max_k,
                max_candidates=settings.max_candidates,
                max_body_bytes=settings.max_body_bytes,
            ),
        )

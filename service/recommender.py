"""The model side of the service: check and encode requests, adapt, score, rank.

A request becomes a :class:`Job` (support rows, ratings, user ids, and what to return) on the
event loop; :meth:`Recommender.run` then adapts a whole batch of jobs in one call and scores
the catalogue for each through :class:`melu.scoring.CatalogueScorer`, the one scoring path
evaluation measures: ``adapt`` (the learner's local update), ``scores``, then
:func:`melu.ranking.top_k_row` over the pool (by default :func:`melu.objectives.candidates`:
the recommendable items minus the rated ones) and ``explain`` for "because you loved". Fast
weights exist only inside ``run``; the meta-parameters are only read.

What the model accepts is the checkpoint's to say: ratings on its scale
(``DataConfig.scale``; :func:`service.schemas.off_scale`), the user fields it reads (none for
the CSV releases). A user field it does not read is ignored and named in the answer, not
refused: a client that always sends its user's profile (the page, an app) keeps working
against any checkpoint, and a field the model cannot read changes nothing in the answer.

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
from melu.maml import Adaptation, MetaLearner
from melu.movielens import CODE_MEANINGS, describe_codes, split_title_year
from melu.objectives import candidates
from melu.ranking import BECAUSE_MIN_RATING, batch_invariant, top_k_row
from melu.scoring import CatalogueScorer
from melu.taste_learner import TasteLearner
from service.catalogue import ClusterRetrieval
from service.errors import FieldError, InputError
from service.schemas import (
    AdaptationInfo,
    CatalogueItem,
    IgnoredField,
    Limits,
    ModelDetails,
    ModelInfo,
    Rating,
    RecommendRequest,
    ScaleInfo,
    ScoredItem,
    ScoreRequest,
    UserFeatures,
    off_scale,
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
    """The ``k`` best items of ``pool`` (ascending rows, the rated ones already left out where
    asked). ``None``: the recommendable items, minus the rated ones if ``exclude_rated``
    (:func:`melu.objectives.candidates`)."""

    k: int
    pool: tuple[int, ...] | None
    exclude_rated: bool = True


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
    # (field, why) of each given user field the model does not read.
    ignored_user_fields: tuple[tuple[str, str], ...] = ()
    # Whether it names a row outside the recommendable set (a new item): only then are those
    # rows scored (CatalogueScorer.scores' every_row).
    names_new_items: bool = False


class Scored(NamedTuple):
    """One item of an answer: its row, ranking score, predicted rating (on the model's scale)
    and the row of the loved item it follows (:meth:`CatalogueScorer.explain`; None where
    there is none)."""

    row: int
    score: float
    rating: float
    because: int | None
    # Whether the row clears the user's own mean (None: the model keeps no floor).
    above_floor: bool | None = None


@dataclass(frozen=True)
class Outcome:
    items: list[Scored]
    loss_before: float
    loss_after: float
    # The user's own mean rating as the model holds lists above it (None: no floor).
    floor: float | None = None


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
        self.scale = checkpoint.data.scale
        learner = self.learner
        self.taste = isinstance(learner, TasteLearner)
        self.head_only = isinstance(learner, MetaLearner) and learner.head_only
        self.floor = isinstance(learner, TasteLearner) and learner.net.cfg.rank_floor
        # The fields of the training data (the encoder's) that the model reads (its config's):
        # the default preset reads no zip code, the CSV releases have no user fields at all.
        self.user_fields = tuple(
            f for f in self.encoder.user_fields if f in checkpoint.model.user_fields
        )
        # [R] bool, and its rows: the one recommendable set (items with training ratings).
        self.recommendable = self.catalogue.recommendable.to(device)
        self._recommendable_rows = torch.nonzero(self.catalogue.recommendable).squeeze(1)
        self._is_recommendable: list[bool] = self.catalogue.recommendable.tolist()
        self.scorer: CatalogueScorer | None = None
        self.retrieval: ClusterRetrieval | None = None
        if compute:
            # The per-catalogue work (the taste model's item side, MeLU's embedded items and
            # cached first layer) is done once, here.
            self.scorer = CatalogueScorer(learner, self.table, self.recommendable)
            cached = self.scorer.cached
            if retrieval_fraction > 0 and cached is not None:
                self.retrieval = ClusterRetrieval(cached, retrieval_fraction)
            elif retrieval_fraction > 0:
                log.warning(
                    "MELU_RETRIEVAL_FRACTION applies to MeLU's rating network with the "
                    "closed-form local update; this model scores every item (ignored)"
                )
            if isinstance(learner, MetaLearner) and not learner.head_only:
                log.warning("the encoder adapts per user: every request embeds the whole catalogue")

        self.item_ids: list[int] = [int(i) for i in self.catalogue.item_ids.tolist()]
        self.titles: list[str] = list(self.catalogue.titles)
        self.rows: dict[int, int] = self.catalogue.rows
        # Rows are in item-id order (Catalogue.build), so melu.ranking's ties by row are ties
        # by item id; listing the catalogue in id order needs no sort.
        by_id = sorted(range(1, len(self.item_ids)), key=lambda r: self.item_ids[r])
        self._rows_by_id = by_id
        self._lower_titles = [t.lower() for t in self.titles]
        self._years = [self.catalogue.year(r) for r in range(len(self.item_ids))]
        self._searches: dict[tuple[str, int], tuple[list[CatalogueItem], int]] = {}

        closed = [f for f in CLOSED_USER_FIELDS if f in self.user_fields]
        self.user_values: dict[str, list[str]] = {
            f: sorted(self.encoder.user_vocab[f].tokens, key=_code_order) for f in closed
        }
        # What the codes mean, for the fields whose values are all MovieLens codes (ML-1M's and
        # MeLU's age and occupation, ML-100K's age buckets; not ML-100K's occupation words).
        self.user_value_meanings: dict[str, dict[str, str]] = {
            f: {t: CODE_MEANINGS[f][t] for t in tokens}
            for f, tokens in self.user_values.items()
            if f in CODE_MEANINGS and set(tokens) <= set(CODE_MEANINGS[f])
        }
        # Codes match case- and space-insensitively ("f" is "F"), then use the vocabulary token.
        self._canonical = {
            f: {t.strip().lower(): t for t in self.encoder.user_vocab[f].tokens} for f in closed
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
            problems = []
            if row is None:
                problems.append(
                    FieldError(loc, f"unknown item id {rating.item_id}", "unknown_item")
                )
            elif rating.item_id in first:
                problems.append(
                    FieldError(
                        loc,
                        f"duplicate item id {rating.item_id} "
                        f"(also ratings[{first[rating.item_id]}])",
                        "duplicate_item",
                    )
                )
            why = off_scale(rating.rating, self.scale)
            if why is not None:
                problems.append(FieldError(("body", "ratings", i, "rating"), why, "off_scale"))
            if not problems:
                first[rating.item_id] = i
                assert row is not None
                rows.append(row)
                values.append(rating.rating)
                continue
            reported += 1
            if reported <= MAX_ERRORS_PER_LIST:
                errors.extend(problems)
        if reported > MAX_ERRORS_PER_LIST:
            errors.append(FieldError(("body", "ratings"), f"{reported} bad ratings in all"))
        return tuple(rows), tuple(values)

    def _ignored(self, field: str) -> str:
        """Why a given user field is ignored (the model does not read it)."""
        if not self.user_fields:
            return (
                "this model reads no user fields (its training data has none): ignored, the "
                "answer is the same without it"
            )
        if self.encoder.ignored_user_values({field: "given"}):
            return f"this model's training data has no {field}: ignored"
        return f"this model was trained without {field}: ignored"

    def _user(
        self, user: UserFeatures | None, errors: list[FieldError]
    ) -> tuple[tuple[int, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
        """The user's field ids, the fields whose value training never saw, and the given
        fields the model does not read (with why)."""
        values: dict[str, str | None] = {}
        ignored: list[tuple[str, str]] = []
        given = user.model_dump() if user is not None else {}
        for field in USER_FIELDS:
            raw = given.get(field)
            value = raw.strip() if isinstance(raw, str) else None
            if not value:
                continue
            if field not in self.user_fields:
                ignored.append((field, self._ignored(field)))
                continue
            if field in self._canonical:
                token = self._canonical[field].get(value.lower())
                if token is None:
                    allowed = ", ".join(self.user_values[field])
                    if field in self.user_value_meanings:
                        # The codes alone do not say that 30 is "25" (25-34), nor which
                        # number is a programmer.
                        allowed = f"MovieLens {field} codes " + describe_codes(
                            self.user_value_meanings[field]
                        )
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
        return tuple(self.encoder.encode_user(values)), unknown, tuple(ignored)

    def recommend_job(self, request: RecommendRequest, settings: Settings) -> Job:
        errors: list[FieldError] = []
        rows, ratings = self._support(request.ratings, settings, errors)
        user, unknown, ignored = self._user(request.user, errors)
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
        named = request.candidates
        if named is not None and self._within(named, "candidates", "candidates", settings, errors):
            # Any catalogue item may be named, new items too: a new release reaches a user
            # this way (the default pool holds the recommendable items only).
            found = self._item_rows(named, ("body", "candidates"), errors)
            rated = set(rows) if request.exclude_rated else set()
            # Duplicates are harmless here: rank each candidate once. Ascending rows, as
            # melu.ranking.top_k_row takes them (ties go to the smaller row, the smaller id).
            pool = tuple(sorted({r for r in found if r not in rated}))
        if errors:
            raise InputError(errors)
        select = TopK(request.k, pool, request.exclude_rated)
        return Job(user, rows, ratings, select, unknown, ignored, self._names_new(pool or ()))

    def score_job(self, request: ScoreRequest, settings: Settings) -> Job:
        errors: list[FieldError] = []
        rows, ratings = self._support(request.ratings, settings, errors)
        user, unknown, ignored = self._user(request.user, errors)
        picked: list[int] = []
        if self._within(request.item_ids, "item_ids", "item ids", settings, errors):
            picked = self._item_rows(request.item_ids, ("body", "item_ids"), errors)
        if errors:
            raise InputError(errors)
        named_new = self._names_new(picked)
        return Job(user, rows, ratings, Pick(tuple(picked)), unknown, ignored, named_new)

    def _names_new(self, rows: Sequence[int]) -> bool:
        return not all(self._is_recommendable[r] for r in rows)

    # --- jobs -> outcomes (the worker thread; all the torch work) ----------------------------

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Adapt every job in one ``adapt`` call and answer each from the catalogue's scores:
        :class:`melu.scoring.CatalogueScorer`, as evaluation scores."""
        scorer = self.scorer
        if scorer is None:
            raise RuntimeError("this copy of the model only encodes requests (compute=False)")
        width = max(len(job.rows) for job in jobs)
        rows = [list(j.rows) + [0] * (width - len(j.rows)) for j in jobs]
        ratings = [list(j.ratings) + [0.0] * (width - len(j.ratings)) for j in jobs]
        mask = [[True] * len(j.rows) + [False] * (width - len(j.rows)) for j in jobs]
        # no_grad, not inference_mode: the local steps take their gradients under
        # enable_grad either way, and no_grad is what melu's own evaluation runs under.
        with torch.no_grad():
            users = torch.tensor([j.user for j in jobs], dtype=torch.long, device=self.device)
            users = users.reshape(len(jobs), len(self.encoder.user_fields))
            rows_spt = torch.tensor(rows, dtype=torch.long, device=self.device)
            y_spt = torch.tensor(ratings, dtype=self.dtype, device=self.device)
            mask_spt = torch.tensor(mask, dtype=torch.bool, device=self.device)
            state = scorer.adapt(users, rows_spt, y_spt, mask_spt, steps=self.steps)
            retrieved = False
            above: torch.Tensor | None = None
            scored: torch.Tensor | slice = slice(1, None)  # row 0 is padding
            if (
                self.retrieval is not None
                and isinstance(state, Adaptation)
                and self.retrieval.side.applies(state)
            ):
                # Only the best clusters' items are scored (-inf elsewhere); the rows a request
                # names (candidates, /score ids) always are. MeLU ranks by the rating.
                scores = self.retrieval.scores(state, [_named_rows(j) for j in jobs])
                ratings_all = scores
                retrieved = True
            else:
                # Rows outside the recommendable set are scored only when a job names one.
                every_row = any(j.names_new_items for j in jobs)
                scores, ratings_all, above = scorer.scores(state, users, every_row)
                if not every_row and self.taste:
                    scored = self._recommendable_rows
            pred = batch_invariant(scores.cpu())  # [B, n_items + 1]
            rated = batch_invariant(ratings_all.cpu()).clamp(self.scale.low, self.scale.high)
            floor = above.cpu() if above is not None else None
            before, after = scorer.support_losses(state)
            floors = scorer.floors(state)
            # Checked weights on finite inputs stay finite; should they not, the request fails
            # (a JSON 500) rather than answer null or unranked scores.
            body = pred[:, scored]
            bad = torch.isnan(body) | (body == math.inf)
            if not retrieved:
                bad |= body == -math.inf  # with retrieval, -inf marks the rows not retrieved
            if bool(bad.any()) or not all(math.isfinite(v) for v in before + after):
                raise NonFiniteError("the model produced a non-finite prediction")
            # The default pool: the one "candidates minus support" (evaluation's too).
            allowed = candidates(self.recommendable, rows_spt, mask_spt).cpu()
            outcomes = []
            for i, job in enumerate(jobs):
                above_i = floor[i] if floor is not None else None
                chosen = self._select(pred[i], job.select, allowed[i], above_i)
                follows = scorer.explain(
                    state, i, chosen, job.rows, job.ratings, BECAUSE_MIN_RATING
                )
                items = [
                    Scored(
                        row,
                        float(pred[i, row]),
                        float(rated[i, row]),
                        follows[k],
                        None if above_i is None else bool(above_i[row]),
                    )
                    for k, row in enumerate(chosen)
                ]
                outcomes.append(
                    Outcome(items, before[i], after[i], None if floors is None else floors[i])
                )
            return outcomes

    def _select(
        self,
        pred: torch.Tensor,
        select: TopK | Pick,
        allowed: torch.Tensor,
        above_floor: torch.Tensor | None = None,
    ) -> list[int]:
        """The rows a job answers with: its /score ids in their order, or its top k of its
        pool (``allowed [R]``: the recommendable rows minus the rated ones) in
        :func:`melu.ranking.rank`'s order: above the floor first, by score, ties by row."""
        if isinstance(select, Pick):
            return list(select.rows)
        if select.pool is not None:
            pool = torch.tensor(select.pool, dtype=torch.long)
        elif select.exclude_rated:
            pool = torch.nonzero(allowed).squeeze(1)
        else:
            pool = self._recommendable_rows
        return [int(r) for r in top_k_row(pred, pool, select.k, above_floor).tolist()]

    # --- outcomes -> responses ---------------------------------------------------------------

    def scored(self, outcome: Outcome) -> list[ScoredItem]:
        return [
            ScoredItem(
                **self.item(it.row).model_dump(),
                score=it.score,
                predicted_rating=it.rating,
                above_floor=it.above_floor,
                because=None if it.because is None else self.item(it.because),
            )
            for it in outcome.items
        ]

    def adaptation_info(self, job: Job, outcome: Outcome) -> AdaptationInfo:
        return AdaptationInfo(
            steps=self.steps,
            support_loss_before=outcome.loss_before,
            support_loss_after=outcome.loss_after,
            user_mean=outcome.floor,
            unknown_user_fields=list(job.unknown_user_fields),
            ignored_user_fields=[
                IgnoredField(field=field, reason=why) for field, why in job.ignored_user_fields
            ],
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
            objective=ck.model.objective,
            items=len(self),
            recommendable_items=int(self._recommendable_rows.numel()),
            local_steps=self.steps,
            head_only=self.head_only,
            # The taste model's item side and MeLU's head-only item features are computed
            # once per catalogue (melu.scoring.CatalogueScorer).
            precomputed_item_features=self.taste or self.head_only,
            rank_floor=self.floor,
            rating_scale=ScaleInfo(
                low=self.scale.low,
                high=self.scale.high,
                step=self.scale.step,
                values=list(self.scale.values()),
                text=self.scale.describe(),
            ),
            user_fields=list(self.user_fields),
            user_values=self.user_values,
            user_value_meanings=self.user_value_meanings,
            onboarding=sorted(ck.onboarding.get("lists", {})),
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

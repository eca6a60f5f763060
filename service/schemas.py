"""Request and response models of the HTTP API.

Limits that do not depend on the deployment (the 1..5 rating scale, non-empty lists) live here
as ``Field`` constraints; limits that do (``MELU_MAX_RATINGS``, ``MELU_MAX_K``,
``MELU_MAX_CANDIDATES``) and checks against the model (known items, known user values) are
applied by :mod:`service.recommender` and reported in the same error shape.

Ids and ratings are strict: ``true`` or ``"5"`` is a client bug worth reporting, not coercing.
Request models forbid unknown fields so that a typo (``"raitings"``, ``"sex"``) is an error
instead of a silently ignored input.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

RATING_MIN, RATING_MAX = 1.0, 5.0
# The one example request: the OpenAPI example, the startup log, the READMEs and the Makefile.
EXAMPLE_REQUEST: dict[str, Any] = {
    "ratings": [
        {"item_id": 1193, "rating": 5},
        {"item_id": 661, "rating": 3},
        {"item_id": 914, "rating": 4},
    ],
    "user": {"gender": "F", "age": 25, "occupation": 4, "zip": "48067"},
    "k": 5,
}
# Hard caps independent of the settings, so that a huge list is rejected while it is parsed.
HARD_MAX_LIST = 100_000


MAX_CODE_CHARS = 16


def _code(value: Any) -> Any:
    """Age and occupation are codes that clients send as numbers or strings: keep strings.

    The length is checked here, not with ``Field(max_length=...)``: pydantic applies that
    constraint to the union, so a ``null`` crashed it and a long value was called "items".
    """
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("expected an integer or a string code")
    if len(value) > MAX_CODE_CHARS:
        raise ValueError(f"at most {MAX_CODE_CHARS} characters are allowed, got {len(value)}")
    return value


Code = Annotated[
    str | None,
    BeforeValidator(_code),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer"},
                {"type": "string", "maxLength": MAX_CODE_CHARS},
                {"type": "null"},
            ]
        }
    ),
]
ItemId = Annotated[int, Field(strict=True, description="MovieLens movie id")]

_QUERY_INT = re.compile(r"-?[0-9]{1,9}")


def _query_int(value: Any) -> Any:
    """Query values arrive as text: accept digits only (``20``), not ``20.0`` or ``2e1``."""
    if isinstance(value, str) and not _QUERY_INT.fullmatch(value):
        raise ValueError("expected an integer written in digits, such as 20")
    return value


# After the Query(...) in an Annotated parameter, so that FastAPI still writes its minimum and
# maximum into the OpenAPI schema.
QUERY_INT = BeforeValidator(_query_int)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Rating(_Request):
    item_id: ItemId
    rating: float = Field(
        ge=RATING_MIN, le=RATING_MAX, allow_inf_nan=False, strict=True, examples=[5]
    )


class UserFeatures(_Request):
    """Demographics of the user; every field is optional (missing -> the unknown embedding).

    ``GET /model`` lists the accepted values. A zip code that training never saw is accepted and
    mapped to the unknown embedding, because most new users' zip codes are unseen.
    """

    gender: str | None = Field(default=None, max_length=16, examples=["F"])
    age: Code = Field(default=None, examples=[25])
    occupation: Code = Field(default=None, examples=[4])
    zip: str | None = Field(default=None, max_length=16, examples=["48067"])


class _Adapted(_Request):
    ratings: list[Rating] = Field(
        min_length=1,
        max_length=HARD_MAX_LIST,
        description="the user's ratings: the support set the model adapts to",
    )
    user: UserFeatures | None = None


class RecommendRequest(_Adapted):
    # The range (1..MELU_MAX_K) is checked with the model checks, so that a bad k is reported
    # together with unknown ids instead of hiding them; the schema still documents the minimum.
    k: int = Field(
        default=10,
        strict=True,
        json_schema_extra={"minimum": 1},
        description="number of items, 1..MELU_MAX_K",
    )
    # Strict: "yes", "off", 0 and 1 are client bugs, as for ids and ratings.
    exclude_rated: bool = Field(default=True, strict=True)
    candidates: list[ItemId] | None = Field(
        default=None,
        min_length=1,
        max_length=HARD_MAX_LIST,
        description="rank only these items (at most MELU_MAX_CANDIDATES)",
    )

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_REQUEST]})


class ScoreRequest(_Adapted):
    item_ids: list[ItemId] = Field(
        min_length=1,
        max_length=HARD_MAX_LIST,
        description="items to score, answered in this order (at most MELU_MAX_CANDIDATES)",
    )


class CatalogueItem(BaseModel):
    """A movie as every answer names it: titles carry no year, and two films are titled
    'Titanic', so the year tells them apart."""

    item_id: int
    title: str
    year: int | None = Field(description="release year (null where unknown)")
    genres: list[str]


class ScoredItem(CatalogueItem):
    score: float = Field(
        allow_inf_nan=False,
        description="the ranking score: higher ranks first. For a model trained with the "
        "watch objective (the default), log P(the user watches it) up to a per-user constant "
        "plus rank_rating_weight (GET /model) times the predicted rating; for a rating-only "
        "model (the 'melu' preset), the predicted rating. Rounded to 2^-12, so batching "
        "never reorders near ties; ties go to the smaller item id",
    )
    predicted_rating: float = Field(
        allow_inf_nan=False, description="predicted rating after adaptation, clipped to 1..5"
    )
    because: CatalogueItem | None = Field(
        default=None,
        description="the movie the user loved (rated 4 or 5) that most supports this one; null "
        "for a movie the user rated, when none of their loved movies supports it, and for "
        "rating-only models",
    )


class AdaptationInfo(BaseModel):
    steps: int
    support_loss_before: float = Field(description="support MSE under the meta-parameters")
    support_loss_after: float = Field(description="support MSE after the local steps")
    unknown_user_fields: list[str] = Field(
        default_factory=list,
        description="user fields given but unseen in training (mapped to the unknown embedding)",
    )


class ModelInfo(BaseModel):
    version: str = Field(description="melu version that trained the checkpoint")
    best_val_mae: float | None
    best_epoch: int | None
    parameters_sha256: str = Field(description="hash of the meta-parameters as loaded")
    versions: dict[str, str]


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model: ModelInfo
    adaptation: AdaptationInfo


class ScoreResponse(BaseModel):
    items: list[ScoredItem]
    model: ModelInfo
    adaptation: AdaptationInfo


OnboardingStrategy = Literal["diverse", "evidence", "popularity", "entropy"]


class OnboardingResponse(BaseModel):
    strategy: OnboardingStrategy
    items: list[CatalogueItem] = Field(
        description="movies to ask a new user to rate first, best first; a user skips what "
        "they have not seen"
    )
    total: int = Field(description="length of the stored list")


class ItemsResponse(BaseModel):
    items: list[CatalogueItem] = Field(
        description="matching movies: exact titles first, then titles starting with the "
        "query, then the rest, each by item id"
    )
    total: int = Field(description="number of matches before the limit")


class HealthResponse(BaseModel):
    status: str
    items: int
    device: str
    micro_batching: bool
    requests: int = Field(description="adaptation requests served since start")
    batches: int = Field(description="adapt calls they took")
    max_batch: int = Field(description="largest batch so far")
    queued: int = Field(description="adaptation requests waiting or running now")
    refused: int = Field(description="requests refused with 503: over MELU_MAX_QUEUE")
    dropped: int = Field(
        description="requests dropped uncomputed: past MELU_REQUEST_TIMEOUT or client gone"
    )


class Limits(BaseModel):
    max_ratings: int
    max_k: int
    max_candidates: int
    max_body_bytes: int


class ModelDetails(BaseModel):
    info: ModelInfo
    parameters_sha256_now: str = Field(
        description="hash of the meta-parameters now; equal to info's unless they changed"
    )
    items: int
    local_steps: int
    head_only: bool
    precomputed_item_features: bool
    user_values: dict[str, list[str]] = Field(
        description="accepted values of gender, age and occupation (zip: any string)"
    )
    configs: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    limits: Limits


class ErrorItem(BaseModel):
    loc: list[str | int]
    field: str = Field(description="the offending field, e.g. ratings[2].item_id")
    msg: str
    type: str


class ErrorResponse(BaseModel):
    detail: list[ErrorItem]

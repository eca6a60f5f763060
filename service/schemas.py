"""Request and response models of the HTTP API.

Limits that depend on nothing (non-empty lists, finite numbers) live here as ``Field``
constraints; limits of the deployment (``MELU_MAX_RATINGS``, ``MELU_MAX_K``,
``MELU_MAX_CANDIDATES``) and checks against the model (known items, known user values, the
rating scale: :func:`off_scale`) are applied by :mod:`service.recommender` when a request
comes, and reported in the same error shape. The scale and the user fields are the
checkpoint's (0.5..5.0 in half stars and no user fields for ml-latest-small, 1..5 and
demographics for MeLU's data), so the schema the server publishes is completed with them once
the model is loaded (:func:`model_schema`).

Ids and ratings are strict: ``true`` or ``"5"`` is a client bug worth reporting, not coercing.
Request models forbid unknown fields so that a typo (``"raitings"``, ``"sex"``) is an error
instead of a silently ignored input.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from melu.config import RatingScale

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


def example_request(
    item_ids: Sequence[int], user_fields: Sequence[str], known: Container[int]
) -> dict[str, Any]:
    """:data:`EXAMPLE_REQUEST` for a model: its three movies if the catalogue ``known`` holds
    them, else three of ``item_ids``; only the user fields the model reads (none: no user)."""
    body = dict(EXAMPLE_REQUEST)
    if not all(r["item_id"] in known for r in body["ratings"]):
        ratings = zip(item_ids[:3], (5, 3, 4), strict=False)
        body["ratings"] = [{"item_id": int(i), "rating": r} for i, r in ratings]
    user = {f: v for f, v in EXAMPLE_REQUEST["user"].items() if f in user_fields}
    if user:
        body["user"] = user
    else:
        del body["user"]
    return body


def model_schema(
    schema: dict[str, Any], scale: RatingScale, user_fields: Sequence[str], example: dict[str, Any]
) -> dict[str, Any]:
    """The OpenAPI document completed with what the loaded model decides: the rating scale
    (minimum, maximum and, where it is a grid from 0, ``multipleOf``), the user fields it
    reads, and an example request it accepts."""
    components = schema.get("components", {}).get("schemas", {})
    rating = components.get("Rating", {}).get("properties", {}).get("rating")
    if rating is not None:
        rating.update(minimum=scale.low, maximum=scale.high)
        if abs(scale.low / scale.step - round(scale.low / scale.step)) < 1e-9:
            rating["multipleOf"] = scale.step
        rating["description"] = f"a rating on this model's scale, {scale.describe()}"
    user = components.get("UserFeatures")
    if user is not None:
        read = ", ".join(user_fields) if user_fields else "none"
        user["description"] = f"{user.get('description', '')}\n\nThis model reads: {read}.".strip()
    request = components.get("RecommendRequest")
    if request is not None:
        request["examples"] = [example]
    return schema


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
    # The scale is the model's, checked when the request comes (off_scale): a 4.5 is a
    # rating for a model of half stars and a client error for one of whole stars.
    rating: float = Field(
        allow_inf_nan=False,
        strict=True,
        examples=[5],
        description="a rating on the model's scale (GET /model: rating_scale)",
    )


def off_scale(value: float, scale: RatingScale) -> str | None:
    """Why ``value`` is not a rating of this model, or None if it is one."""
    if scale.contains(value):
        return None
    return f"{value:g} is not on this model's scale {scale.describe()}"


class UserFeatures(_Request):
    """Demographics of the user; every field is optional (missing -> the unknown embedding).

    ``GET /model`` lists the fields this model reads (``user_fields``: none for the CSV
    releases) and the accepted values. A field the model does not read is ignored and named in
    the answer's ``adaptation.ignored_user_fields``. A zip code that training never saw is
    accepted and mapped to the unknown embedding, because most new users' zip codes are unseen.
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
    exclude_rated: bool = Field(
        default=True,
        strict=True,
        description="leave the rated items out of the list (of the candidates, if given)",
    )
    candidates: list[ItemId] | None = Field(
        default=None,
        min_length=1,
        max_length=HARD_MAX_LIST,
        description="rank only these items (at most MELU_MAX_CANDIDATES). Any catalogue item "
        "may be named, new items without training ratings included: that is how new releases "
        "reach a user. Without candidates the list is drawn from the recommendable items (those "
        "with training ratings; GET /model: recommendable_items)",
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
        description="the ranking score: higher ranks first. For the taste model (the default "
        "preset), log P(the user watches and likes it) up to a per-user constant, plus "
        "rank_rating_weight (GET /model) times the predicted rating; where its fold-in takes "
        "a weight for this many ratings (GET /model: metrics.fold_in.weights, by support "
        "size 1-3, 4-7, 8-15, 16-31, 32+), that score plus the weight times EDLAE's fold-in "
        "of the ratings, standardised over the recommendable items the user did not rate "
        "(whatever candidates the request names) and scaled to the spread of the score "
        "there: the order of the two standardised scores added; "
        "for MeLU's rating "
        "network (the 'melu' preset), the predicted rating. Rounded to 2^-12, so batching "
        "never reorders near ties; ties go to the smaller item id. Where the model keeps the "
        "floor (GET /model: rank_floor), items predicted below the user's own mean rating "
        "come after every other item, each group by score",
    )
    predicted_rating: float = Field(
        allow_inf_nan=False,
        description="predicted rating after adaptation, clipped to the model's scale "
        "(GET /model: rating_scale)",
    )
    above_floor: bool | None = Field(
        default=None,
        description="whether the model predicts the user rates it at least their own mean "
        "rating: a list holds these items first (GET /model: rank_floor); null for models "
        "without the floor",
    )
    because: CatalogueItem | None = Field(
        default=None,
        description="the movie the user loved (rated 4 or more) that most supports this one; "
        "null for a movie the user rated, when none of their loved movies supports it, and for "
        "MeLU's rating network, which cannot say",
    )


class IgnoredField(BaseModel):
    field: str = Field(description="the user field, e.g. gender")
    reason: str


class AdaptationInfo(BaseModel):
    steps: int
    support_loss_before: float = Field(
        description="the loss on the user's own ratings under the meta-learned start (taste "
        "model: leave-one-out likelihood of the loved ones plus the ratings' squared error; "
        "MeLU: the ratings' squared error)"
    )
    support_loss_after: float = Field(description="the same loss after the local steps")
    user_mean: float | None = Field(
        default=None,
        description="the user's own mean rating as the model sees it (the ratings given, shrunk "
        "towards the population's mean when they are few): no listed item is predicted below "
        "it while another clears it (items' above_floor); null for models without that floor",
    )
    unknown_user_fields: list[str] = Field(
        default_factory=list,
        description="user fields given but unseen in training (mapped to the unknown embedding)",
    )
    ignored_user_fields: list[IgnoredField] = Field(
        default_factory=list,
        description="user fields given that this model does not read (GET /model: "
        "user_fields), and why; they change nothing in the answer",
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


class ScaleInfo(BaseModel):
    low: float
    high: float
    step: float
    values: list[float] = Field(description="every accepted rating, lowest first")
    text: str = Field(description='e.g. "0.5..5.0 in steps of 0.5"')


class ModelDetails(BaseModel):
    info: ModelInfo
    parameters_sha256_now: str = Field(
        description="hash of the meta-parameters now; equal to info's unless they changed"
    )
    objective: Literal["taste", "rating"] = Field(
        description="taste: the default preset's taste model; rating: MeLU's rating network"
    )
    items: int
    recommendable_items: int = Field(
        description="items with training ratings: what a list holds unless candidates are given"
    )
    local_steps: int
    head_only: bool = Field(description="MeLU: only the decision layers adapt; else false")
    precomputed_item_features: bool
    rank_floor: bool = Field(
        description="lists put items predicted below the user's own mean rating last"
    )
    rating_scale: ScaleInfo = Field(description="the ratings requests give and answers predict")
    user_fields: list[str] = Field(
        description="the user fields this model reads (none for the CSV releases); others are "
        "ignored"
    )
    user_values: dict[str, list[str]] = Field(
        description="accepted values of the closed user fields the model reads (gender, age, "
        "occupation; zip: any string)"
    )
    user_value_meanings: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="what each code means, for the fields whose values are MovieLens codes "
        '(age: "25" is 25-34; occupation: "12" is programmer)',
    )
    onboarding: list[str] = Field(
        description="the onboarding lists the checkpoint stores (GET /onboarding strategies); "
        "empty: GET /onboarding answers 404"
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

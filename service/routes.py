"""HTTP routes. Handlers only translate: the model work is in :mod:`service.recommender`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from service.batcher import MicroBatcher
from service.recommender import Job, Outcome, Recommender, parameters_sha256
from service.schemas import (
    ErrorResponse,
    HealthResponse,
    ItemsResponse,
    ModelDetails,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_recommender(request: Request) -> Recommender:
    recommender: Recommender = request.app.state.recommender
    return recommender


def get_batcher(request: Request) -> MicroBatcher[Job, Outcome]:
    batcher: MicroBatcher[Job, Outcome] = request.app.state.batcher
    return batcher


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
BatcherDep = Annotated[MicroBatcher[Job, Outcome], Depends(get_batcher)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "body larger than MELU_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
    422: {"model": ErrorResponse, "description": "invalid input; each entry names its field"},
}

router = APIRouter()


@router.post("/recommend", responses=_ERRORS)
async def recommend(
    body: RecommendRequest,
    settings: SettingsDep,
    recommender: RecommenderDep,
    batcher: BatcherDep,
) -> RecommendResponse:
    """Adapt to the user's ratings and return the ``k`` highest predicted items."""
    job = recommender.recommend_job(body, settings)
    outcome = await batcher.submit(job)
    return RecommendResponse(
        items=recommender.scored(outcome),
        model=recommender.info,
        adaptation=recommender.adaptation_info(job, outcome),
    )


@router.post("/score", responses=_ERRORS)
async def score(
    body: ScoreRequest,
    settings: SettingsDep,
    recommender: RecommenderDep,
    batcher: BatcherDep,
) -> ScoreResponse:
    """Adapt to the user's ratings and predict the given items, in the order given."""
    job = recommender.score_job(body, settings)
    outcome = await batcher.submit(job)
    return ScoreResponse(
        items=recommender.scored(outcome),
        model=recommender.info,
        adaptation=recommender.adaptation_info(job, outcome),
    )


@router.get("/items", responses={422: _ERRORS[422]})
async def items(
    recommender: RecommenderDep,
    query: Annotated[str, Query(max_length=200, description="part of the title")] = "",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ItemsResponse:
    """Movies whose title contains ``query`` (case-insensitive); exact and prefix matches
    first."""
    found, total = recommender.search(query, limit)
    return ItemsResponse(items=found, total=total)


@router.get("/health")
async def health(
    settings: SettingsDep, recommender: RecommenderDep, batcher: BatcherDep
) -> HealthResponse:
    return HealthResponse(
        status="ok",
        items=len(recommender),
        device=str(recommender.device),
        micro_batching=settings.micro_batching,
        requests=batcher.jobs,
        batches=batcher.batches,
        max_batch=batcher.largest,
    )


@router.get("/model")
async def model(
    settings: SettingsDep, recommender: RecommenderDep, batcher: BatcherDep
) -> ModelDetails:
    """Checkpoint metadata: configs, metrics, versions, accepted user values, limits."""
    # Hashing reads every weight (a few ms): on the torch worker, not the event loop.
    sha_now = await batcher.call(lambda: parameters_sha256(recommender.learner))
    return recommender.details(settings, sha_now)

"""HTTP routes. Handlers only translate: the model work is in :mod:`service.recommender`.

Every dependency and handler is ``async def``: FastAPI runs a plain ``def`` in its thread pool,
and those threads would compete for the GIL with the event loop and the torch worker for work
that takes microseconds.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.routing import APIRoute

from service.batcher import MicroBatcher
from service.recommender import Job, Outcome, Recommender
from service.schemas import (
    QUERY_INT,
    ErrorResponse,
    HealthResponse,
    ItemsResponse,
    ModelDetails,
    OnboardingResponse,
    OnboardingStrategy,
    RecommendRequest,
    RecommendResponse,
    ScoreRequest,
    ScoreResponse,
)
from service.settings import Settings


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_recommender(request: Request) -> Recommender:
    recommender: Recommender = request.app.state.recommender
    return recommender


async def get_batcher(request: Request) -> MicroBatcher[Job, Outcome]:
    batcher: MicroBatcher[Job, Outcome] = request.app.state.batcher
    return batcher


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
BatcherDep = Annotated[MicroBatcher[Job, Outcome], Depends(get_batcher)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorResponse,
        "description": "body not parsable (nested too deeply, bad UTF-8)",
    },
    413: {"model": ErrorResponse, "description": "body larger than MELU_MAX_BODY_BYTES"},
    415: {"model": ErrorResponse, "description": "Content-Type is not application/json"},
    422: {"model": ErrorResponse, "description": "invalid input; each entry names its field"},
    503: {
        "model": ErrorResponse,
        "description": "overloaded (over MELU_MAX_QUEUE), past MELU_REQUEST_TIMEOUT, or "
        "shutting down; see the Retry-After header",
    },
}

# Python's JSON reader refuses integers of more than 4300 digits with an error FastAPI turns
# into a 400 that names no field. Such a literal is read as an infinity instead, which the
# field's own validation reports (``k: Input should be a valid integer``). 30 digits is far past
# any id, rating or count this API takes.
MAX_INT_DIGITS = 30


def _bounded_int(text: str) -> int | float:
    if len(text.lstrip("-")) <= MAX_INT_DIGITS:
        return int(text)
    return -math.inf if text.startswith("-") else math.inf


class _JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = json.loads(await self.body(), parse_int=_bounded_int)
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body is read with :func:`_bounded_int` for integers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_JsonRequest(request.scope, request.receive, request._send))

        return route


router = APIRouter(route_class=JsonRoute)


class ClientGoneError(Exception):
    """The client closed its connection while its request waited: nobody reads the answer."""


async def _on_disconnect(request: Request, leave: Callable[[], None]) -> None:
    # The body has been read, so the next message is the disconnect (or the end of the
    # response, which never comes while we wait here).
    while (await request.receive())["type"] != "http.disconnect":
        pass
    leave()


async def _adapt(
    request: Request, job: Job, settings: Settings, batcher: MicroBatcher[Job, Outcome]
) -> Outcome:
    """The job's outcome, or an error; the job is dropped uncomputed if the client leaves or
    the deadline passes first."""
    loop = asyncio.get_running_loop()
    future = batcher.enqueue(job, loop.time() + settings.request_timeout)
    left = False

    def leave() -> None:
        nonlocal left
        left = True
        future.cancel()  # the batcher skips a cancelled job

    watcher = asyncio.ensure_future(_on_disconnect(request, leave))
    try:
        return await future
    except asyncio.CancelledError:
        if left:
            raise ClientGoneError from None
        raise  # the server is stopping this request
    finally:
        watcher.cancel()


@router.post("/recommend", responses=_ERRORS)
async def recommend(
    request: Request,
    body: RecommendRequest,
    settings: SettingsDep,
    recommender: RecommenderDep,
    batcher: BatcherDep,
) -> RecommendResponse:
    """Adapt to the user's ratings and return the ``k`` highest predicted items."""
    job = recommender.recommend_job(body, settings)
    outcome = await _adapt(request, job, settings, batcher)
    return RecommendResponse(
        items=recommender.scored(outcome),
        model=recommender.info,
        adaptation=recommender.adaptation_info(job, outcome),
    )


@router.post("/score", responses=_ERRORS)
async def score(
    request: Request,
    body: ScoreRequest,
    settings: SettingsDep,
    recommender: RecommenderDep,
    batcher: BatcherDep,
) -> ScoreResponse:
    """Adapt to the user's ratings and predict the given items, in the order given."""
    job = recommender.score_job(body, settings)
    outcome = await _adapt(request, job, settings, batcher)
    return ScoreResponse(
        items=recommender.scored(outcome),
        model=recommender.info,
        adaptation=recommender.adaptation_info(job, outcome),
    )


@router.get("/items", responses={422: _ERRORS[422]})
async def items(
    recommender: RecommenderDep,
    query: Annotated[str, Query(max_length=200, description="part of the title")] = "",
    limit: Annotated[int, Query(ge=1, le=100), QUERY_INT] = 20,
) -> ItemsResponse:
    """Movies whose title contains ``query`` (case-insensitive); exact and prefix matches
    first."""
    found, total = recommender.search(query, limit)
    return ItemsResponse(items=found, total=total)


@router.get(
    "/onboarding",
    responses={
        404: {"model": ErrorResponse, "description": "the checkpoint holds no onboarding lists"},
        422: _ERRORS[422],
    },
)
async def onboarding(
    recommender: RecommenderDep,
    n: Annotated[int, Query(ge=1, le=200, description="how many movies"), QUERY_INT] = 20,
    strategy: Annotated[
        OnboardingStrategy, Query(description="how the list was ordered (see melu onboarding)")
    ] = "diverse",
) -> OnboardingResponse:
    """Movies to ask a new user to rate first: lists stored in the checkpoint by ``melu
    train`` (or ``melu onboarding --save``), served from memory."""
    items, total = recommender.onboarding(strategy, n)
    return OnboardingResponse(strategy=strategy, items=items, total=total)


@router.get("/health")
async def health(
    request: Request, settings: SettingsDep, recommender: RecommenderDep, batcher: BatcherDep
) -> HealthResponse:
    return HealthResponse(
        status="ok",
        items=len(recommender),
        device=request.app.state.model_device,
        micro_batching=settings.micro_batching,
        requests=batcher.jobs,
        batches=batcher.batches,
        max_batch=batcher.largest,
        queued=batcher.outstanding,
        refused=batcher.refused,
        dropped=batcher.dropped,
    )


# Load balancers and `curl -I` probe with HEAD: the same answer without a body.
@router.head("/health", include_in_schema=False)
async def health_head() -> Response:
    return Response(media_type="application/json")


@router.get("/model")
async def model(
    request: Request, settings: SettingsDep, recommender: RecommenderDep, batcher: BatcherDep
) -> ModelDetails:
    """Checkpoint metadata: configs, metrics, versions, accepted user values, limits."""
    # Hashing reads every weight (a few ms): on the model's worker, of the weights it serves.
    sha_now = await batcher.call(request.app.state.model_sha256)
    return recommender.details(settings, sha_now)
